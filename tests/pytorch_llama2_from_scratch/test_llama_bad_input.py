"""Bad input, table-driven: every public entry point of the LLaMA chapter answers malformed input with one clear
line naming the offending option / value / file (or computes the right thing), never a traceback or a crash.

* ``generate.py`` command line, run in-process through ``cli(argv)``: exit status 1 (our checks) or 2 (argparse),
  the last stderr line names the option, no traceback.
* The loaders, on broken checkpoint folders written here (empty, truncated, foreign files, configs of another
  model): all cases run in **one subprocess**, so a segfault in a native reader shows up as a failure.
* ``ModelArgs`` / ``Transformer.forward`` / ``generate`` / ``beam_search`` / the samplers: ``ValueError`` with the
  value in the message.
Plus the defects this suite was written for: the CLI honours the checkpoint's context length, validates options
before building the model, reports a config missing a key in one line (``LLM_SCRATCH_DEBUG=1`` shows the
traceback), and generation stops on any of several EOS ids.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytorch_llama2_from_scratch import sampling as S
from pytorch_llama2_from_scratch.generate import beam_search, cli, generate
from pytorch_llama2_from_scratch.loading import load_hf_checkpoint, load_tokenizer
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 300


def _train_bpe(directory: Path, vocab: int = 290, extra_config: dict | None = None) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["To be, or not to be, that is the question."] * 10, trainer)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", **(extra_config or {})}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_hf_llama):
    """A tiny HF checkpoint (vocab 300, context 64) with a byte-level BPE tokenizer: what the CLI needs."""
    directory = tmp_path_factory.mktemp("cli_ck")
    hf = make_hf_llama(vocab_size=VOCAB, seed=4)
    hf.save_pretrained(directory)
    _train_bpe(directory)
    return directory


def _copy_checkpoint(src: Path, dst: Path, edit_config=None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if edit_config is not None:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        cli(argv)
    err = capsys.readouterr().err
    return exc.value.code, err


# ============================================================================================ the CLI, table-driven
def _bad_dir(kind: str):
    """Checkpoint folders broken in one way each (built from the good one)."""

    def make(src: Path, tmp: Path) -> Path:
        d = tmp / kind
        if kind == "missing":
            return d
        if kind == "no_layers":
            return _copy_checkpoint(src, d, lambda c: c.pop("num_hidden_layers"))
        if kind == "gpt2":
            return _copy_checkpoint(src, d, lambda c: c.update(model_type="gpt2"))
        if kind == "heads_zero":
            return _copy_checkpoint(src, d, lambda c: c.update(num_attention_heads=0))
        if kind == "vocab_301":  # config and weights disagree: a message of several lines, printed as one
            return _copy_checkpoint(src, d, lambda c: c.update(vocab_size=301))
        _copy_checkpoint(src, d)
        if kind == "truncated":
            data = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").write_bytes(data[: len(data) // 2])
        elif kind == "not_json":
            (d / "config.json").write_text("{ this is not json")
        elif kind == "small_vocab":  # weights of a model whose vocabulary is smaller than the tokenizer's
            from safetensors.torch import load_file, save_file

            state = load_file(str(d / "model.safetensors"))
            state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][:100].clone()
            state["lm_head.weight"] = state["lm_head.weight"][:100].clone()
            save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
            config = json.loads((d / "config.json").read_text())
            config["vocab_size"] = 100
            (d / "config.json").write_text(json.dumps(config))
        return d

    return make


CLI_CASES = [
    # (id, extra argv, exit code, regex the error line must match)
    ("max-new-tokens negative", ["--max-new-tokens", "-5"], 1, r"--max-new-tokens must be an integer >= 1, got -5"),
    ("max-new-tokens zero", ["--max-new-tokens", "0"], 1, r"--max-new-tokens"),
    ("max-new-tokens not an int", ["--max-new-tokens", "many"], 2, r"--max-new-tokens: invalid int value"),
    ("num-beams zero", ["--strategy", "beam", "--num-beams", "0"], 1, r"--num-beams must be an integer >= 1, got 0"),
    ("temperature zero", ["--strategy", "temperature", "--temperature", "0"], 1, r"--temperature must be > 0"),
    ("temperature nan", ["--temperature", "nan"], 1, r"--temperature must be a finite number, got nan"),
    ("temperature inf", ["--strategy", "min_p", "--temperature", "inf"], 1, r"--temperature must be a finite"),
    ("top-p above 1", ["--top-p", "1.5"], 1, r"--top-p must be in \(0, 1\], got 1.5"),
    ("top-p zero", ["--top-p", "0"], 1, r"--top-p must be in \(0, 1\]"),
    ("top-k zero", ["--strategy", "top_k", "--top-k", "0"], 1, r"--top-k must be an integer >= 1, got 0"),
    ("min-p negative", ["--strategy", "min_p", "--min-p", "-0.1"], 1, r"--min-p must be in \[0, 1\]"),
    ("repetition-penalty zero", ["--repetition-penalty", "0"], 1, r"--repetition-penalty must be > 0"),
    ("length-penalty nan", ["--strategy", "beam", "--length-penalty", "nan"], 1, r"--length-penalty must be a fin"),
    ("unknown strategy", ["--strategy", "nucleus"], 2, r"--strategy: invalid choice: 'nucleus'"),
    ("unknown dtype", ["--dtype", "int8"], 2, r"--dtype: invalid choice: 'int8'"),
    ("unknown option", ["--top_p", "0.5"], 2, r"unrecognized arguments: --top_p"),
    ("prompt beyond context", ["--max-new-tokens", "70"], 1, r"= 7\d tokens exceeds the model's context of 64"),
    ("early-stopping word", ["--strategy", "beam", "--early-stopping", "maybe"], 2, r"--early-stopping: invalid"),
]
CLI_DIR_CASES = [
    ("checkpoint missing", "missing", 1, r"does not exist"),
    ("config lacks a key", "no_layers", 1, r"config.json lacks the required key\(s\) num_hidden_layers"),
    ("config of another model", "gpt2", 1, r"model_type 'gpt2'"),
    ("config with zero heads", "heads_zero", 1, r"num_attention_heads must be a positive integer, got 0"),
    ("weights of another shape", "vocab_301", 1, r"does not fit the model: .*mismatches .*checkpoint \(300, 64\)"),
    ("truncated weights", "truncated", 1, r"model.safetensors is not a readable weight file"),
    ("config not json", "not_json", 1, r"config.json is not valid JSON"),
    ("tokenizer of another vocabulary", "small_vocab", 1, r"tokenizer .* has \d+ tokens but the model's vocab.* 100"),
]


def _assert_one_line(code: int, err: str, want_code: int, pattern: str) -> None:
    import re

    assert code == want_code, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    last = lines[-1]
    if want_code == 1:
        assert len(lines) == 1 and last.startswith("error: "), err
    else:  # argparse: a usage line, then the error line
        assert "error:" in last, err
    assert re.search(pattern, last), (pattern, last)


@pytest.mark.parametrize(("argv", "code", "pattern"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_options(checkpoint, capsys, argv, code, pattern):
    base = ["--checkpoint", str(checkpoint), "--prompt", "To be", "--max-new-tokens", "4", "--device", "cpu"]
    _assert_one_line(*_run_cli(base + argv, capsys), code, pattern)


@pytest.mark.parametrize(("kind", "code", "pattern"), [c[1:] for c in CLI_DIR_CASES], ids=[c[0] for c in CLI_DIR_CASES])
def test_cli_bad_checkpoints(checkpoint, tmp_path, capsys, kind, code, pattern):
    directory = _bad_dir(kind)(checkpoint, tmp_path)
    argv = ["--checkpoint", str(directory), "--prompt", "To be", "--max-new-tokens", "4", "--device", "cpu"]
    _assert_one_line(*_run_cli(argv, capsys), code, pattern)


def test_cli_requires_checkpoint(capsys):
    _assert_one_line(*_run_cli(["--prompt", "x"], capsys), 2, r"the following arguments are required: --checkpoint")


def test_cli_debug_env_shows_the_traceback(checkpoint, tmp_path, monkeypatch):
    directory = _bad_dir("no_layers")(checkpoint, tmp_path)
    monkeypatch.setenv("LLM_SCRATCH_DEBUG", "1")
    with pytest.raises(ValueError, match="num_hidden_layers"):
        cli(["--checkpoint", str(directory), "--max-new-tokens", "2", "--device", "cpu"])


def test_cli_context_is_the_checkpoints_not_the_request(checkpoint, capsys):
    """Defect: the CLI sized max_seq_len to prompt + new tokens and ran past max_position_embeddings (64)."""
    from pytorch_llama2_from_scratch.generate import main

    prompt_len = len(load_tokenizer(checkpoint).encode("To be"))
    out = main(checkpoint=str(checkpoint), prompt=["To be"], strategy="greedy", max_new_tokens=64 - prompt_len)
    assert len(out["tokens"][0]) <= 64 - prompt_len  # exactly fits: allowed
    code, err = _run_cli(["--checkpoint", str(checkpoint), "--prompt", "To be", "--max-new-tokens", "64"], capsys)
    _assert_one_line(code, err, 1, rf"prompt of {prompt_len} tokens \+ --max-new-tokens 64 = {prompt_len + 64} tokens")
    assert "context of 64 tokens" in err


# ============================================================================================ loaders, in a subprocess
def _loader_cases(good: Path, tmp: Path) -> list[tuple[str, Path, str]]:
    """(id, folder, regex of the expected error) -- each folder broken in one way."""
    from safetensors.torch import load_file, save_file

    cases = []

    def case(name: str, pattern: str, edit_config=None) -> Path:
        d = _copy_checkpoint(good, tmp / name.replace(" ", "_"), edit_config)
        cases.append((name, d, pattern))
        return d

    (tmp / "empty_dir").mkdir()
    cases.append(("empty folder", tmp / "empty_dir", r"neither a Hugging Face checkpoint"))
    d = case("zero-byte safetensors", r"model.safetensors is empty \(0 bytes\)")
    (d / "model.safetensors").write_bytes(b"")
    d = case("text file as safetensors", r"model.safetensors is not a readable weight file")
    (d / "model.safetensors").write_text("hello, I am not a tensor file\n" * 10)
    d = case("truncated safetensors", r"model.safetensors is not a readable weight file")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:100])
    d = case("safetensors as .bin", r"pytorch_model.bin is not a readable weight file")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    d = case("bin of a list", r"pytorch_model.bin does not hold a dict of tensors")
    (d / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], d / "pytorch_model.bin")
    d = case("truncated bin", r"pytorch_model.bin is not a readable weight file")
    (d / "model.safetensors").unlink()
    torch.save(load_file(str(good / "model.safetensors")), d / "pytorch_model.bin")
    data = (d / "pytorch_model.bin").read_bytes()
    (d / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    d = case("index naming a missing shard", r"lists shard\(s\) that are not in .*: model-00002-of-00002.safetensors")
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    save_file(state, str(d / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in state}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    d = case("index without weight_map", r"index.json has no 'weight_map'")
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    d = case("index not json", r"index.json is not valid JSON")
    (d / "model.safetensors.index.json").write_text("[1, 2")
    case("config is a list", r"config.json must hold a JSON object", None)
    (tmp / "config_is_a_list" / "config.json").write_text("[1, 2, 3]")
    case(
        "hidden_size a string",
        r"hidden_size must be a positive integer, got '64'",
        lambda c: c.update(hidden_size="64"),
    )
    case("vocab_size missing", r"lacks the required key\(s\) vocab_size", lambda c: c.pop("vocab_size"))
    case("unknown rope type", r"rope type 'yarn'", lambda c: c.update(rope_scaling={"rope_type": "yarn", "factor": 4}))
    case("hidden_act gelu", r"hidden_act 'gelu'", lambda c: c.update(hidden_act="gelu"))
    case(
        "heads not dividing width",
        r"head_dim 16 \* num_attention_heads 5 != hidden_size 64",
        lambda c: c.update(num_attention_heads=5),
    )
    case("kv heads not dividing heads", r"not divisible by n_kv_heads 3", lambda c: c.update(num_key_value_heads=3))
    case("vocab larger than weights", r"embed_tokens.weight: checkpoint \(300, 64\) vs model \(301, 64\)",
         lambda c: c.update(vocab_size=301))  # fmt: skip
    meta = tmp / "meta_truncated"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 300}))
    (meta / "consolidated.00.pth").write_bytes(b"PK\x03\x04 truncated zip")
    cases.append(("truncated Meta shard", meta, r"consolidated.00.pth is not a readable weight file"))
    meta2 = tmp / "meta_scaled_rope"
    meta2.mkdir()
    (meta2 / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 1, "n_heads": 4, "use_scaled_rope": True}))
    torch.save({"tok_embeddings.weight": torch.zeros(10, 64)}, meta2 / "consolidated.00.pth")
    cases.append(("Meta params with use_scaled_rope", meta2, r"use_scaled_rope"))
    return cases


_LOADER_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pytorch_llama2_from_scratch.loading import load_checkpoint
out = {}
for name, folder in json.loads(sys.argv[2]):
    try:
        load_checkpoint(folder, max_seq_len=16)
        out[name] = "loaded"
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def loader_results(checkpoint, tmp_path_factory):
    cases = _loader_cases(checkpoint, tmp_path_factory.mktemp("bad_loaders"))
    arg = json.dumps([(name, str(folder)) for name, folder, _ in cases])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER_SCRIPT, str(ROOT), arg], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, f"the loader process died (status {proc.returncode}): {proc.stderr[-2000:]}"
    return {name: pattern for name, _, pattern in cases}, json.loads(proc.stdout.strip().splitlines()[-1])


LOADER_IDS = [
    "empty folder",
    "zero-byte safetensors",
    "text file as safetensors",
    "truncated safetensors",
    "safetensors as .bin",
    "bin of a list",
    "truncated bin",
    "index naming a missing shard",
    "index without weight_map",
    "index not json",
    "config is a list",
    "hidden_size a string",
    "vocab_size missing",
    "unknown rope type",
    "hidden_act gelu",
    "heads not dividing width",
    "kv heads not dividing heads",
    "vocab larger than weights",
    "truncated Meta shard",
    "Meta params with use_scaled_rope",
]


@pytest.mark.parametrize("name", LOADER_IDS)
def test_loader_bad_checkpoints(loader_results, name):
    import re

    patterns, results = loader_results
    assert set(patterns) == set(LOADER_IDS)
    got = results[name]
    kind = got.split(":", 1)[0]
    assert kind in ("CheckpointError", "ValueError", "FileNotFoundError"), got
    assert re.search(patterns[name], got), (patterns[name], got)


# ============================================================================================ model, generate, samplers
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=50, max_seq_len=16, max_batch_size=2))


MODEL_ARGS_CASES = [
    (dict(dim=0), r"ModelArgs.dim must be a positive integer, got 0"),
    (dict(dim="64"), r"ModelArgs.dim must be a positive integer, got '64'"),
    (dict(n_layers=True), r"ModelArgs.n_layers must be a positive integer, got True"),
    (dict(n_heads=-4), r"ModelArgs.n_heads must be a positive integer, got -4"),
    (dict(vocab_size=2.5), r"ModelArgs.vocab_size must be a positive integer, got 2.5"),
    (dict(max_seq_len=0), r"ModelArgs.max_seq_len must be a positive integer, got 0"),
    (dict(max_batch_size=-1), r"ModelArgs.max_batch_size must be a positive integer, got -1"),
    (dict(dim=30, n_heads=4), r"dim 30 is not divisible by n_heads 4"),
    (dict(n_kv_heads=3), r"n_heads 4 is not divisible by n_kv_heads 3"),
    (dict(norm_eps=float("nan")), r"norm_eps must be > 0, got nan"),
    (dict(norm_eps=0.0), r"norm_eps must be > 0"),
    (dict(rope_theta=-1.0), r"rope_theta must be > 0"),
    (dict(hidden_dim=-8), r"hidden_dim must be a positive integer or None, got -8"),
    (dict(ffn_dim_multiplier=0.0), r"ffn_dim_multiplier must be > 0"),
]


@pytest.mark.parametrize(("changes", "pattern"), MODEL_ARGS_CASES, ids=[str(c[0]) for c in MODEL_ARGS_CASES])
def test_model_args_bad_values(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        ModelArgs(**{**dict(dim=64, n_layers=1, n_heads=4, vocab_size=32), **changes})


FORWARD_CASES = [
    ("id = vocab", lambda m: m(torch.tensor([[1, 50]])), r"token id 50 is outside the vocabulary \[0, 50\)"),
    ("negative id", lambda m: m(torch.tensor([[-3, 4]])), r"token id -3 is outside the vocabulary \[0, 50\)"),
    ("float tokens", lambda m: m(torch.tensor([[1.0, 2.0]])), r"must be integer token ids .* torch.float32"),
    ("1-D tokens", lambda m: m(torch.tensor([1, 2])), r"shape \(batch, seq_len\)"),
    ("no tokens", lambda m: m(torch.zeros(1, 0, dtype=torch.long)), r"at least one token"),
    ("negative start_pos", lambda m: m(torch.tensor([[1]]), start_pos=-1), r"start_pos must be a non-negative int"),
    ("float start_pos", lambda m: m(torch.tensor([[1]]), start_pos=1.5), r"start_pos must be a non-negative int"),
    ("past max_seq_len", lambda m: m(torch.ones(1, 17, dtype=torch.long)), r"= 17 exceeds max_seq_len 16"),
    ("batch past cache", lambda m: m(torch.ones(3, 2, dtype=torch.long)), r"batch size 3 exceeds max_batch_size 2"),
    (
        "mask of another batch",
        lambda m: m(torch.ones(1, 2, dtype=torch.long), attention_mask=torch.ones(2, 2)),
        r"\(1, S\)",
    ),
    (
        "positions past table",
        lambda m: m(torch.ones(1, 2, dtype=torch.long), positions=torch.tensor([0, 16])),
        r"positions must lie in \[0, max_seq_len=16\)",
    ),  # fmt: skip
]


@pytest.mark.parametrize("call, pattern", [c[1:] for c in FORWARD_CASES], ids=[c[0] for c in FORWARD_CASES])
@torch.no_grad()
def test_forward_bad_input(tiny, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(tiny)


GENERATE_CASES = [
    ("no prompts", lambda m: generate(m, [], 2), r"non-empty list of token-id lists"),
    ("flat prompt", lambda m: generate(m, [1, 2], 2), r"list of token-id lists"),
    ("empty prompt", lambda m: generate(m, [[1], []], 2), r"every prompt needs at least one token"),
    ("negative max_new_tokens", lambda m: generate(m, [[1]], -1), r"max_new_tokens must be an integer >= 0, got -1"),
    ("float max_new_tokens", lambda m: generate(m, [[1]], 2.5), r"max_new_tokens must be an integer >= 0, got 2.5"),
    ("eos a string", lambda m: generate(m, [[1]], 2, eos_id="</s>"), r"eos_id must be an int, a list of ints"),
    ("prompt id out of vocab", lambda m: generate(m, [[1, 99]], 2), r"token id 99 is outside the vocabulary"),
    ("too long", lambda m: generate(m, [[1] * 10], 7), r"17 tokens exceeds the model's max_seq_len 16"),
    ("beam 0 tokens", lambda m: beam_search(m, [1], 2, 0), r"max_new_tokens must be an integer >= 1, got 0"),
    ("beam 1.5 beams", lambda m: beam_search(m, [1], 1.5, 2), r"num_beams must be an integer >= 1, got 1.5"),
    ("beam return > beams", lambda m: beam_search(m, [1], 2, 2, num_return_sequences=3), r"num_return_sequences"),
]


@pytest.mark.parametrize("call, pattern", [c[1:] for c in GENERATE_CASES], ids=[c[0] for c in GENERATE_CASES])
def test_generate_bad_input(tiny, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(tiny)


SAMPLER_CASES = [
    ("temperature nan", lambda z: S.apply_temperature(z, math.nan), r"temperature must be a finite number > 0"),
    ("temperature inf", lambda z: S.apply_temperature(z, math.inf), r"temperature must be a finite number > 0"),
    ("temperature str", lambda z: S.apply_temperature(z, "0.7"), r"temperature must be a finite number > 0"),
    ("top_k bool", lambda z: S.top_k_filter(z, True), r"top_k must be an integer >= 1, got True"),
    ("top_p nan", lambda z: S.top_p_filter(z, math.nan), r"top_p must be in \(0, 1\], got nan"),
    ("min_p inf", lambda z: S.min_p_filter(z, math.inf), r"min_p must be in \[0, 1\], got inf"),
    ("penalty inf", lambda z: S.SamplingConfig(repetition_penalty=math.inf), r"repetition_penalty must be > 0"),
    ("nan logits", lambda z: S.sample(torch.full((1, 4), math.nan)), r"cannot sample: the logits contain NaN"),
    ("all -inf row", lambda z: S.sample(torch.full((1, 4), -math.inf)), r"every token at -inf"),
    ("integer logits", lambda z: S.sample(torch.ones(1, 4, dtype=torch.long)), r"floating-point tensor"),
    ("3-D logits", lambda z: S.sample(torch.zeros(1, 1, 4)), r"shape \(batch, vocab\)"),
]


@pytest.mark.parametrize("call, pattern", [c[1:] for c in SAMPLER_CASES], ids=[c[0] for c in SAMPLER_CASES])
def test_sampler_bad_input(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(torch.randn(2, 8))


# ============================================================================================ several EOS ids
@pytest.fixture(scope="module")
def gen_pair(tmp_path_factory, make_hf_llama):
    hf = make_hf_llama(seed=11)
    directory = tmp_path_factory.mktemp("eos_gen")
    hf.save_pretrained(directory)
    ours, _ = load_hf_checkpoint(directory, max_batch_size=4)
    return ours, hf


def test_several_eos_ids_all_stop_generation(gen_pair):
    """Each row stops at the first of *any* EOS id, as HF ``generate(eos_token_id=[a, b])`` does."""
    ours, hf = gen_pair
    prompts = [[1, 17, 42, 5], [1, 8], [1, 60, 33, 21, 9]]
    free = generate(ours, prompts, max_new_tokens=10)
    eos = [free[0][2], free[1][4]]  # one id that row 0 emits early, another that row 1 emits
    got = generate(ours, prompts, max_new_tokens=10, eos_id=eos)
    for row_free, row, prompt in zip(free, got, prompts):
        stops = [i for i, t in enumerate(row_free) if t in eos]
        assert row == (row_free[: stops[0] + 1] if stops else row_free)
        ids = torch.tensor([prompt])
        ref = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        assert row == ref[: len(row)] and (len(row) == 10 or row[-1] in eos)
    assert got[0][-1] == eos[0] and got[1][-1] in eos
    # beam search stops on either id too
    hyps = beam_search(ours, prompts[0], 2, 10, eos_id=eos)
    assert all(h.tokens[-1] in eos or len(h.tokens) == 10 for h in hyps)


def test_eos_list_in_config_without_tokenizer_eos(tmp_path):
    """config.json ``eos_token_id: [a, b]`` and no ``eos_token`` in tokenizer_config.json: both ids stop."""
    _train_bpe(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 2]}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_id == 9 and tok.eos_ids == (9, 2, 7)  # generation_config first, then config, no duplicates
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_id == 2 and set(tok.eos_ids) == {2, 7, 9}


def test_cli_streamed_text_equals_the_completion(checkpoint, capsys):
    """Streaming prints exactly the decoded completion, also when the last token ends inside a UTF-8 character
    (random weights emit arbitrary byte tokens)."""
    from pytorch_llama2_from_scratch.generate import main

    for seed in (0, 1, 2):
        out = main(checkpoint=str(checkpoint), prompt=["To be"], strategy="random", max_new_tokens=12, seed=seed)
        printed = capsys.readouterr().out
        assert f"\nTo be{out['completions'][0]}\n" in printed
