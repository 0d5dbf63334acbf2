"""Bad values on a lesson's command line end in one line naming the problem, never a traceback.

Every numbered lesson runs its ``main`` through ``pytorch_basis.common.run_cli`` (an expected error prints
``error: ...``), and its size, count and seed options are typed (``positive_int``, ``seed_int``, ...), so argparse
refuses a 0 or a negative value before any work starts. Most cases below are values that once crashed a lesson
with a traceback deep in torch (a negative tensor dimension, a division by zero, a seed NumPy refuses).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = (
    "pytorch_basis",
    "pytorch_gpt2_from_scratch",
    "pytorch_llama2_from_scratch",
    "triton_flash_attention_scratch",
)
LESSONS = sorted(p for ch in CHAPTERS for p in (ROOT / ch).glob("[0-9][0-9]_*.py"))
# the chapter modules with a command line of their own (their option values: test_module_cli.py)
MODULES = [ROOT / "pytorch_gpt2_from_scratch" / f"{name}.py"
           for name in ("compare_llmc", "low_precision", "hellaswag", "fineweb", "speedrun", "train_gpt2")] + [
    ROOT / "pytorch_llama2_from_scratch" / f"{name}.py" for name in ("generate", "chat", "decode_ladder")]  # fmt: skip


def _main_block(tree: ast.Module) -> list[ast.stmt]:
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return node.body
    return []


def _calls(nodes: list[ast.stmt]) -> set[str]:
    return {ast.unparse(n.func) for node in nodes for n in ast.walk(node) if isinstance(n, ast.Call)}


def _runs_cli(nodes: list[ast.stmt]) -> bool:
    return any(name.endswith("run_cli") for name in _calls(nodes))


@pytest.mark.parametrize("path", LESSONS + MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_lesson_runs_its_main_through_run_cli(path):
    """``if __name__ == "__main__":`` calls ``run_cli``, or a function of the file (``cli``) that does."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    block = _main_block(tree)
    assert block, f"{path.name} has no `if __name__ == '__main__':` block"
    functions = {n.name: n.body for n in tree.body if isinstance(n, ast.FunctionDef)}
    via = [name for name in _calls(block) if name in functions and _runs_cli(functions[name])]
    assert _runs_cli(block) or via, f"{path.name}: main is not run by run_cli"


