"""Every lesson 01-09 runs with small settings and returns what it claims, checked against independent values."""

from __future__ import annotations

import torch

CH = "pytorch_llama2_from_scratch"


def test_01_architecture(load_lesson):
    r = load_lesson(CH, 1).main(preset="llama2-7b")
    assert r["tiny_analytic"] == r["tiny_built"]
    assert abs(r["counts"]["llama2-7b"] / 1e9 - 6.74) < 0.005  # Touvron et al. report "7B" = 6.74e9
    assert r["breakdown"]["feed_forward (w1,w2,w3)"] == 32 * 3 * 4096 * 11008


def test_02_embeddings(load_lesson):
    r = load_lesson(CH, 2).main(seq_len=6)
    assert r["lookup_vs_onehot_err"] < 1e-6 and r["position_spread"] == 0 and r["tied"] is False
    assert r["embed_params_7b"] == 32000 * 4096


def test_03_rope(load_lesson):
    r = load_lesson(CH, 3).main(head_dim=32, n_heads=2, plot=False)
    assert r["err_with_permutation"] < 1e-5 < 0.1 < r["err_without_permutation"]
    assert r["roundtrip_err"] == 0 and r["norm_err"] < 1e-5 and r["relative_err"] < 1e-4


def test_04_rmsnorm(load_lesson):
    r = load_lesson(CH, 4).main(dim=64, repeats=1)
    assert r["err_torch"] < 1e-5 and r["err_formula"] < 1e-5  # torch.nn.functional.rms_norm is the reference
    assert r["scale_err"] < 1e-4 and r["layernorm_shift_change"] < 1e-4 < 0.1 < r["shift_change"]
    assert r["fp16_stable_err"] < 0.05 < r["fp16_naive_err"]


def test_05_decoder_layer(load_lesson):
    r = load_lesson(CH, 5).main(batch=2, seq_len=6)
    assert r["logits_shape"] == (2, 6, 256) and r["shapes"]["layers.0.feed_forward.w1"] == (2, 6, 192)
    assert r["block_err"] < 1e-6 and r["past_change"] == 0 and r["last_change"] > 0


def test_06_kv_cache(load_lesson):
    r = load_lesson(CH, 6).main(prompt_len=8, new_tokens=6)
    assert r["decode_err"] < 1e-5 and r["chunk_err"] < 1e-5
    assert r["same_tokens"] and not r["cache_in_state_dict"]
    assert r["cache_bytes"] == 2 * 4 * 2 * (8 + 24) * 4 * 16 * 4  # K,V x layers x batch x slots x kv x hd x fp32


def test_07_gqa(load_lesson):
    r = load_lesson(CH, 7).main(batch=1, context=4096, dtype="float16")
    assert r["gqa_err"] < 1e-5
    assert all(row["formula"] == row["allocated"] for row in r["tiny"])
    assert [row["allocated"] for row in r["tiny"]] == [2 * 2 * 4 * 32 * n * 8 * 2 for n in (8, 2, 1)]
    sizes = {row["model"]: row["total"] for row in r["llama2"]}
    assert sizes["llama2-7b"] == 2 * 2**30 and sizes["llama2-70b if MHA"] == 8 * sizes["llama2-70b"]


def test_08_swiglu(load_lesson):
    r = load_lesson(CH, 8).main(dim=64, plot=False)
    assert r["err"] < 1e-5
    assert [r["rows"][n]["hidden"] for n in ("llama2-7b", "llama2-13b", "llama2-70b")] == [11008, 13824, 28672]


def test_09_weight_loading(load_lesson, tmp_path):
    lesson = load_lesson(CH, 9)
    r = lesson.main(out=str(tmp_path))
    assert r["hf_err"] < 1e-5 and r["meta_err"] < 1e-5
    assert (tmp_path / "tiny_meta" / "consolidated.01.pth").exists()
    again = lesson.main(checkpoint=str(tmp_path / "tiny_meta"), prompt="the weights", max_seq_len=64)
    probs = [p for _, p in again["top"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert again["num_params"] == again["args"].num_params()
    assert torch.get_default_dtype() == torch.float32
