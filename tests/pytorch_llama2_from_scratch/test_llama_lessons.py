"""Every lesson 01-09 runs with small settings and returns what it claims, checked against independent values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.numerics import assert_close_scaled, assert_close_to_fp64, to_double

from .conftest import hf_from_ours as _hf_from_ours

CH = "pytorch_llama2_from_scratch"


def test_01_architecture(load_lesson):
    r = load_lesson(CH, 1).main(preset="llama2-7b")
    assert r["tiny_analytic"] == r["tiny_built"]
    assert abs(r["counts"]["llama2-7b"] / 1e9 - 6.74) < 0.005  # Touvron et al. report "7B" = 6.74e9
    assert r["breakdown"]["feed_forward (w1,w2,w3)"] == 32 * 3 * 4096 * 11008


def test_02_embeddings(load_lesson):
    r = load_lesson(CH, 2).main(seq_len=6)
    assert torch.equal(r["looked_up"], r["table"][r["tokens"]])  # an embedding is a row lookup: exact
    assert r["position_spread"] == 0 and r["tied"] is False
    assert r["embed_params_7b"] == 32000 * 4096


def _interleaved_rope64(q: torch.Tensor, theta: float) -> torch.Tensor:
    """Independent float64 RoPE, Meta's convention: pair (q_2i, q_2i+1) of position m rotated by m*theta^(-2i/hd).
    q: (T, H, hd)."""
    t, _, hd = q.shape
    angle = torch.arange(t, dtype=torch.float64)[:, None, None] * theta ** (
        -torch.arange(0, hd, 2, dtype=torch.float64) / hd
    )  # (T, 1, hd/2)
    a, b = q[..., 0::2], q[..., 1::2]
    out = torch.empty_like(q)
    out[..., 0::2] = a * angle.cos() - b * angle.sin()
    out[..., 1::2] = a * angle.sin() + b * angle.cos()
    return out


def _half_split_rope64(q: torch.Tensor, theta: float) -> torch.Tensor:
    """HF's convention in float64: pairs (q_i, q_{i+hd/2})."""
    t, _, hd = q.shape
    angle = torch.arange(t, dtype=torch.float64)[:, None, None] * theta ** (
        -torch.arange(0, hd, 2, dtype=torch.float64) / hd
    )
    a, b = q[..., : hd // 2], q[..., hd // 2 :]
    return torch.cat((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), dim=-1)


def test_03_rope(load_lesson):
    r = load_lesson(CH, 3).main(head_dim=32, n_heads=2, plot=False)
    x, w = r["x"].double(), r["w_meta"].double()
    q = (x @ w.T).view(x.shape[0], 2, 32)  # (T, D) -> (T, H, hd)
    ref64 = _interleaved_rope64(q, 10000.0)
    assert_close_to_fp64(r["q_meta"], ref64, what="Meta rotation")
    assert_close_to_fp64(r["q_hf_in_meta_order"], ref64, what="HF rotation on permuted weights, re-ordered")
    # the same weights with HF's pairing give something else: the permutation is needed
    assert (_half_split_rope64(q, 10000.0) - ref64).abs().max() > 0.1
    assert_close_to_fp64(r["q_meta"].norm(dim=-1), q.norm(dim=-1), what="norms")  # a rotation keeps norms
    assert r["roundtrip_err"] == 0


def test_04_rmsnorm(load_lesson):
    r = load_lesson(CH, 4).main(dim=64, repeats=1)
    x, w = r["x"], r["weight"]
    ref64 = F.rms_norm(x.double(), (64,), w.double(), 1e-5)  # torch's RMSNorm as the reference
    assert_close_to_fp64(r["y"], ref64, F.rms_norm(x, (64,), w, 1e-5))
    # fp16 input of size ~1e3: our norm (float32 inside) stays within a few fp16 ulps of the float64 result
    half = r["fp16_input"]
    assert not torch.isfinite(half.pow(2)).all()  # the naive fp16 square overflows
    assert_close_scaled(r["fp16_stable"], F.rms_norm(half.double(), (64,), w.double(), 1e-5), ulps=8, dtype=half.dtype)
    assert r["layernorm_shift_change"] < 1e-4 < 0.1 < r["shift_change"]


@torch.no_grad()
def _hf_refs(model, tokens):
    hf = _hf_from_ours(model)
    return to_double(hf)(tokens.cpu()).logits, hf(tokens.cpu()).logits


def test_05_decoder_layer(load_lesson):
    r = load_lesson(CH, 5).main(batch=2, seq_len=6)
    assert r["logits_shape"] == (2, 6, 256) and r["shapes"]["layers.0.feed_forward.w1"] == (2, 6, 192)
    ref64, ref32 = _hf_refs(r["model"], r["tokens"])  # the whole stack of blocks against transformers
    assert_close_to_fp64(r["logits"], ref64, ref32)
    assert r["past_change"] == 0 and r["last_change"] > 0.1


def test_06_kv_cache(load_lesson):
    r = load_lesson(CH, 6).main(prompt_len=8, new_tokens=6)
    ref64, ref32 = _hf_refs(r["model"], r["tokens"])
    assert_close_to_fp64(r["decoded_logits"], ref64, ref32, what="prefill + decode steps")
    assert_close_to_fp64(r["chunked_logits"], ref64, ref32, what="chunked prefill")
    assert r["same_tokens"] and not r["cache_in_state_dict"]
    assert r["cache_bytes"] == 2 * 4 * 2 * (8 + 24) * 4 * 16 * 4  # K,V x layers x batch x slots x kv x hd x fp32


def test_07_gqa(load_lesson):
    r = load_lesson(CH, 7).main(batch=1, context=4096, dtype="float16")
    q, k, v = (t.transpose(1, 2) for t in r["qkv"])  # (B, T, h, hd) -> (B, h, T, hd)
    ref = [
        F.scaled_dot_product_attention(q.to(d), k.to(d), v.to(d), is_causal=True, enable_gqa=True)
        for d in (torch.float64, torch.float32)
    ]
    assert_close_to_fp64(r["attention"], *ref)
    assert all(row["formula"] == row["allocated"] for row in r["tiny"])
    assert [row["allocated"] for row in r["tiny"]] == [2 * 2 * 4 * 32 * n * 8 * 2 for n in (8, 2, 1)]
    sizes = {row["model"]: row["total"] for row in r["llama2"]}
    assert sizes["llama2-7b"] == 2 * 2**30 and sizes["llama2-70b if MHA"] == 8 * sizes["llama2-70b"]


def test_08_swiglu(load_lesson):
    r = load_lesson(CH, 8).main(dim=64, plot=False)
    ffn, x = r["ffn"], r["x"]

    def swiglu(dtype):
        w1, w2, w3 = (m.weight.detach().to(dtype) for m in (ffn.w1, ffn.w2, ffn.w3))
        return F.linear(F.silu(F.linear(x.to(dtype), w1)) * F.linear(x.to(dtype), w3), w2)

    assert_close_to_fp64(r["out"], swiglu(torch.float64), swiglu(torch.float32))
    assert [r["rows"][n]["hidden"] for n in ("llama2-7b", "llama2-13b", "llama2-70b")] == [11008, 13824, 28672]


def test_09_weight_loading(load_lesson, tmp_path):
    lesson = load_lesson(CH, 9)
    r = lesson.main(out=str(tmp_path))
    with torch.no_grad():
        ref64, ref32 = to_double(r["hf_model"])(r["ids"]).logits, r["hf_model"](r["ids"]).logits
    assert_close_to_fp64(r["logits"]["hf"], ref64, ref32, what="HF-layout loader")
    assert_close_to_fp64(r["logits"]["meta"], ref64, ref32, what="Meta-layout loader")
    assert (tmp_path / "tiny_meta" / "consolidated.01.pth").exists()
    again = lesson.inspect_checkpoint(str(tmp_path / "tiny_meta"), prompt="the weights", max_seq_len=64)
    probs = [p for _, p in again["top"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert again["num_params"] == again["args"].num_params()
    assert torch.get_default_dtype() == torch.float32
