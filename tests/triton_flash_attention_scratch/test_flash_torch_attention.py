"""The PyTorch attention algorithms of chapter 4 vs independent references.

References: ``F.scaled_dot_product_attention`` (outputs), autograd through a plain softmax-attention built from
torch ops (gradients), ``torch.logsumexp``, ``torch.autograd.gradcheck`` in float64 (the custom Function).
Sequence lengths are deliberately not multiples of the blocks. fp32 results are compared with the reference run
in float64, allowing 8x the reference's own fp32 error (``tests/numerics.py``); fp16 with a bound scaled to the
values.
"""

import pytest
import torch
import torch.nn.functional as F

from tests.numerics import assert_close_scaled, assert_close_to_fp64
from triton_flash_attention_scratch.attention_torch import (
    FlashAttentionTorch,
    flash_attention_backward,
    flash_attention_forward,
    flash_attention_forward_simple,
    flash_attention_torch,
    naive_attention,
    naive_attention_backward,
)

# (B, H, H_kv, N, D, block_q, block_k)
SHAPES = [
    (1, 1, 1, 1, 16, 64, 64),
    (2, 2, 2, 17, 32, 16, 16),
    (1, 4, 2, 100, 16, 32, 16),  # grouped-query, blocks of different sizes
    (1, 2, 1, 257, 64, 64, 64),  # multi-query
    (2, 3, 3, 100, 8, 16, 64),
]


def _qkv(B, H, H_kv, N, D, N_kv=None, dtype=torch.float32):
    N_kv = N if N_kv is None else N_kv
    return (
        torch.randn(B, H, N, D, dtype=dtype),
        torch.randn(B, H_kv, N_kv, D, dtype=dtype),
        torch.randn(B, H_kv, N_kv, D, dtype=dtype),
    )


# the parity subset (rerun per CPU instruction set, kept fast): the grouped-query and the odd-length shapes
PARITY_SHAPES = [pytest.param(s, marks=pytest.mark.parity) if i in (1, 2) else s for i, s in enumerate(SHAPES)]


def _sdpa(q, k, v, causal, scale=None):
    rep = q.shape[1] // k.shape[1]  # expand K/V heads explicitly: independent of the GQA code under test
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def close64(name, got, ref_fn):
    """The policy: ``ref_fn(dtype)`` runs the reference; ours vs its float64 run, scaled by its own fp32 error."""
    assert_close_to_fp64(got, ref_fn(torch.float64), ref_fn(torch.float32), what=name)


def grad_close(got, r64, r32, what):
    """As ``assert_close_to_fp64``; a gradient that is zero in exact arithmetic (dQ, dK of a one-token sequence,
    where the softmax is constant) has no scale of its own: ours must then be below 64 ulp x 10 (|dO|·|V|)."""
    if r64.abs().max() <= 1e-12:
        assert got.abs().max() <= 64 * torch.finfo(got.dtype).eps * 10, what
        return
    assert_close_to_fp64(got, r64, r32, what=what)


def _cast(dtype, *ts):
    return [t.to(dtype) for t in ts]


def _autograd_reference(q, k, v, do, causal, dtype=torch.float32):
    """Gradients of softmax attention from autograd of torch ops (torch.softmax, matmul), run in ``dtype``."""
    q, k, v, do = (t.detach().to(dtype) for t in (q, k, v, do))
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    s = q @ k.repeat_interleave(rep, 1).transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    o = torch.softmax(s, dim=-1) @ v.repeat_interleave(rep, 1)
    o.backward(do)
    return o.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", PARITY_SHAPES)
def test_forward_matches_sdpa(shape, causal):
    B, H, H_kv, N, D, bq, bk = shape
    q, k, v = _qkv(B, H, H_kv, N, D)
    ref = lambda dt: _sdpa(*_cast(dt, q, k, v), causal)  # noqa: E731
    close64("naive", naive_attention(q, k, v, causal), ref)
    close64("simple", flash_attention_forward_simple(q, k, v, causal, None, bq, bk), ref)
    o, lse = flash_attention_forward(q, k, v, causal, None, bq, bk)
    close64("flash O", o, ref)
    # L = logsumexp of each (scaled, masked) score row
    rep = H // H_kv

    def lse_ref(dt):
        s = q.to(dt) @ k.to(dt).repeat_interleave(rep, 1).transpose(-2, -1) / D**0.5
        if causal:
            s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
        return torch.logsumexp(s, dim=-1)

    assert lse.shape == (B, H, N)
    close64("flash L", lse, lse_ref)