def _parse(path: Path, argv: list[str], monkeypatch):
    spec = importlib.util.spec_from_file_location(f"cli_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [path.name, *argv])  # lessons whose parse_args() reads sys.argv
    try:
        return module.parse_args(argv)
    except TypeError:
        return module.parse_args()


# (lesson, argv, the option argparse names): values lessons used to crash on with a traceback deep in torch, or run
# on with wrong numbers (--x=nan printed nan; --clip=-1 reached clip_grad_norm_ as a negative norm, which flips the
# gradients); --seq-len=1 was refused after parsing, and --head-dim=0 goes through chapter 4's shared lesson_parser
REFUSED = [
    ("pytorch_basis/03_computation_graph.py", ["--dim=-1"], "--dim"),
    ("pytorch_basis/04_forward_backward_by_hand.py", ["--d-hidden=0"], "--d-hidden"),
    ("pytorch_basis/06_retain_graph.py", ["--n=-1"], "--n"),
    ("pytorch_basis/10_hooks_and_grad_modes.py", ["--batch=-1"], "--batch"),
    ("pytorch_basis/11_gradient_accumulation.py", ["--micro-batch=0"], "--micro-batch"),
    ("pytorch_basis/01_grad_basics.py", ["--x=nan"], "--x"),
    ("pytorch_gpt2_from_scratch/02_gpt2_module.py", ["--T=-1"], "--T"),
    ("pytorch_gpt2_from_scratch/02_gpt2_module.py", ["--seed=-1"], "--seed"),
    ("pytorch_gpt2_from_scratch/14_weight_decay_fused_adamw.py", ["--repeats=0"], "--repeats"),
    ("pytorch_llama2_from_scratch/04_rmsnorm.py", ["--dim=0"], "--dim"),
    ("pytorch_llama2_from_scratch/04_rmsnorm.py", ["--repeats=0"], "--repeats"),
    ("pytorch_llama2_from_scratch/05_decoder_layer_and_transformer.py", ["--batch=0"], "--batch"),
    ("pytorch_llama2_from_scratch/08_swiglu_feedforward.py", ["--dim=0"], "--dim"),
    ("pytorch_llama2_from_scratch/13_decode_benchmark.py", ["--repeats=0"], "--repeats"),
    ("pytorch_llama2_from_scratch/13_decode_benchmark.py", ["--heads=0"], "--heads"),
    ("pytorch_llama2_from_scratch/13_decode_benchmark.py", ["--hidden=0"], "--hidden"),
    ("pytorch_llama2_from_scratch/13_decode_benchmark.py", ["--threads=-1"], "--threads"),
    ("pytorch_llama2_from_scratch/16_sliding_window_attention.py", ["--seq-len=1"], "--seq-len"),
    ("pytorch_gpt2_from_scratch/18_validation_and_sampling.py", ["--eval-every=0"], "--eval-every"),
    ("pytorch_gpt2_from_scratch/12_adamw_and_clipping.py", ["--clip=-1"], "--clip"),
    ("pytorch_llama2_from_scratch/11_generate.py", ["--max-new-tokens=0"], "--max-new-tokens"),
    ("pytorch_llama2_from_scratch/12_train_tiny_llama.py", ["--eval-batches=0"], "--eval-batches"),
    # decode_eval's accuracy options: 0 windows ended in "held-out text has ... fewer than one window", which is false
    ("pytorch_llama2_from_scratch/21_half_precision_weights.py", ["--windows=0"], "--windows"),
    ("pytorch_llama2_from_scratch/22_int8_weights.py", ["--train-steps=-1"], "--train-steps"),
    ("triton_flash_attention_scratch/01_naive_attention.py", ["--n-head=0"], "--n-head"),
    ("triton_flash_attention_scratch/06_flash_attention_forward.py", ["--trace-keys=0"], "--trace-keys"),
    ("triton_flash_attention_scratch/14_intro_to_triton.py", ["--rows=0"], "--rows"),
    ("triton_flash_attention_scratch/17_flash_backward_triton.py", ["--head-dim=0"], "--head-dim"),
]


@pytest.mark.parametrize("lesson, argv, option", REFUSED, ids=[f"{Path(c[0]).stem}{c[1][0]}" for c in REFUSED])
def test_a_bad_value_is_refused_by_argparse_with_the_option_named(lesson, argv, option, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(ROOT / lesson, argv, monkeypatch)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"error: argument {option}: expected" in err[-1], err


def _run(lesson: str, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLM_SCRATCH_DEBUG"} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, lesson, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize(
    "lesson, argv, says, code",
    [
        # argparse refuses the value before any work starts
        ("pytorch_basis/04_forward_backward_by_hand.py", ["--d-hidden", "0"], "argument --d-hidden: expected", 2),
        # an accepted value that the model refuses: run_cli turns its ValueError into one line
        (
            "pytorch_llama2_from_scratch/13_decode_benchmark.py",
            ["--heads", "4", "--kv-heads", "3", "--lengths", "4", "--repeats", "1"],
            "error: n_heads 4 is not divisible by n_kv_heads 3",
            1,
        ),
        # the chapter modules' own command lines (test_module_cli.py): once a negative tensor dimension, and a
        # division by zero in fast_decode's shared parser of the decode lessons
        ("pytorch_gpt2_from_scratch/low_precision.py", ["--n", "-1"], "argument --n: expected an integer >= 1", 2),
        ("pytorch_llama2_from_scratch/19_where_decode_time_goes.py", ["--heads", "0"], "argument --heads: expected", 2),
    ],
)
def test_a_lesson_given_a_bad_value_prints_one_line_and_no_traceback(lesson, argv, says, code):
    res = _run(lesson, *argv)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and says in errors[0], res.stderr
