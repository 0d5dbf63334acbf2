"""The Triton flash-attention kernels vs independent references.

Without CUDA every kernel runs under Triton's interpreter (root conftest sets ``TRITON_INTERPRET=1``); with CUDA
they are compiled and the ``gpu`` tests add bf16 and long sequences against ``F.scaled_dot_product_attention``.

References: the part-1 PyTorch algorithms (``flash_attention_forward`` / ``flash_attention_backward`` of
``attention_torch.py``, tiled differently), autograd through ``naive_attention``, ``torch.logsumexp`` of the
explicit scores and SDPA. fp16 kernels are compared with fp32 references computed from the same fp16 inputs.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from triton_flash_attention_scratch import triton_flash as tf
from triton_flash_attention_scratch.attention_torch import (
    flash_attention_backward,
    flash_attention_forward,
    naive_attention,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}

# (B, H, H_kv, N, D, causal, dtype): every N in {1, 16, 17, 64, 100, 128, 257} and every D in {16, 32, 64}
# appears with causal and non-causal, fp32 and fp16, and with grouped-query heads, without the full product
# (the interpreter is slow). Small tiles under the interpreter (32x16) make N >= 33 span several blocks.
MATRIX = [
    (1, 1, 1, 1, 16, True, torch.float32),
    (1, 2, 2, 1, 64, False, torch.float16),
    (2, 2, 2, 16, 32, False, torch.float32),
    (1, 2, 1, 16, 16, True, torch.float16),
    (1, 2, 2, 17, 64, True, torch.float32),
    (2, 2, 1, 17, 16, False, torch.float16),
    (1, 2, 2, 64, 16, True, torch.float32),
    (1, 4, 2, 64, 32, False, torch.float16),
    (1, 2, 2, 100, 32, True, torch.float16),
    (1, 2, 1, 100, 64, False, torch.float32),
    (1, 1, 1, 128, 64, True, torch.float16),
    (1, 2, 2, 128, 16, False, torch.float32),
    (1, 2, 1, 257, 32, True, torch.float32),
    (1, 1, 1, 257, 16, False, torch.float16),
]


def _ids(case):
    B, H, H_kv, N, D, causal, dtype = case
    return f"B{B}-H{H}-Hkv{H_kv}-N{N}-D{D}-{'causal' if causal else 'full'}-{str(dtype).split('.')[-1]}"


def _inputs(B, H, H_kv, N, D, dtype, device=DEV):
    q = torch.randn(B, H, N, D, device=device, dtype=dtype)
    k = torch.randn(B, H_kv, N, D, device=device, dtype=dtype)
    v = torch.randn(B, H_kv, N, D, device=device, dtype=dtype)
    do = torch.randn(B, H, N, D, device=device, dtype=dtype)
    return q, k, v, do


def _close(name, got, want, atol, rtol=None):
    rtol = atol if rtol is None else rtol
    err = (got.float() - want.float()).abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol, msg=f"{name}: max abs err {err:.3g}")


@pytest.mark.parametrize("case", MATRIX, ids=_ids)
def test_forward_and_backward_match_references(case):
    B, H, H_kv, N, D, causal, dtype = case
    q, k, v, do = _inputs(B, H, H_kv, N, D, dtype)
    atol = TOL[dtype]

    # Triton: forward (o, lse), then backward from the saved o and lse
    o, lse = tf.attention_forward(q, k, v, causal=causal)
    dq, dk, dv = tf.attention_backward(q, k, v, o, lse, do, causal=causal)
    assert o.dtype == dq.dtype == dk.dtype == dv.dtype == dtype and lse.dtype == torch.float32
    assert lse.shape == (B, H, N) and dk.shape == k.shape

    # reference 1: autograd through naive attention, in fp32, from the same (rounded) inputs
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    o_ref = naive_attention(q32, k32, v32, causal=causal)
    o_ref.backward(do.float())
    s = (q32.detach() @ k32.detach().repeat_interleave(H // H_kv, dim=1).transpose(-2, -1)) / math.sqrt(D)
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool, device=DEV).triu(1), float("-inf"))
    lse_ref = torch.logsumexp(s, dim=-1)
    _close("O vs naive", o, o_ref, atol)
    _close("L vs logsumexp", lse, lse_ref, 1e-4 if dtype == torch.float32 else 5e-3)
    _close("dQ vs autograd", dq, q32.grad, atol)
    _close("dK vs autograd", dk, k32.grad, atol)
    _close("dV vs autograd", dv, v32.grad, atol)

    # reference 2: the part-1 tiled PyTorch algorithm (its own tiles of 64)
    o_p1, lse_p1 = flash_attention_forward(q.float(), k.float(), v.float(), causal=causal)
    _close("O vs part 1", o, o_p1, atol)
    _close("L vs part 1", lse, lse_p1, 1e-4 if dtype == torch.float32 else 5e-3)
    grads_p1 = flash_attention_backward(
        q.float(), k.float(), v.float(), o_p1, lse_p1, do.float(), causal=causal, sm_scale=None
    )
    for name, got, want in zip(("dQ", "dK", "dV"), (dq, dk, dv), grads_p1):
        _close(f"{name} vs part 1", got, want, atol)


def test_autograd_function_matches_sdpa_with_gqa_and_strided_inputs():
    """flash_attention() through autograd, inputs as GPT-2 makes them: (B, N, H, D) transposed to (B, H, N, D)."""
    B, H, H_kv, N, D = 2, 4, 2, 40, 32
    qkv = torch.randn(B, N, H + 2 * H_kv, D, device=DEV)
    q = qkv[:, :, :H].transpose(1, 2).requires_grad_()  # (B, N, H, D) -> (B, H, N, D), not contiguous
    k = qkv[:, :, H : H + H_kv].transpose(1, 2).requires_grad_()
    v = qkv[:, :, H + H_kv :].transpose(1, 2).requires_grad_()
    assert not q.is_contiguous()
    scale = 0.3
    out = tf.flash_attention(q, k, v, causal=True, sm_scale=scale)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)

    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, scale=scale, enable_gqa=True)
    rq, rk, rv = torch.autograd.grad(ref, (q2, k2, v2), g)
    for name, got, want in (("O", out, ref), ("dQ", dq, rq), ("dK", dk, rk), ("dV", dv, rv)):
        _close(name, got, want, 1e-4)


def test_gradients_flow_into_a_loss_like_any_op():
    q, k, v, _ = _inputs(1, 2, 2, 20, 16, torch.float32)
    for t in (q, k, v):
        t.requires_grad_()
    (tf.flash_attention(q, k, v, causal=True) ** 2).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize(
    "fwd,dkdv,dq",
    [
        ({"BLOCK_M": 64, "BLOCK_N": 32}, {"BLOCK_M": 32, "BLOCK_N": 64}, {"BLOCK_M": 64, "BLOCK_N": 16}),
        ({"BLOCK_M": 16, "BLOCK_N": 16}, {"BLOCK_M": 16, "BLOCK_N": 16}, {"BLOCK_M": 16, "BLOCK_N": 16}),
        tuple(tf.GPU_DEFAULT_CONFIGS[k] for k in ("fwd", "dkdv", "dq")),
    ],
)
def test_explicit_configs_give_the_same_result(fwd, dkdv, dq):
    """Tile sizes change only the order of the sums: other configs agree with the reference too."""
    q, k, v, do = _inputs(1, 2, 1, 70, 16, torch.float32)
    o, lse = tf.attention_forward(q, k, v, causal=True, config={"num_stages": 2, **fwd})
    grads = tf.attention_backward(q, k, v, o, lse, do, causal=True, dkdv_config=dkdv, dq_config=dq)
    q32, k32, v32 = (t.clone().requires_grad_() for t in (q, k, v))
    ref = naive_attention(q32, k32, v32, causal=True)
    ref.backward(do)
    _close("O", o, ref, 1e-4)
    for name, got, want in zip(("dQ", "dK", "dV"), grads, (q32.grad, k32.grad, v32.grad)):
        _close(name, got, want, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_large_scores_do_not_overflow(dtype):
    """Scores in the thousands: exp would overflow without the running max; the online softmax must not."""
    q, k, v, do = _inputs(1, 1, 1, 40, 16, dtype)
    q = q * 40  # |S| up to ~1e3
    for t in (q, k, v):
        t.requires_grad_()
    out = tf.flash_attention(q, k, v, causal=True)
    grads = torch.autograd.grad(out, (q, k, v), do)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = naive_attention(q32, k32, v32, causal=True)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    assert all(torch.isfinite(g).all() for g in (out, *grads))
    atol = TOL[dtype] * (1 if dtype == torch.float32 else 5)  # near one-hot rows: fp16 rounding of P dominates
    for name, got, want in zip(("O", "dQ", "dK", "dV"), (out, *grads), (ref, *ref_grads)):
        _close(name, got, want, atol, rtol=atol)


def test_head_dim_not_a_power_of_two_is_padded():
    q, k, v, _ = _inputs(1, 2, 2, 33, 24, torch.float32)
    o = tf.flash_attention(q, k, v)
    _close("O", o, F.scaled_dot_product_attention(q, k, v), 1e-4)


# ------------------------------------------------------------------------------------------------ validation
def _ok(N=8, D=16, dtype=torch.float32, device=DEV):
    return [torch.randn(1, 2, N, D, dtype=dtype, device=device) for _ in range(3)]


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: [t.double() for t in _ok()], TypeError, "unsupported dtype torch.float64"),
        (lambda: [t.to(torch.int32) for t in _ok()], TypeError, "unsupported dtype"),
        (lambda: [_ok()[0], _ok()[1].half(), _ok()[2]], TypeError, "must share one dtype"),
        (lambda: [t.to("meta") for t in _ok()], ValueError, "cpu|CUDA tensors"),
        (lambda: [_ok()[0][0], *_ok()[1:]], ValueError, "must have 4 dims"),
        (lambda: [_ok(N=8)[0], *_ok(N=9)[1:]], ValueError, "does not match q shape"),
        (lambda: [_ok()[0], _ok()[1], _ok(N=9)[2]], ValueError, "k and v must have the same shape"),
        (lambda: [_ok(D=16)[0], *_ok(D=32)[1:]], ValueError, "does not match q shape"),
        (lambda: _ok(D=512), ValueError, "head_dim 512 is not supported"),
        (lambda: _ok(N=0), ValueError, "empty input"),
        (lambda: [torch.randn(1, 3, 8, 16), *[torch.randn(1, 2, 8, 16)] * 2], ValueError, "multiple of"),
        (lambda: [torch.randn(1, 2, 16, 8).transpose(-1, -2), *_ok()[1:]], ValueError, "contiguous in its last"),
        (lambda: [_ok()[0], [1, 2], _ok()[2]], TypeError, "k must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_before_any_launch(make, exc, match):
    q, k, v = make()
    with pytest.raises(exc, match=match):
        tf.attention_forward(q, k, v)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter refuses bf16; compiled kernels support it")
def test_bf16_is_refused_under_the_interpreter():
    with pytest.raises(TypeError, match="bfloat16 needs a CUDA GPU"):
        tf.flash_attention(*_ok(dtype=torch.bfloat16))


def test_backward_validates_saved_tensors_and_configs():
    q, k, v = _ok()
    o, lse = tf.attention_forward(q, k, v)
    with pytest.raises(ValueError, match="lse must be a contiguous float32 tensor of shape"):
        tf.attention_backward(q, k, v, o, lse[:, :1], o)
    with pytest.raises(ValueError, match="do must match q"):
        tf.attention_backward(q, k, v, o, lse, o[..., :8])
    with pytest.raises(ValueError, match="dK/dV config needs BLOCK_N % BLOCK_M == 0"):
        tf.attention_backward(q, k, v, o, lse, o, dkdv_config={"BLOCK_M": 64, "BLOCK_N": 32})
    with pytest.raises(ValueError, match="forward config needs BLOCK_M % BLOCK_N == 0"):
        tf.attention_forward(q, k, v, config={"BLOCK_M": 16, "BLOCK_N": 32})


# ------------------------------------------------------------------------------------------------ autotuning
@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
@pytest.mark.parametrize("n_ctx,head_dim", [(64, 16), (1000, 64), (4096, 128), (16384, 256)])
def test_pruned_config_space_is_legal_and_never_empty(kernel, n_ctx, head_dim):
    space = tf.config_space(kernel)
    kept = [c for c in space if tf.config_is_valid(kernel, c, n_ctx, head_dim)]
    assert kept, "pruning must leave at least one config"
    for c in kept:
        m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        resident, streamed = (n, m) if kernel == "dkdv" else (m, n)
        assert resident % streamed == 0  # the causal two-stage split needs aligned tiles
    pruned = tf._make_pruner(kernel)(space, {"N_CTX": n_ctx}, HEAD_DIM=head_dim, CAUSAL=True)
    assert pruned == kept
    if n_ctx <= 64:  # tiles longer than the sequence only compute padding
        assert all(max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= 64 for c in kept)


def test_attention_flops_formula():
    # 4·B·H·N²·D forward, halved when causal, backward 2.5x the forward
    assert tf.attention_flops(2, 3, 5, 7, causal=False) == 4 * 2 * 3 * 25 * 7
    assert tf.attention_flops(2, 3, 5, 7, causal=True, mode="bwd") == 4 * 2 * 3 * 25 * 7 * 0.5 * 2.5
    with pytest.raises(ValueError, match="mode must be one of"):
        tf.attention_flops(1, 1, 1, 1, False, mode="both")


# ------------------------------------------------------------------------------------------------ GPU only
GPU_MATRIX = [
    (B, H, H_kv, N, D, causal, dtype)
    for (B, H, H_kv) in [(2, 8, 8), (1, 8, 2)]
    for N in (1, 17, 257, 1000, 4096)
    for D in (16, 64, 128)
    for causal in (False, True)
    for dtype in (torch.float16, torch.bfloat16)
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_MATRIX, ids=_ids)
def test_gpu_matches_sdpa_bf16_fp16_long_sequences(case):
    """The whole matrix with one fixed config per kernel (autotuning every key would take far too long)."""
    B, H, H_kv, N, D, causal, dtype = case
    q, k, v, do = _inputs(B, H, H_kv, N, D, dtype, device="cuda")
    cfg = tf.GPU_DEFAULT_CONFIGS
    out, lse = tf.attention_forward(q, k, v, causal=causal, config=cfg["fwd"])
    dq, dk, dv = tf.attention_backward(
        q, k, v, out, lse, do, causal=causal, dkdv_config=cfg["dkdv"], dq_config=cfg["dq"]
    )
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal, enable_gqa=True)
    rq, rk, rv = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    atol = TOL[dtype] * (2 if N >= 1000 else 1)
    for name, got, want in (("O", out, ref), ("dQ", dq, rq), ("dK", dk, rk), ("dV", dv, rv)):
        _close(name, got, want, atol, rtol=atol)


@pytest.mark.gpu
def test_gpu_fp32_is_exact_not_tf32():
    q, k, v, _ = _inputs(1, 4, 4, 512, 64, torch.float32, device="cuda")
    _close("O", tf.flash_attention(q, k, v, causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True), 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_autotuned_path_matches_sdpa(causal):
    q, k, v, do = _inputs(2, 4, 4, 1000, 64, torch.float16, device="cuda")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = tf.flash_attention(q, k, v, causal=causal)  # the first call autotunes
    grads = torch.autograd.grad(out, (q, k, v), do)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    for name, got, want in zip(("O", "dQ", "dK", "dV"), (out, *grads), (ref, *ref_grads)):
        _close(name, got, want, 2e-2)
    assert tf.best_configs()["fwd"], "the autotuner cached a choice"


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [24, 80])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_padded_head_dims(head_dim, causal):
    """Head dims padded to a power of two: the padding lanes must read as zeros on real hardware too."""
    q, k, v, do = _inputs(1, 4, 2, 300, head_dim, torch.float16, device="cuda")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = tf.flash_attention(q, k, v, causal=causal)
    grads = torch.autograd.grad(out, (q, k, v), do)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal, enable_gqa=True)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    for name, got, want in zip(("O", "dQ", "dK", "dV"), (out, *grads), (ref, *ref_grads)):
        _close(name, got, want, 1e-2)
