"""Bad input, table-driven: every malformed option, file or argument gets one clear line (or a correct result).

The CLIs (``train_gpt2.py``, ``hellaswag.py``, ``fineweb.py``, the lessons' shared ``--model`` option) are run
in-process through ``pytorch_basis.common.run_cli`` with a patched ``sys.argv``: each case must exit with status
1 or 2 and print exactly one line on stderr that names the offending option, value or file, and no traceback. A
few cases run as real subprocesses, to prove the same from the outside and that ``LLM_SCRATCH_DEBUG=1`` shows the
traceback. The API cases (``GPTConfig``, ``GPT.forward``, the samplers) must raise ``ValueError`` naming the
argument.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.sampling import generate, generate_text, sample_next
from pytorch_gpt2_from_scratch.training import save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Malformed and well-formed inputs, built once."""
    d = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    shards = d / "shards"
    shards.mkdir()
    np.save(shards / "toy_val_000000.npy", rng.integers(0, 50257, 400).astype(np.uint16))
    np.save(shards / "toy_train_000001.npy", rng.integers(0, 50257, 400).astype(np.uint16))
    wrong_dtype = d / "wrong_dtype"
    wrong_dtype.mkdir()
    np.save(wrong_dtype / "x_val_000000.npy", rng.standard_normal(400).astype(np.float32))
    np.save(wrong_dtype / "x_train_000001.npy", rng.standard_normal(400).astype(np.float32))
    (d / "no_shards").mkdir()
    (d / "empty_dir").mkdir()
    (d / "empty.txt").write_text("")
    (d / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
    (d / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (d / "no_text.jsonl").write_text('{"content": "x"}\n')
    (d / "int_text.jsonl").write_text('{"text": 7}\n')
    (d / "garbage.pt").write_text("this is not a checkpoint\n")
    torch.save({"model": {}}, d / "foreign.pt")
    other = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=32))
    good = save_checkpoint(d / "other_model.pt", model=other, optimizer=None, step=1, config=other.config)
    data = good.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "hs_three_endings.jsonl").write_text(json.dumps({"ctx": "a", "endings": ["b", "c", "d"], "label": 0}) + "\n")
    (d / "hs_bad_label.jsonl").write_text(json.dumps({"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 7}) + "\n")
    (d / "hs_not_json.jsonl").write_text("[[[\n")
    no_config = d / "hf_no_config"
    no_config.mkdir()
    for name, cfg in {
        "hf_llama": {"model_type": "llama", "hidden_size": 64},
        "hf_missing_key": {"model_type": "gpt2", "n_positions": 64, "vocab_size": 100, "n_layer": 1, "n_head": 2},
        "hf_gelu": {"model_type": "gpt2", "activation_function": "gelu", "n_embd": 64},
    }.items():
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps(cfg))
    (d / "hf_bad_json").mkdir()
    (d / "hf_bad_json" / "config.json").write_text("{")
    return d


def call_cli(cli, argv, monkeypatch, capsys) -> tuple[int, str]:
    """Run ``cli`` as ``run_cli`` runs it from the shell; return (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prog", *map(str, argv)])
    monkeypatch.delenv("LLM_SCRATCH_DEBUG", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(cli)
    return exc.value.code, capsys.readouterr().err


_PROGRESS = re.compile(r"\d+(\.\d+)?[kM]?(it|tok)/s\]|\?(it|tok)/s\]")


def assert_one_line(code, err, expected: str) -> None:
    # progress bars (tqdm, redrawn with \r) may precede the error; what remains is exactly one line
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    lines = [line for line in lines if line.strip() and not _PROGRESS.search(line)]
    assert code in (1, 2), (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 or (code == 2 and lines[-1].startswith("prog: error:")), err  # argparse: usage + 1 line
    assert expected in lines[-1], f"{expected!r} not in {lines[-1]!r}"


# --------------------------------------------------------------------------------------------- train_gpt2.py
def _train_argv(files, tmp_path) -> list[str]:
    return [
        "--out", tmp_path / "out", "--data", files / "shards", "--device", "cpu", "--no-hellaswag",
        "--max-steps", "2", "--warmup-steps", "1", "--model", "tiny", "--n-layer", "1", "--n-head", "2",
        "--n-embd", "32", "--block-size", "32", "--batch-size", "2", "--seq-len", "16", "--total-batch-size", "32",
    ]  # fmt: skip


TRAIN_CASES = [
    (["--total-batch-size", "0"], "--total-batch-size must be positive"),
    (["--total-batch-size", "-1024"], "--total-batch-size must be positive"),
    (["--total-batch-size", "40"], "not divisible by B*T*world_size"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--seq-len", "-1"], "--seq-len must be positive"),
    (["--seq-len", "64"], "--seq-len 64 exceeds the model's block_size 32"),
    (["--max-steps", "0"], "--max-steps"),
    (["--warmup-steps", "5"], "--warmup-steps <= --max-steps"),
    (["--max-lr", "nan"], "--max-lr must be a finite number"),
    (["--max-lr", "-1"], "--max-lr must be >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["--eval-every", "0"], "--eval-every must be positive"),
    (["--hellaswag-limit", "0"], "--hellaswag-limit must be positive"),
    (["--stop-after", "-1"], "--stop-after must be >= 0"),
    (["--n-layer", "0"], "--n-layer must be positive"),
    (["--n-embd", "30", "--n-head", "4"], "must be divisible by n_head"),
    (["--model", "gpt5"], "unknown preset 'gpt5'"),
    (["--dtype", "fp8"], "invalid choice: 'fp8'"),
    (["--batch-size", "four"], "invalid int value: 'four'"),
    (["--preset", "gpt9"], "invalid choice: 'gpt9'"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--data", "{d}/missing.txt"], "missing.txt not found"),
    (["--data", "{d}/empty.txt"], "empty.txt has 1 tokens"),
    (["--data", "{d}/binary.txt"], "binary.txt is not UTF-8 text"),
    (["--data", "{d}/bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    (["--data", "{d}/no_text.jsonl"], "has no 'text' field"),
    (["--data", "{d}/int_text.jsonl"], "'text' is a int, not a string"),
    (["--data", "{d}/no_shards"], "no 'train' shards"),
    (["--data", "{d}/wrong_dtype"], "is not a token shard"),
    (["--resume", "{d}/missing.pt"], "missing.pt does not exist"),
    (["--resume", "{d}/truncated.pt"], "cannot read checkpoint"),
    (["--resume", "{d}/garbage.pt"], "cannot read checkpoint"),
    (["--resume", "{d}/foreign.pt"], "is not a training checkpoint"),
    (["--resume", "{d}/other_model.pt"], "n_embd=64 in the checkpoint vs 32 in this run"),
]


@pytest.mark.parametrize(("extra", "expected"), TRAIN_CASES, ids=[" ".join(c[0])[:40] for c in TRAIN_CASES])
def test_train_gpt2_cli(files, tmp_path, monkeypatch, capsys, extra, expected):
    from pytorch_gpt2_from_scratch import train_gpt2

    argv = _train_argv(files, tmp_path) + [a.format(d=files) for a in extra]
    code, err = call_cli(train_gpt2.cli, argv, monkeypatch, capsys)
    assert_one_line(code, err, expected)


def test_train_gpt2_help_gives_every_option_a_help_text_with_its_default(monkeypatch):
    import argparse

    from pytorch_gpt2_from_scratch import train_gpt2

    seen: list[argparse.Action] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):  # the parser train_gpt2 builds, with all its options
        seen.extend(self._actions)
        return original(self, [], namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    train_gpt2.parse_args([])
    options = [a for a in seen if a.option_strings and "-h" not in a.option_strings]
    assert len(options) >= 28
    for action in options:
        assert action.help and "default" in action.help, (action.option_strings, action.help)


# --------------------------------------------------------------------------------------------- hellaswag.py
HELLASWAG_CASES = [
    (["--limit", "0"], "--limit must be positive"),
    (["--batch-examples", "0"], "--batch-examples must be positive"),
    (["--split", "dev"], "invalid choice: 'dev'"),
    (["--data", "{d}/missing.jsonl"], "missing.jsonl is not a file"),
    (["--data", "{d}/hs_three_endings.jsonl"], "not a HellaSwag example"),
    (["--data", "{d}/hs_bad_label.jsonl"], "not a HellaSwag example"),
    (["--data", "{d}/hs_not_json.jsonl"], "hs_not_json.jsonl:1: not valid JSON"),
    (["--model", "{d}/missing.pt"], "missing.pt does not exist"),
    (["--model", "{d}/truncated.pt"], "cannot read checkpoint"),
    (["--model", "{d}/garbage.pt"], "cannot read checkpoint"),
    (["--model", "{d}/hf_no_config"], "has no config.json"),
    (["--model", "{d}/hf_llama"], "holds a 'llama' model, not GPT-2"),
    (["--model", "{d}/hf_missing_key"], "has no 'n_embd'"),
    (["--model", "{d}/hf_gelu"], "activation_function='gelu'"),
    (["--model", "{d}/hf_bad_json"], "is not valid JSON"),
    (["--model", "no-such-model-offline"], "could not get GPT-2 weights 'no-such-model-offline'"),
]


@pytest.mark.parametrize(("extra", "expected"), HELLASWAG_CASES, ids=[" ".join(c[0])[:40] for c in HELLASWAG_CASES])
def test_hellaswag_cli(files, monkeypatch, capsys, gpt2_enc, extra, expected):
    from pytorch_gpt2_from_scratch import hellaswag

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["--device", "cpu", "--model", files / "other_model.pt", "--data", files / "hs_three_endings.jsonl"]
    code, err = call_cli(hellaswag.cli, argv + [a.format(d=files) for a in extra], monkeypatch, capsys)
    assert_one_line(code, err, expected)


# --------------------------------------------------------------------------------------------- fineweb.py
FINEWEB_CASES = [
    (["--input", "{d}/missing.txt"], "missing.txt does not exist"),
    (["--input", "{d}/empty_dir"], "holds no .txt or .jsonl file"),
    (["--input", "{d}/bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    (["--input", "{d}/no_text.jsonl"], "has no 'text' field"),
    (["--input", "{d}/binary.txt"], "is not UTF-8 text"),
    (["--input", "{d}/empty.txt", "--shard-size", "0"], "--shard-size must be positive"),
    (["--input", "{d}/empty.txt", "--workers", "0"], "--workers must be positive"),
    (["--input", "{d}/empty.txt", "--shard-size", "1e3"], "invalid int value: '1e3'"),
]


@pytest.mark.parametrize(("extra", "expected"), FINEWEB_CASES, ids=[" ".join(c[0])[-40:] for c in FINEWEB_CASES])
def test_fineweb_cli(files, tmp_path, monkeypatch, capsys, gpt2_enc, extra, expected):
    from pytorch_gpt2_from_scratch import fineweb

    argv = ["--out-dir", tmp_path / "shards", "--workers", "1"] + [a.format(d=files) for a in extra]
    code, err = call_cli(fineweb.cli, argv, monkeypatch, capsys)
    assert_one_line(code, err, expected)


def test_fineweb_empty_text_file_gives_one_delimiter_token(files, tmp_path, gpt2_enc):
    """Not an error: an empty document is just its <|endoftext|> delimiter (one shard of one token)."""
    from pytorch_gpt2_from_scratch.fineweb import load_shard, main

    res = main(input=[str(files / "empty.txt")], output=str(tmp_path / "s"), shard_size=10, workers=1)
    assert res.num_tokens == 1 and load_shard(res.shards[0]).tolist() == [gpt2_enc.eot_token]


# --------------------------------------------------------------------------------------------- lessons' --model
LESSON_CASES = [
    (["--model", "{d}/hf_no_config"], "has no config.json"),
    (["--model", "{d}/hf_llama"], "not GPT-2"),
    (["--model", "no-such-model-offline"], "could not get GPT-2 weights"),
    (["--model", "{hf}", "--temperature", "0"], "temperature must be a finite number > 0"),
    (["--model", "{hf}", "--temperature", "inf"], "temperature must be a finite number > 0"),
    (["--model", "{hf}", "--top-k", "0"], "top_k must be in [1, 50257]"),
    (["--model", "{hf}", "--max-length", "2"], "max_length 2 is shorter than the prompt"),
    (["--model", "{hf}", "--num-return-sequences", "0"], "num_return_sequences must be a positive integer"),
    (["--model", "{hf}", "--device", "mps"] if not torch.backends.mps.is_available() else ["--device", "x"], "mps"),
]


@pytest.mark.parametrize(("extra", "expected"), LESSON_CASES, ids=[" ".join(c[0])[-40:] for c in LESSON_CASES])
def test_lesson_shared_model_option(
    files, hf_gpt2_small_dir, monkeypatch, capsys, gpt2_enc, load_lesson, extra, expected
):
    lesson = load_lesson("pytorch_gpt2_from_scratch", 5)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["--max-length", "8", "--num-return-sequences", "1", "--device", "cpu"]
    argv += [a.format(d=files, hf=hf_gpt2_small_dir) for a in extra]
    code, err = call_cli(lambda: lesson.main(**vars(lesson.parse_args())), argv, monkeypatch, capsys)
    assert_one_line(code, err, expected)


# --------------------------------------------------------------------------------------------- the API
CONFIG_CASES = [
    (dict(n_layer=0), "GPTConfig.n_layer must be a positive integer"),
    (dict(n_layer=2.5), "GPTConfig.n_layer must be a positive integer"),
    (dict(n_layer=True), "GPTConfig.n_layer must be a positive integer"),
    (dict(n_embd=-64), "GPTConfig.n_embd must be a positive integer"),
    (dict(vocab_size="50257"), "GPTConfig.vocab_size must be a positive integer"),
    (dict(block_size=0), "GPTConfig.block_size must be a positive integer"),
    (dict(n_embd=100, n_head=3), "divisible by n_head"),
    (dict(attn_impl="flash"), "attn_impl must be one of"),
    (dict(init="xavier"), "init must be one of"),
    (dict(pad_vocab_to=0), "pad_vocab_to must be a positive integer or None"),
]


@pytest.mark.parametrize(("kwargs", "expected"), CONFIG_CASES, ids=[str(c[0]) for c in CONFIG_CASES])
def test_gpt_config_rejects(kwargs, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
        GPTConfig(**kwargs)


@pytest.fixture(scope="module")
def tiny_model():
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=100)).eval()


FORWARD_CASES = [
    (lambda: (torch.zeros(2, 4), None), "idx must hold integer token ids"),
    (lambda: (torch.zeros(4, dtype=torch.long), None), r"idx must have shape \(B, T\)"),
    (lambda: (torch.zeros(1, 17, dtype=torch.long), None), "sequence length 17 exceeds block_size 16"),
    (lambda: (torch.tensor([[1, -1]]), None), r"token id -1 in idx is outside the vocabulary \[0, 100\)"),
    (lambda: (torch.tensor([[1, 100]]), None), r"token id 100 in idx is outside the vocabulary \[0, 100\)"),
    (lambda: (torch.tensor([[1, 2]]), torch.tensor([[1]])), "targets shape"),
    (lambda: (torch.tensor([[1, 2]]), torch.tensor([[1, 100]])), "target id 100 is outside the vocabulary"),
    (lambda: (torch.tensor([[1, 2]]), torch.tensor([[-5, 1]])), "target id -5 is outside the vocabulary"),
]


@pytest.mark.parametrize(("make", "expected"), FORWARD_CASES, ids=[c[1][:30] for c in FORWARD_CASES])
def test_gpt_forward_rejects(tiny_model, make, expected):
    idx, targets = make()
    with pytest.raises(ValueError, match=expected):
        tiny_model(idx, targets)


def test_ignore_index_targets_are_accepted_and_ignored(tiny_model):
    """-100 targets are not an error: the loss equals cross-entropy over the other positions only."""
    idx = torch.tensor([[1, 2, 3, 4]])
    targets = torch.tensor([[-100, 5, -100, 7]])
    with torch.no_grad():
        logits, loss = tiny_model(idx, targets)
        ref = torch.nn.functional.cross_entropy(logits[0, [1, 3]].double(), torch.tensor([5, 7]))
    assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, ref.item())


SAMPLER_CASES = [
    (dict(temperature=0), "temperature must be a finite number > 0"),
    (dict(temperature=-1.0), "temperature must be a finite number > 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number > 0"),
    (dict(temperature=float("inf")), "temperature must be a finite number > 0"),
    (dict(temperature="1"), "temperature must be a finite number > 0"),
    (dict(top_k=0), r"top_k must be in \[1, 10\]"),
    (dict(top_k=11), r"top_k must be in \[1, 10\]"),
    (dict(top_k=2.5), "top_k must be an integer or None"),
    (dict(top_k=True), "top_k must be an integer or None"),
    (dict(logits=torch.full((1, 10), float("nan"))), "NaN or"),
    (dict(logits=torch.tensor([[0.0] * 9 + [float("inf")]])), r"\+inf"),
    (dict(logits=torch.full((1, 10), float("-inf"))), "all -inf"),
    (dict(logits=torch.zeros(10)), r"floating \(B, V\) tensor"),
    (dict(logits=torch.zeros(1, 10, dtype=torch.long)), r"floating \(B, V\) tensor"),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"), SAMPLER_CASES, ids=[str(list(c[0].values())[0])[:20] for c in SAMPLER_CASES]
)
def test_sample_next_rejects(kwargs, expected):
    kwargs = {"logits": torch.zeros(1, 10), "top_k": 5, **kwargs}
    with pytest.raises(ValueError, match=expected):
        sample_next(**kwargs)


def test_sample_next_accepts_minus_inf_columns():
    """-inf logits (masked tokens) are legal as long as a row keeps one finite entry: that token is drawn."""
    logits = torch.tensor([[float("-inf"), 3.0, float("-inf")]])
    assert sample_next(logits, top_k=None).item() == 1


GENERATE_CASES = [
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (dict(max_new_tokens=1.5), "max_new_tokens must be an integer >= 0"),
    (dict(idx=torch.zeros(1, 3)), "idx must hold integer token ids"),
    (dict(idx=torch.zeros(3, dtype=torch.long)), r"idx must have shape \(B, T\)"),
]


@pytest.mark.parametrize(("kwargs", "expected"), GENERATE_CASES, ids=[c[1][:25] for c in GENERATE_CASES])
def test_generate_rejects(tiny_model, kwargs, expected):
    kwargs = {"idx": torch.zeros(1, 3, dtype=torch.long), "max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=expected):
        generate(tiny_model, **kwargs)


def test_generate_text_rejects_an_empty_prompt(tiny_model, gpt2_enc):
    with pytest.raises(ValueError, match="zero tokens"):
        generate_text(tiny_model, gpt2_enc, "", num_return_sequences=1, max_length=4)


# --------------------------------------------------------------------------------------------- real processes
def _run(args, **env):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    full_env.pop("LLM_SCRATCH_DEBUG", None) if "LLM_SCRATCH_DEBUG" not in env else None
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=120)


@pytest.mark.slow  # two interpreter starts (~5-15 s each on a busy 2-core machine)
def test_subprocess_one_line_and_debug_traceback(tmp_path):
    """From the shell: one line and exit 1; with LLM_SCRATCH_DEBUG=1 the full traceback of the same error."""
    args = [ROOT / "pytorch_gpt2_from_scratch" / "train_gpt2.py", "--total-batch-size", "0", "--out", tmp_path]
    plain = _run(args)
    assert plain.returncode == 1
    assert plain.stderr.strip() == "error: --total-batch-size must be positive, got 0"
    debug = _run(args, LLM_SCRATCH_DEBUG="1")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "ValueError: --total-batch-size must be positive, got 0" in debug.stderr
