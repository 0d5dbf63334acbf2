"""Lessons 19-23 (decoding at the bandwidth limit) run at tiny sizes and show what they claim."""

from __future__ import annotations

import pytest
import torch

CHAPTER = "pytorch_llama2_from_scratch"
TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96, vocab=512, prompt_len=4, new_tokens=6,
            repeats=1, clock="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny LLaMA trained for 2 steps by lesson 12's code (accuracy numbers need a trained model and tokenizer)."""
    from pytorch_llama2_from_scratch.decode_eval import trained_tiny_llama

    directory = tmp_path_factory.mktemp("tiny_llama")
    with torch.inference_mode():  # as decode_ladder.main calls it: the fallback training must still get gradients
        model, _ = trained_tiny_llama(directory, train_steps=2, max_chars=60_000)
    assert model.trained_now and model.trained_steps == 2
    return str(directory)


@pytest.mark.slow
def test_lesson19_bytes_profile_and_limit(load_lesson):
    res = load_lesson(CHAPTER, 19).main(**TINY)
    parts = res["parts"]
    assert sum(parts.values()) == res["bytes_per_token"]
    args_bytes = 4 * (2 * (64 * 64 * 2 + 2 * 64 * 32) + 2 * 3 * 64 * 96)  # wq,wo 64x64; wk,wv 32x64; FFN 3x
    assert parts["attention (wq wk wv wo)"] + parts["feed-forward (w1 w2 w3)"] == args_bytes
    assert 0 < res["profile"]["matmul_share"] < 1 and res["profile"]["ops"] > 20
    assert all(v > 0 for v in res["large"]["bandwidth_GBs"])


def test_lesson20_static_and_dynamic_equal_hf(load_lesson):
    res = load_lesson(CHAPTER, 20).main(**TINY, compile=False)
    rows = res["methods"]
    assert set(rows) == {"dynamic cache", "static cache", "HF generate"}
    assert all(r["same_tokens"] == 1.0 for r in rows.values())  # greedy: token for token


@pytest.mark.slow
def test_lesson21_half_precision(load_lesson, tiny_checkpoint):
    res = load_lesson(CHAPTER, 21).main(**TINY, windows=2, checkpoint=tiny_checkpoint)
    rows = res["speed"]["methods"]
    assert rows["bf16 weights"]["bytes_per_token"] < 0.51 * rows["fp32 weights"]["bytes_per_token"] + 4096
    for name in ("bf16", "fp16"):
        a = res["accuracy"][name]
        assert a["top1_agreement"] > 0.9 and abs(a["ppl_delta_pct"]) < 5


@pytest.mark.slow
def test_lesson22_int8(load_lesson, tiny_checkpoint):
    res = load_lesson(CHAPTER, 22).main(**TINY, windows=2, checkpoint=tiny_checkpoint)
    assert res["roundtrip_equal"]
    rows = res["speed"]["methods"]
    assert rows["int8 weights"]["bytes_per_token"] < 0.3 * rows["fp32 weights"]["bytes_per_token"] + 512 * 64 * 4
    assert res["accuracy"]["int8"]["top1_agreement"] > 0.9
    assert set(res["kernels_ms"]) >= {"fp32 F.linear", "int8 _weight_int8pack_mm (bf16 act)",
                                      "int8 cpu_kernels gemv (fp32 act)"}  # fmt: skip
    # PyTorch's int8 kernel measured next to the default one: also ~1 byte per weight (its scales are bf16)
    assert rows["int8, int8pack"]["bytes_per_token"] < rows["int8 weights"]["bytes_per_token"]
    assert rows["int8, int8pack"]["bytes_per_token"] < 0.3 * rows["fp32 weights"]["bytes_per_token"] + 512 * 64 * 4


def test_lesson23_speculative_is_identical_to_greedy(load_lesson):
    mod = load_lesson(CHAPTER, 23)
    for draft, damp_after in (("int8", None), ("layers:1", None), ("layers:1", 1)):
        res = mod.main(**TINY, ks=(1, 3), draft=draft, damp_after=damp_after)
        rows = res["speed"]["methods"]
        assert rows["speculative k=1"]["same_tokens"] == rows["speculative k=3"]["same_tokens"] == 1.0
        assert 1 <= res["stats"][3].tokens_per_target_forward <= 4
    with pytest.raises(ValueError, match=r"--damp-after must be in \[0, 1\]"):
        mod.main(**TINY, ks=(1,), draft="layers:1", damp_after=5)
    with pytest.raises(ValueError, match="--draft must be 'int8', 'layers:N' or 'layers:N\\+int8'"):
        mod.make_draft(torch.nn.Linear(1, 1), "half")


def test_decode_ladder_writes_its_table_with_todays_date(tiny_checkpoint, tmp_path):
    import time

    from pytorch_llama2_from_scratch import decode_ladder
    from pytorch_llama2_from_scratch.loading import load_checkpoint

    out, threads = tmp_path / "ladder.md", torch.get_num_threads()
    try:
        res = decode_ladder.main(["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                                  "--intermediate", "96", "--vocab", "512", "--prompt-len", "4", "--new-tokens", "6",
                                  "--repeats", "1", "--ks", "2", "--no-compile", "--checkpoint", tiny_checkpoint,
                                  "--windows", "2", "--out", str(out)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)  # decode_ladder measures on one thread
    text = out.read_text()
    assert text == res["table"]
    seq_len = load_checkpoint(tiny_checkpoint)[1].max_seq_len
    assert res["tiny"]["tokens"] == 2 * (seq_len - 1)  # --windows 2: two held-out windows of the model's length
    assert f", {time.strftime('%Y-%m-%d')}; random LLaMA" in text.splitlines()[0]  # the run's date, not a fixed one
    rows = [line for line in text.splitlines() if line.startswith("| ") and "tok/s" not in line]
    methods = {line.split(" | ")[0][2:] for line in rows}
    assert {"HF generate (fp32)", "static cache (fp32)", "static cache (int8 weights)"} <= methods
    damped = [line for line in rows if line.startswith("| damped target: speculative")]
    assert damped and all("| 100% (own plain) |" in line for line in damped)  # greedy-identical on that pair too


@pytest.mark.parametrize("argv", [["--windows", "0"], ["--repeats", "0"], ["--ks", "0"], ["--seed", "-1"]])
def test_decode_ladder_refuses_a_bad_option_before_any_work(argv, capsys):
    from pytorch_llama2_from_scratch import decode_ladder

    with pytest.raises(SystemExit) as e:
        decode_ladder.main(argv)
    assert e.value.code == 2
    assert f"error: argument {argv[0]}: expected" in capsys.readouterr().err.splitlines()[-1]