@pytest.mark.parametrize("n_kv", [1, 17, 100])
def test_cross_attention_lengths_and_scale(n_kv):
    q, k, v = _qkv(2, 2, 1, 33, 16, N_kv=n_kv)
    ref = lambda dt: _sdpa(*_cast(dt, q, k, v), False, scale=0.3)  # noqa: E731
    close64("naive", naive_attention(q, k, v, sm_scale=0.3), ref)
    close64("simple", flash_attention_forward_simple(q, k, v, False, 0.3, 16, 8), ref)
    close64("flash", flash_attention_forward(q, k, v, False, 0.3, 16, 8)[0], ref)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", PARITY_SHAPES)
def test_backward_matches_autograd(shape, causal):
    B, H, H_kv, N, D, bq, bk = shape
    q, k, v = _qkv(B, H, H_kv, N, D)
    do = torch.randn(B, H, N, D)
    ref64 = _autograd_reference(q, k, v, do, causal, torch.float64)
    ref32 = _autograd_reference(q, k, v, do, causal, torch.float32)
    o, lse = flash_attention_forward(q, k, v, causal, None, bq, bk)
    for impl, grads in (
        ("naive_backward", naive_attention_backward(q, k, v, do, causal)),
        ("flash_backward", flash_attention_backward(q, k, v, o, lse, do, causal, None, bq, bk)),
    ):
        for name, got, r64, r32 in zip(("dQ", "dK", "dV"), grads, ref64[1:], ref32[1:]):
            grad_close(got, r64, r32, what=f"{impl} {name}")
    # the autograd.Function wrapper
    q2, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v))
    o = flash_attention_torch(q2, k2, v2, causal, None, bq, bk)
    o.backward(do)
    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (o, q2.grad, k2.grad, v2.grad), ref64, ref32):
        grad_close(got, r64, r32, what=f"Function {name}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,h,h_kv", [(1, 1, 1), (7, 2, 1), (10, 2, 2)])
def test_gradcheck_float64(n, h, h_kv, causal):
    q, k, v = (t.requires_grad_() for t in _qkv(1, h, h_kv, n, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b, c: FlashAttentionTorch.apply(a, b, c, causal, None, 4, 3), (q, k, v))


def test_half_precision_against_fp32_reference():
    q, k, v = _cast(torch.float16, *_qkv(1, 2, 2, 100, 32))
    ref64 = _sdpa(*_cast(torch.float64, q, k, v), True)  # from the same fp16-rounded inputs
    o, lse = flash_attention_forward(q, k, v, True, None, 32, 32)
    assert o.dtype == torch.float16 and lse.dtype == torch.float32
    # fp32 accumulation, one fp16 rounding of the output: within a few fp16 ulp of max|O| (measured < 1)
    assert_close_scaled(o.double(), ref64, ulps=4, dtype=torch.float16, what="fp16 O")


def test_large_logits_stay_finite():
    q, k, v = _qkv(1, 1, 1, 65, 16)
    o, _ = flash_attention_forward(q * 100, k * 100, v, True, None, 16, 16)  # scores in the thousands
    assert torch.isfinite(o).all()
    close64("O", o, lambda dt: _sdpa(*_cast(dt, q * 100, k * 100, v), True))


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(1, 3, 2, 8, 4)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_attention_forward(q, k, v)
    q, k, v = _qkv(1, 2, 2, 8, 4, N_kv=5)
    with pytest.raises(ValueError, match="causal attention needs equal"):
        naive_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="shape \\(B, heads, seq_len, head_dim\\)"):
        flash_attention_forward(q[0], k, v)
    with pytest.raises(ValueError, match="block_q must be a positive integer"):
        flash_attention_forward(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="head_dim of q"):
        naive_attention(q, k[..., :2], v[..., :2])
