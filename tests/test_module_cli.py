"""Bad numbers on a chapter module's command line end in one line naming the option, never a traceback.

The numbered lessons are covered by ``test_lesson_cli.py``; this file covers the chapter modules that have a command
line of their own (``train_gpt2.py``, ``speedrun.py``, ``compare_llmc.py``, ``low_precision.py``, ``generate.py``,
``chat.py``) and ``fast_decode.py``'s parser, which the decode lessons 19-23 share. Every refused value below once
crashed with a traceback deep in torch (``--heads 0``: a division by zero, ``--n -1``: a negative tensor dimension,
``speedrun.py --threads -1``), failed once work had started with a message that did not name the option
(``--seed -1``: NumPy's seed range; ``compare_llmc.py`` only after building llm.c), or ran on with a meaningless result
(``--time-budget inf`` never stops, ``--new-tokens 0`` times no tokens). Values the help texts give a meaning
(``--threads 0``, ``--samples 0``) stay accepted.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from pytorch_basis.common import run_cli

ROOT = Path(__file__).resolve().parents[1]
GPT2 = "pytorch_gpt2_from_scratch"
LLAMA = "pytorch_llama2_from_scratch"
REQUIRED = {  # options a parser needs before it looks at the others
    f"{GPT2}.compare_llmc": ["--llmc", "llm.c"],
    f"{LLAMA}.generate": ["--checkpoint", "ckpt"],
    f"{LLAMA}.chat": ["--checkpoint", "ckpt"],
}


def _parse(module: str, argv: list[str]):
    """The parsed options of ``module``'s command line (``fast_decode``: the decode lessons' shared parser)."""
    if module == f"{LLAMA}.fast_decode":
        from pytorch_llama2_from_scratch.fast_decode import decode_parser, parse_decode_args

        return parse_decode_args(decode_parser("a decode lesson"), argv)
    return importlib.import_module(module).parse_args(REQUIRED.get(module, []) + argv)


# (module, argv, the option argparse must name)
REFUSED = [
    (f"{GPT2}.compare_llmc", ["--seed", "-1"], "--seed"),
    (f"{GPT2}.compare_llmc", ["--seed", str(2**32)], "--seed"),
    (f"{GPT2}.low_precision", ["--n", "0"], "--n"),
    (f"{GPT2}.low_precision", ["--n", "-1"], "--n"),
    (f"{GPT2}.train_gpt2", ["--seed", "-1"], "--seed"),
    (f"{GPT2}.speedrun", ["--threads", "0"], "--threads"),
    (f"{GPT2}.speedrun", ["--threads", "-1"], "--threads"),
    (f"{GPT2}.speedrun", ["--samples", "-1"], "--samples"),
    (f"{LLAMA}.fast_decode", ["--hidden", "0"], "--hidden"),
    (f"{LLAMA}.fast_decode", ["--layers", "0"], "--layers"),
    (f"{LLAMA}.fast_decode", ["--heads", "0"], "--heads"),
    (f"{LLAMA}.fast_decode", ["--kv-heads", "0"], "--kv-heads"),
    (f"{LLAMA}.fast_decode", ["--intermediate", "-1"], "--intermediate"),
    (f"{LLAMA}.fast_decode", ["--vocab", "0"], "--vocab"),
    (f"{LLAMA}.fast_decode", ["--prompt-len", "0"], "--prompt-len"),
    (f"{LLAMA}.fast_decode", ["--new-tokens", "0"], "--new-tokens"),
    (f"{LLAMA}.fast_decode", ["--repeats", "0"], "--repeats"),
    (f"{LLAMA}.fast_decode", ["--threads", "-1"], "--threads"),
    (f"{LLAMA}.fast_decode", ["--seed", "-1"], "--seed"),
    (f"{LLAMA}.generate", ["--seed", "-1"], "--seed"),
    (f"{LLAMA}.chat", ["--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize(
    "module, argv, option", REFUSED, ids=[f"{m.split('.')[1]}{'='.join(a)}" for m, a, _ in REFUSED]
)
def test_a_bad_value_is_refused_by_argparse_with_the_option_named(module, argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(module, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"error: argument {option}: expected" in err[-1], err


def test_the_speedrun_lessons_command_line_refuses_a_bad_thread_count(capsys):
    """Lessons 20+ parse with ``speedrun.add_common_arguments`` through ``lesson_cli``: refused before ``main``."""
    from pytorch_gpt2_from_scratch import speedrun

    def main(**options):
        pytest.fail(f"main ran with {options}")

    with pytest.raises(SystemExit) as e:
        speedrun.lesson_cli(main, "a speedrun lesson", ["--threads", "-1"])
    assert e.value.code == 2
    assert "error: argument --threads: expected" in capsys.readouterr().err.strip().splitlines()[-1]


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_train_gpt2_refuses_an_infinite_time_budget(monkeypatch, capsys):
    """``--time-budget inf`` used to train on past ``--max-steps`` forever; the command line's checks (before any
    training: ``make_config``) now stop it with one line. The training itself is not started here."""
    from pytorch_gpt2_from_scratch.train_gpt2 import make_config, parse_args

    monkeypatch.delenv("LLM_SCRATCH_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: make_config(**vars(parse_args(["--time-budget", "inf"]))))
    assert e.value.code == 1
    assert _one_error_line(capsys) == "error: --time-budget must be a finite number of seconds, got inf"
    assert make_config(time_budget=0.5).time_budget == 0.5


def test_speedrun_refuses_an_infinite_time_budget(capsys):
    """The same for ``speedrun.py`` (its ``cli`` prints a bad option as one line, exit status 2); the check runs
    without the training behind it."""
    from pytorch_gpt2_from_scratch import speedrun

    with pytest.raises(SystemExit) as e:
        speedrun.cli(["--time-budget", "inf"], entry=lambda argv: speedrun._check_args(speedrun.parse_args(argv)))
    assert e.value.code == 2
    assert _one_error_line(capsys) == "error: --time-budget must be a finite number of seconds, got inf"


# (module, argv, option's attribute, the value it must have): 0 keeps the meaning the help text gives it
ACCEPTED = [
    (f"{LLAMA}.fast_decode", ["--threads", "0"], "threads", None),  # "0 = PyTorch's choice"
    (f"{LLAMA}.fast_decode", ["--threads", "3"], "threads", 3),
    (f"{LLAMA}.fast_decode", ["--seed", "0"], "seed", 0),
    (f"{GPT2}.speedrun", ["--samples", "0"], "samples", 0),  # "(0: none)"
    (f"{GPT2}.speedrun", ["--threads", "1"], "threads", 1),
    (f"{GPT2}.speedrun", ["--time-budget", "2.5"], "time_budget", 2.5),
    (f"{GPT2}.train_gpt2", ["--seed", str(2**32 - 1)], "seed", 2**32 - 1),
    (f"{GPT2}.low_precision", ["--n", "1"], "n", 1),
    (f"{LLAMA}.generate", ["--seed", "0"], "seed", 0),
    (f"{LLAMA}.chat", ["--seed", "0"], "seed", 0),
]


@pytest.mark.parametrize(
    "module, argv, name, value", ACCEPTED, ids=[f"{m.split('.')[1]}{'='.join(a)}" for m, a, *_ in ACCEPTED]
)
def test_a_legal_value_is_still_accepted(module, argv, name, value):
    assert getattr(_parse(module, argv), name) == value
