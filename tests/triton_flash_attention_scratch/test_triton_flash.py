"""The Triton flash-attention kernels vs independent references.

Without CUDA every kernel runs under Triton's interpreter (root conftest sets ``TRITON_INTERPRET=1``); with CUDA
they are compiled and the ``gpu`` tests add bf16 and long sequences against ``F.scaled_dot_product_attention``.

References: autograd through ``naive_attention`` run in **float64** from the same (rounded) inputs, the part-1
PyTorch algorithm (``attention_torch.py``, tiled differently) in float64, ``torch.logsumexp`` of the explicit
scores and SDPA. Tolerances follow ``tests/numerics.py``: fp32 results may be at most 8x as far from the float64
reference as the reference's own fp32 run is (plus 64 ulp); fp16 results (no fp16 run of the reference exists
that would be more precise than ours) get a bound scaled to the values, ``FP16_ULPS`` ulp of max|ref|.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.numerics import assert_close_scaled, assert_close_to_fp64, eps, max_abs
from triton_flash_attention_scratch import triton_flash as tf
from triton_flash_attention_scratch.attention_torch import (
    flash_attention_backward,
    flash_attention_forward,
    naive_attention,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# fp16 under the interpreter: measured worst error 0.6 ulp of max|ref| (O, dQ, dK, dV over the matrix below);
# 8 ulp leaves margin and still catches a dropped rescale or scale factor (errors of 10 %+).
FP16_ULPS = 8
BF16_ULPS = 8

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
# the parity subset (rerun per CPU instruction set, kept fast): fp32 + fp16, causal + not, GQA, N = 1 and odd N
PARITY_CASES = {0, 3, 4, 5}


def _ids(case):
    B, H, H_kv, N, D, causal, dtype = case
    return f"B{B}-H{H}-Hkv{H_kv}-N{N}-D{D}-{'causal' if causal else 'full'}-{str(dtype).split('.')[-1]}"


def _inputs(B, H, H_kv, N, D, dtype, device=DEV):
    q = torch.randn(B, H, N, D, device=device, dtype=dtype)
    k = torch.randn(B, H_kv, N, D, device=device, dtype=dtype)
    v = torch.randn(B, H_kv, N, D, device=device, dtype=dtype)
    do = torch.randn(B, H, N, D, device=device, dtype=dtype)
    return q, k, v, do


def _naive_with_grads(q, k, v, do, causal, dtype, scale=None):
    """Output and (dq, dk, dv) of autograd through naive attention, run in ``dtype`` from the given inputs."""
    qr, kr, vr = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    o = naive_attention(qr, kr, vr, causal=causal, sm_scale=scale)
    o.backward(do.to(dtype))
    return [o.detach(), qr.grad, kr.grad, vr.grad]


def check(name, got, ref64, ref32=None, ulps=None):
    """The policy: fp32 against float64 with the reference's own fp32 error; fp16/bf16 scaled to the values.

    A reference that is zero up to float64 rounding (dQ, dK of a one-token sequence, where softmax is constant)
    has no scale of its own: then ours must be zero to within 64 ulp of its dtype times 10, the size of the other
    quantities (max|dO|·max|V| of randn inputs).
    """
    got = got.detach().cpu()
    ref64 = ref64.detach().cpu()
    if max_abs(ref64) <= 1e-12:
        assert max_abs(got) <= 64 * eps(got.dtype) * 10, f"{name}: {max_abs(got):.3e} where the reference is 0"
        return
    if got.dtype == torch.float32:
        assert_close_to_fp64(got, ref64, None if ref32 is None else ref32.detach().cpu(), what=name)
    else:
        default = FP16_ULPS if got.dtype == torch.float16 else BF16_ULPS
        assert_close_scaled(got.double(), ref64, ulps=ulps or default, dtype=got.dtype, what=name)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.parity) if i in PARITY_CASES else c for i, c in enumerate(MATRIX)],
    ids=[_ids(c) for c in MATRIX],
)
def test_forward_and_backward_match_references(case):
    B, H, H_kv, N, D, causal, dtype = case
    q, k, v, do = _inputs(B, H, H_kv, N, D, dtype)

    # Triton: forward (o, lse), then backward from the saved o and lse
    o, lse = tf.attention_forward(q, k, v, causal=causal)
    dq, dk, dv = tf.attention_backward(q, k, v, o, lse, do, causal=causal)
    assert o.dtype == dq.dtype == dk.dtype == dv.dtype == dtype and lse.dtype == torch.float32
    assert lse.shape == (B, H, N) and dk.shape == k.shape

    # reference 1: autograd through naive attention, float64 (truth) and fp32 (its own rounding), same inputs
    ref64 = _naive_with_grads(q, k, v, do, causal, torch.float64)
    ref32 = _naive_with_grads(q, k, v, do, causal, torch.float32)
    rep = H // H_kv

    def lse_of(dt):
        s = (q.to(dt) @ k.to(dt).repeat_interleave(rep, dim=1).transpose(-2, -1)) / math.sqrt(D)
        if causal:
            s = s.masked_fill(torch.ones(N, N, dtype=torch.bool, device=DEV).triu(1), float("-inf"))
        return torch.logsumexp(s, dim=-1)

    # L is fp32 in every case (the kernel accumulates in fp32); fp16 inputs are exact in fp32, so one policy
    check("L vs logsumexp", lse, lse_of(torch.float64), lse_of(torch.float32))
    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (o, dq, dk, dv), ref64, ref32):
        check(f"{name} vs naive", got, r64, r32)

    # reference 2: the part-1 tiled PyTorch algorithm (its own tiles of 64), in float64
    q6, k6, v6, do6 = (t.double() for t in (q, k, v, do))
    o_p1, lse_p1 = flash_attention_forward(q6, k6, v6, causal=causal)
    check("O vs part 1", o, o_p1, ref32[0])
    check("L vs part 1", lse, lse_p1, lse_of(torch.float32))
    grads_p1 = flash_attention_backward(q6, k6, v6, o_p1, lse_p1, do6, causal=causal, sm_scale=None)
    for name, got, want, r32 in zip(("dQ", "dK", "dV"), (dq, dk, dv), grads_p1, ref32[1:]):
        check(f"{name} vs part 1", got, want, r32)


# (B, H, H_kv, N, D, causal, dtype, dkdv_split): the GQA group shared among several dK/dV programs, each writing
# fp32 partial sums: every divisor of a group of 4 (N = 45: a partial key block), a group of 3 (fp16, non-causal)
SPLIT_CASES = [
    (2, 4, 1, 45, 32, True, torch.float32, 2),
    (2, 4, 1, 45, 32, True, torch.float32, 4),
    (1, 6, 2, 33, 16, False, torch.float16, 3),
]


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.parity) if i == 1 else c for i, c in enumerate(SPLIT_CASES)],
    ids=[f"{_ids(c[:7])}-split{c[7]}" for c in SPLIT_CASES],
)
def test_split_gqa_backward_matches_references(case):
    """``dkdv_split``: the same dK, dV (in the input dtype) as the float64 reference, however the group is split;
    dQ and the forward are untouched by it."""
    B, H, H_kv, N, D, causal, dtype, split = case
    q, k, v, do = _inputs(B, H, H_kv, N, D, dtype)
    o, lse = tf.attention_forward(q, k, v, causal=causal)
    dq, dk, dv = tf.attention_backward(q, k, v, o, lse, do, causal=causal, dkdv_split=split)
    assert dk.dtype == dv.dtype == dtype and dk.shape == dv.shape == k.shape
    ref64 = _naive_with_grads(q, k, v, do, causal, torch.float64)
    ref32 = _naive_with_grads(q, k, v, do, causal, torch.float32)
    for name, got, r64, r32 in zip(("dQ", "dK", "dV"), (dq, dk, dv), ref64[1:], ref32[1:]):
        check(f"{name} (dkdv_split={split}) vs naive", got, r64, r32)


def test_split_gqa_through_autograd_matches_sdpa():
    """``flash_attention(..., dkdv_split=H // H_kv)`` (one dK/dV program per query head) under autograd vs
    ``F.scaled_dot_product_attention(enable_gqa=True)`` in float64."""
    B, H, H_kv, N, D = 1, 4, 2, 37, 16
    q, k, v, do = _inputs(B, H, H_kv, N, D, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o = tf.flash_attention(*leaves, causal=True, dkdv_split=2)
    grads = torch.autograd.grad(o, leaves, do)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_leaves, is_causal=True, enable_gqa=True)
    ref_grads = torch.autograd.grad(ref, ref_leaves, do.double())
    ref32 = _naive_with_grads(q, k, v, do, True, torch.float32)
    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (o, *grads), (ref, *ref_grads), ref32):
        check(f"{name} vs SDPA", got, r64, r32)


@pytest.mark.parity
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
    grads = torch.autograd.grad(out, (q, k, v), g)

    def sdpa(dtype):
        q2, k2, v2 = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        ref = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, scale=scale, enable_gqa=True)
        return [ref.detach(), *torch.autograd.grad(ref, (q2, k2, v2), g.to(dtype))]

    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (out, *grads), sdpa(torch.float64), sdpa(torch.float32)):
        check(name, got, r64, r32)


def test_gradients_of_a_nonlinear_loss_match_float64_autograd():
    """loss = Σ O² makes dO depend on O: the Function's gradients equal autograd through the float64 reference."""
    q, k, v, _ = _inputs(1, 2, 2, 20, 16, torch.float32)
    for t in (q, k, v):
        t.requires_grad_()
    (tf.flash_attention(q, k, v, causal=True) ** 2).sum().backward()

    def ref(dtype):
        q2, k2, v2 = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        (naive_attention(q2, k2, v2, causal=True) ** 2).sum().backward()
        return q2.grad, k2.grad, v2.grad

    for name, t, r64, r32 in zip(("dQ", "dK", "dV"), (q, k, v), ref(torch.float64), ref(torch.float32)):
        check(name, t.grad, r64, r32)


def test_double_backward_raises_instead_of_dropping_second_order_terms():
    """create_graph=True needs the backward to be differentiable; ours is not, so it must say so (defect 10).

    Silently it would return first-order-only values: float64 autograd through naive attention gives a very
    different second derivative (checked below), so a silent result would be wrong, not approximate.
    """
    q, k, v, _ = _inputs(1, 1, 1, 12, 16, torch.float32)
    qg = q.clone().requires_grad_()
    out = tf.flash_attention(qg, k, v, causal=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad((out**2).sum(), qg, create_graph=True)
    # first-order gradients still work with create_graph=False, and second order really is non-zero
    (g1,) = torch.autograd.grad((tf.flash_attention(qg, k, v, causal=True) ** 2).sum(), qg)
    q6 = q.double().requires_grad_()
    (g6,) = torch.autograd.grad((naive_attention(q6, k.double(), v.double(), causal=True) ** 2).sum(), q6,
                                create_graph=True)  # fmt: skip
    (h6,) = torch.autograd.grad(g6.abs().sum(), q6)
    check("dQ (first order)", g1, g6, None)
    assert h6.abs().max() > 0.1, "second derivative of the reference is non-trivial"


@pytest.mark.parametrize(
    "fwd,dkdv,dq",
    [
        ({"BLOCK_M": 64, "BLOCK_N": 32}, {"BLOCK_M": 32, "BLOCK_N": 64}, {"BLOCK_M": 64, "BLOCK_N": 16}),
        ({"BLOCK_M": 16, "BLOCK_N": 16}, {"BLOCK_M": 16, "BLOCK_N": 16}, {"BLOCK_M": 16, "BLOCK_N": 16}),
        tuple(tf.GPU_DEFAULT_CONFIGS[k] for k in ("fwd", "dkdv", "dq")),
    ],
)
def test_explicit_configs_give_the_same_result(fwd, dkdv, dq):
    """Tile sizes change only the order of the sums: other configs agree with the float64 reference too."""
    q, k, v, do = _inputs(1, 2, 1, 70, 16, torch.float32)
    o, lse = tf.attention_forward(q, k, v, causal=True, config={"num_stages": 2, **fwd})
    grads = tf.attention_backward(q, k, v, o, lse, do, causal=True, dkdv_config=dkdv, dq_config=dq)
    ref64 = _naive_with_grads(q, k, v, do, True, torch.float64)
    ref32 = _naive_with_grads(q, k, v, do, True, torch.float32)
    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (o, *grads), ref64, ref32):
        check(name, got, r64, r32)
    # the same configs through flash_attention(configs=...)
    qg = q.clone().requires_grad_()
    out = tf.flash_attention(qg, k, v, causal=True, configs={"fwd": fwd, "dkdv": dkdv, "dq": dq})
    out.backward(do)
    check("O via configs", out, ref64[0], ref32[0])
    check("dQ via configs", qg.grad, ref64[1], ref32[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_large_scores_do_not_overflow(dtype):
    """Scores in the thousands: exp would overflow without the running max; the online softmax must not."""
    q, k, v, do = _inputs(1, 1, 1, 40, 16, dtype)
    q = q * 40  # |S| up to ~1e3
    for t in (q, k, v):
        t.requires_grad_()
    out = tf.flash_attention(q, k, v, causal=True)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref64 = _naive_with_grads(q, k, v, do, True, torch.float64)
    ref32 = _naive_with_grads(q, k, v, do, True, torch.float32)
    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (out, *grads), ref64, ref32):
        check(name, got, r64, r32, ulps=32)  # near one-hot rows: fp16 rounding of P dominates


@pytest.mark.parity
def test_head_dim_not_a_power_of_two_is_padded():
    q, k, v, _ = _inputs(1, 2, 2, 33, 24, torch.float32)
    o = tf.flash_attention(q, k, v)
    ref64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    check("O", o, ref64, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("head_dim", [24, 40])
@pytest.mark.parametrize("n_ctx", [64, 70])
@pytest.mark.parametrize("causal", [False, True])
def test_unmasked_full_blocks_with_padded_head_dims(head_dim, n_ctx, causal):
    """Full key/query blocks load with no bounds mask, only the padding lanes of D masked: N = 64 is whole blocks
    of the interpreter tiles (no partial tail), N = 70 adds a tail; D = 24 and 40 pad to 32 and 64. The inputs are
    views into wider tensors whose extra columns are NaN, so a padding lane read without its mask poisons the
    result (0 · NaN = NaN). Forward and backward against float64 autograd, fp32."""

    def nan_padded(t):
        wide = torch.full((*t.shape[:-1], 2 * head_dim), float("nan"), dtype=t.dtype)
        wide[..., :head_dim] = t
        return wide[..., :head_dim]  # stride(-1) == 1, rows 2·D apart: the next D values in memory are NaN

    q, k, v, do = (nan_padded(t) for t in _inputs(1, 2, 1, n_ctx, head_dim, torch.float32))
    o, lse = tf.attention_forward(q, k, v, causal=causal)
    grads = tf.attention_backward(q, k, v, o, lse, do, causal=causal)
    ref64 = _naive_with_grads(q, k, v, do, causal, torch.float64)
    ref32 = _naive_with_grads(q, k, v, do, causal, torch.float32)
    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (o, *grads), ref64, ref32):
        check(name, got, r64, r32)


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


@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
def test_config_without_block_n_is_a_clear_error(kernel):
    """Defect 12: a config dict without BLOCK_N used to raise a bare KeyError."""
    q, k, v = _ok()
    o, lse = tf.attention_forward(q, k, v)
    bad = {"BLOCK_M": 32, "num_stages": 2}
    with pytest.raises(ValueError, match=f"{kernel} config .* is missing BLOCK_N"):
        if kernel == "fwd":
            tf.attention_forward(q, k, v, config=bad)
        else:
            tf.attention_backward(q, k, v, o, lse, o, **{f"{kernel}_config": bad})
    with pytest.raises(ValueError, match="is missing BLOCK_N"):
        tf.flash_attention(q, k, v, configs={kernel: bad})  # checked before the forward runs


def test_shared_memory_counts_the_real_element_size():
    """Defect 11: the pruner and the explicit-config check count 4 bytes per fp32 element, 2 per fp16/bf16.

    Independent arithmetic: the GPU default forward config (BLOCK_N 64, 3 stages) at D = 256 pipelines
    3 stages x (K and V) x 64 rows x 256 x 4 B = 393216 B in fp32, more than an H100's 227 KiB per block.
    """
    h100 = 227 * 1024
    cfg = tf.GPU_DEFAULT_CONFIGS["fwd"]
    assert tf.smem_estimate_bytes("fwd", 64, 64, 3, 256, 4) == 3 * 2 * 64 * 256 * 4 == 393216
    with pytest.raises(ValueError, match=r"needs ~384 KiB of shared memory .* allows 227 KiB"):
        tf.check_config("fwd", cfg, head_dim=256, dtype=torch.float32, smem_limit=h100)
    assert tf.check_config("fwd", cfg, head_dim=256, dtype=torch.float16, smem_limit=h100)["num_stages"] == 3
    assert tf.check_config("fwd", cfg, head_dim=64, dtype=torch.float32, smem_limit=h100)["BLOCK_N"] == 64
    for kernel in tf.KERNELS:
        space = tf.config_space(kernel, "full")
        for n_ctx, head_dim in [(4096, 128), (4096, 256)]:
            for dtype in (torch.float16, torch.float32):
                size = torch.empty((), dtype=dtype).element_size()
                q = torch.empty(1, 1, 1, 1, dtype=dtype)  # the pruner reads the element size from Q
                kept = tf._make_pruner(kernel)(space, {"Q": q, "N_CTX": n_ctx}, HEAD_DIM=head_dim)
                for c in kept:
                    m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
                    streamed = m if kernel == "dkdv" else n
                    assert c.num_stages * 2 * streamed * max(16, 1 << (head_dim - 1).bit_length()) * size <= (
                        tf.SMEM_LIMIT_BYTES_DEFAULT
                    ), (kernel, head_dim, dtype, tf.describe_config(c))
        kept16 = [c for c in space if tf.config_is_valid(kernel, c, 4096, 128, 2)]
        kept32 = [c for c in space if tf.config_is_valid(kernel, c, 4096, 128, 4)]
        assert set(map(tf.describe_config, kept32)) < set(map(tf.describe_config, kept16)), kernel


# ------------------------------------------------------------------------------------------------ autotuning
@pytest.mark.parametrize("mode", tf.AUTOTUNE_MODES)
@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
@pytest.mark.parametrize("n_ctx,head_dim", [(64, 16), (1000, 64), (4096, 128), (16384, 256)])
def test_pruned_config_space_is_legal_and_never_empty(mode, kernel, n_ctx, head_dim):
    space = tf.config_space(kernel, mode)
    kept = [c for c in space if tf.config_is_valid(kernel, c, n_ctx, head_dim)]
    for c in kept:
        m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        resident, streamed = (n, m) if kernel == "dkdv" else (m, n)
        assert resident % streamed == 0  # the causal two-stage split needs aligned tiles
    pruned = tf._make_pruner(kernel)(space, {"N_CTX": n_ctx}, HEAD_DIM=head_dim, CAUSAL=True)
    assert pruned, "pruning must leave at least one config"
    assert pruned == (kept[:1] if tf.AUTOTUNE_MODE == "off" else kept) or not kept
    if n_ctx <= 64:  # tiles longer than the sequence only compute padding
        assert all(max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= 64 for c in kept)


def test_autotune_volume_knobs():
    """small (default): <= 4 configs per kernel, the backward included; full: the 36-config product; off: the
    GPU default first. The env vars pick the mode; contradictions and typos are clear errors."""
    assert tf.AUTOTUNE_MODE in tf.AUTOTUNE_MODES
    for kernel in tf.KERNELS:
        assert 1 <= len(tf.config_space(kernel, "small")) <= 4
        assert len(tf.config_space(kernel, "full")) == 2 * 3 * 3 * 2  # tiles(6) x stages(3) x warps(2)
        first = tf.config_space(kernel, "off")[0]
        want = tf.GPU_DEFAULT_CONFIGS[kernel]
        assert (first.kwargs["BLOCK_M"], first.kwargs["BLOCK_N"], first.num_warps, first.num_stages) == (
            want["BLOCK_M"], want["BLOCK_N"], want["num_warps"], want["num_stages"]
        )  # fmt: skip
        for c in tf.config_space(kernel, "small"):  # every small config is a legal explicit config at D = 64
            explicit = {"BLOCK_M": c.kwargs["BLOCK_M"], "BLOCK_N": c.kwargs["BLOCK_N"]}
            tf.check_config(kernel, {**explicit, "num_warps": c.num_warps, "num_stages": c.num_stages}, 64,
                            smem_limit=tf.SMEM_LIMIT_BYTES_DEFAULT)  # fmt: skip
    env = tf.autotune_mode_from_env
    assert env({}) == "small" and env({"LLM_SCRATCH_AUTOTUNE": "off"}) == "off"
    assert env({"LLM_SCRATCH_FULL_AUTOTUNE": "1"}) == "full" == env({"LLM_SCRATCH_AUTOTUNE": "FULL"})
    with pytest.raises(ValueError, match="is not one of small, full, off"):
        env({"LLM_SCRATCH_AUTOTUNE": "fast"})
    with pytest.raises(ValueError, match="contradicts LLM_SCRATCH_AUTOTUNE=off"):
        env({"LLM_SCRATCH_FULL_AUTOTUNE": "1", "LLM_SCRATCH_AUTOTUNE": "off"})
    with pytest.raises(ValueError, match="unknown kernel"):
        tf.config_space("bwd")


def test_attention_flops_formula():
    # 4·B·H·N²·D forward, halved when causal, backward 2.5x the forward
    assert tf.attention_flops(2, 3, 5, 7, causal=False) == 4 * 2 * 3 * 25 * 7
    assert tf.attention_flops(2, 3, 5, 7, causal=True, mode="bwd") == 4 * 2 * 3 * 25 * 7 * 0.5 * 2.5
    with pytest.raises(ValueError, match="mode must be one of"):
        tf.attention_flops(1, 1, 1, 1, False, mode="both")


# ------------------------------------------------------------------------------------------------ GPU only
# One fixed config per kernel (no autotuning): each (D, causal, dtype) compiles once per kernel, and N cycles
# through short, odd, long; GQA alternates. 24 cases instead of the full product.
GPU_MATRIX = [
    ((2, 8, 8) if i % 2 else (1, 8, 2)) + (N, D, causal, dtype)
    for i, (D, causal, dtype) in enumerate(
        (D, c, dt) for D in (16, 64, 128) for c in (False, True) for dt in (torch.float16, torch.bfloat16)
    )
    for N in ((1, 1000) if i % 3 == 0 else (257, 4096) if i % 3 == 1 else (17, 4096))
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_MATRIX, ids=_ids)
def test_gpu_matches_sdpa_bf16_fp16_long_sequences(case):
    """The matrix with one fixed config per kernel (autotuning every key would take far too long)."""
    B, H, H_kv, N, D, causal, dtype = case
    q, k, v, do = _inputs(B, H, H_kv, N, D, dtype, device="cuda")
    cfg = tf.GPU_DEFAULT_CONFIGS
    out, lse = tf.attention_forward(q, k, v, causal=causal, config=cfg["fwd"])
    dq, dk, dv = tf.attention_backward(
        q, k, v, out, lse, do, causal=causal, dkdv_config=cfg["dkdv"], dq_config=cfg["dq"]
    )
    ref64 = _naive_with_grads(q, k, v, do, causal, torch.float64)
    ulps = 16 if N >= 1000 else 8  # long rows: more fp16/bf16 roundings of P per output
    for name, got, want in zip(("O", "dQ", "dK", "dV"), (out, dq, dk, dv), ref64):
        check(name, got, want, ulps=ulps)


@pytest.mark.gpu
def test_gpu_fp32_is_exact_not_tf32():
    q, k, v, _ = _inputs(1, 4, 4, 512, 64, torch.float32, device="cuda")
    got = tf.flash_attention(q, k, v, causal=True, configs=tf.GPU_DEFAULT_CONFIGS)
    ref64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        ref32 = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    check("O", got, ref64, ref32)  # TF32 products would be ~1e-3 off: far outside this bound


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_autotuned_path_matches_sdpa(causal):
    """Autotuning itself, on two keys only (N bucket 1024, D 64, causal or not)."""
    q, k, v, do = _inputs(2, 4, 4, 1000, 64, torch.float16, device="cuda")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = tf.flash_attention(q, k, v, causal=causal)  # the first call autotunes
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref64 = _naive_with_grads(q, k, v, do, causal, torch.float64)
    for name, got, want in zip(("O", "dQ", "dK", "dV"), (out, *grads), ref64):
        check(name, got, want, ulps=16)
    chosen = tf.best_configs()
    assert all(chosen[kern] for kern in tf.KERNELS), "every kernel cached a tuned choice"
    small = {tf.describe_config(c) for c in tf.config_space("fwd")}
    assert set(chosen["fwd"].values()) <= small, "the choice comes from the configured space"


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [24, 80])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_padded_head_dims(head_dim, causal):
    """Head dims padded to a power of two: the padding lanes must read as zeros on real hardware too."""
    q, k, v, do = _inputs(1, 4, 2, 300, head_dim, torch.float16, device="cuda")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = tf.flash_attention(q, k, v, causal=causal, configs=tf.GPU_DEFAULT_CONFIGS)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref64 = _naive_with_grads(q, k, v, do, causal, torch.float64)
    for name, got, want in zip(("O", "dQ", "dK", "dV"), (out, *grads), ref64):
        check(name, got, want)


@pytest.mark.gpu
def test_gpu_impossible_explicit_config_is_a_project_error():
    """fp32 at D = 256 with the default forward config needs ~384 KiB of shared memory: refused before launch."""
    q, k, v, _ = _inputs(1, 1, 1, 128, 256, torch.float32, device="cuda")
    with pytest.raises(ValueError, match="KiB of shared memory"):
        tf.attention_forward(q, k, v, config=tf.GPU_DEFAULT_CONFIGS["fwd"])
