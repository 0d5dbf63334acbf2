"""``tma=True``: the streamed tiles through tensor descriptors (Hopper's Tensor Memory Accelerator).

On the CPU the interpreter emulates the descriptors (``tl.make_tensor_descriptor`` and its ``load``, with the
hardware's zero fill outside the matrix), so the same kernels are checked against float64 autograd here; the
compiled code is checked ahead of time for sm_90 (the loads really become ``cp.async.bulk.tensor``), and the ``gpu``
test runs it on a Hopper GPU. Errors for what a descriptor cannot address are raised before any launch.
"""

import pytest
import torch

from tests.triton_flash_attention_scratch.test_triton_flash import DEV, _inputs, _naive_with_grads, check
from triton_flash_attention_scratch import triton_flash as tf

# (B, H, H_kv, N, D, causal, dtype): GQA with a partial last block and padded D (24 -> 32), whole blocks only
# (N = 64 under the interpreter's 32x16 / 16x32 tiles), one token, fp32 and fp16.
CASES = [
    (1, 4, 2, 70, 24, True, torch.float16),
    (2, 2, 2, 64, 32, False, torch.float32),
    (1, 2, 1, 100, 40, False, torch.float16),
    (1, 2, 2, 33, 64, True, torch.float32),
    (1, 1, 1, 1, 16, False, torch.float32),
]


def _ids(case):
    B, H, H_kv, N, D, causal, dtype = case
    return f"B{B}-H{H}-Hkv{H_kv}-N{N}-D{D}-{'causal' if causal else 'full'}-{str(dtype).split('.')[-1]}"


def _nan_padded(t):
    """``t`` as a view into a tensor twice as wide whose extra columns are NaN: a descriptor whose shape let a
    padding lane (D..BLOCK_D) read the next values in memory would poison the result."""
    D = t.shape[-1]
    wide = torch.full((*t.shape[:-1], 2 * D), float("nan"), dtype=t.dtype, device=t.device)
    wide[..., :D] = t
    return wide[..., :D]


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_tma_path_matches_float64_references(case):
    B, H, H_kv, N, D, causal, dtype = case
    q, k, v, do = (_nan_padded(t) for t in _inputs(B, H, H_kv, N, D, dtype))
    o, lse = tf.attention_forward(q, k, v, causal=causal, tma=True)
    grads = tf.attention_backward(q, k, v, o, lse, do, causal=causal, tma=True)
    ref64 = _naive_with_grads(q, k, v, do, causal, torch.float64)
    ref32 = _naive_with_grads(q, k, v, do, causal, torch.float32)
    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (o, *grads), ref64, ref32):
        check(name, got, r64, r32)
    # same arithmetic on the same tiles, only the loads differ: under the interpreter the results are identical
    o_ptr, lse_ptr = tf.attention_forward(q, k, v, causal=causal)
    grads_ptr = tf.attention_backward(q, k, v, o_ptr, lse_ptr, do, causal=causal)
    for name, a, b in zip(("O", "L", "dQ", "dK", "dV"), (o, lse, *grads), (o_ptr, lse_ptr, *grads_ptr)):
        assert torch.equal(a, b), name


def test_tma_autograd_with_strided_gqa_inputs():
    """``flash_attention(tma=True)`` through autograd, q in the (B, N, H, D) layout a projection produces (a
    transposed view: head stride D, row stride H·D), against float64 SDPA with the K/V heads repeated."""
    B, H, H_kv, N, D = 2, 4, 2, 45, 32
    q = torch.randn(B, N, H, D, device=DEV).transpose(1, 2).requires_grad_()
    k = torch.randn(B, H_kv, N, D, device=DEV, requires_grad=True)
    v = torch.randn(B, H_kv, N, D, device=DEV, requires_grad=True)
    do = torch.randn(B, H, N, D, device=DEV)
    o = tf.flash_attention(q, k, v, causal=True, tma=True)
    grads = torch.autograd.grad(o, (q, k, v), do)

    def sdpa(dtype):
        q_, k_, v_ = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(
            q_, k_.repeat_interleave(H // H_kv, 1), v_.repeat_interleave(H // H_kv, 1), is_causal=True
        )
        return [out.detach(), *torch.autograd.grad(out, (q_, k_, v_), do.to(dtype))]

    for name, got, r64, r32 in zip(("O", "dQ", "dK", "dV"), (o, *grads), sdpa(torch.float64), sdpa(torch.float32)):
        check(name, got, r64, r32)


def test_tma_refuses_what_a_descriptor_cannot_address(monkeypatch):
    # rows 40 bytes apart (D = 20 in fp16): TMA needs every stride but the last to be a multiple of 16 bytes
    q, k, v = (torch.randn(1, 2, 8, 20, dtype=torch.float16, device=DEV) for _ in range(3))
    with pytest.raises(ValueError, match="16-byte aligned rows, but q"):
        tf.flash_attention(q, k, v, tma=True)
    tf.flash_attention(q, k, v)  # the pointer path takes any head dim
    # a start 8 bytes off a 16-byte boundary (a view that begins two fp32 values into its storage)
    flat = torch.randn(2 * 8 * 16 + 2, device=DEV)
    k_off = flat[2:].view(1, 2, 8, 16)
    q, v = (torch.randn(1, 2, 8, 16, device=DEV) for _ in range(2))
    with pytest.raises(ValueError, match="16-byte aligned rows, but k"):
        tf.attention_forward(q, k_off, v, tma=True)
    with pytest.raises(TypeError, match="tma must be True or False"):
        tf.flash_attention(q, q, v, tma="yes")
    with pytest.raises(TypeError, match="tma must be True or False"):
        tf.attention_forward(q, q, v, tma=1)
    # a batch of one: its (huge, odd) batch stride is never stepped over, so it does not count
    one = torch.randn(3, 2, 8, 16, device=DEV)[1:2]
    assert tf.check_tma(True, {"q": one.as_strided(one.shape, (999, 128, 16, 1), one.storage_offset())}) is True
    # a GPU without the unit (faked: the check is plain Python before any launch)
    monkeypatch.setattr(tf, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"NVIDIA A100-SXM4-80GB has 8\.0: use tma=False"):
        tf.check_tma(True, {"q": q})
    assert tf.check_tma(False, {"q": q}) is False


def test_tma_backward_copies_a_misaligned_incoming_gradient():
    """The incoming gradient can be any view (here one starting 2 bytes off): the backward copies it instead of
    refusing, and the result is that of the aligned gradient."""
    q, k, v, do = _inputs(1, 2, 2, 40, 16, torch.float16)
    o, lse = tf.attention_forward(q, k, v, tma=True)
    flat = torch.empty(do.numel() + 1, dtype=do.dtype, device=DEV)
    do_off = flat[1:].view_as(do)
    do_off.copy_(do)
    assert do_off.data_ptr() % 16
    got = tf.attention_backward(q, k, v, o, lse, do_off, tma=True)
    want = tf.attention_backward(q, k, v, o, lse, do, tma=True)
    for name, a, b in zip(("dQ", "dK", "dV"), got, want):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_tma_compiles_to_tensor_memory_accelerator_copies_on_sm90():
    """Ahead of time for sm_90, bf16, D = 128, causal, GPU_DEFAULT_CONFIGS: the K/V (forward, dQ) and Q/dO (dK/dV)
    tiles arrive by ``cp.async.bulk.tensor`` awaited on mbarriers, the descriptors take global scratch, nothing
    spills; the pointer build of the same kernel has no TMA copy. Asking for TMA on sm_80 is refused."""
    jobs = [{"kernel": k, "arch": 90, "dtype": "bfloat16", "head_dim": 128, "causal": True, "tma": True}
            for k in ("fwd", "dkdv", "dq")] + [{"kernel": "fwd", "arch": 90, "dtype": "bfloat16", "head_dim": 128,
                                                "causal": True}]  # fmt: skip
    *tma, ptr = tf.compile_ahead_of_time(jobs)
    for f in tma:
        what = f"{f['kernel']} {f['config']}"
        assert f["use_tma"] and f["config"] == tf.GPU_DEFAULT_CONFIGS[f["kernel"]], what
        assert f["tma"] > 0 and f["mbarrier_waits"] > 0 and f["wgmma"] > 0, what
        assert f["global_scratch_bytes"] >= 2 * 128, what  # two 128-byte descriptors per program
        assert f["spill_stores"] == 0, what
        if f["kernel"] != "dkdv":  # the dK/dV kernel still loads its L and D vectors with cp.async
            assert f["cp_async"] == 0, what
    assert not ptr["use_tma"] and ptr["tma"] == 0 and ptr["cp_async"] > 0 and ptr["global_scratch_bytes"] == 0
    with pytest.raises(ValueError, match="tma=True needs arch 90"):
        tf.compile_ahead_of_time([{"kernel": "fwd", "arch": 80, "tma": True}])


@pytest.mark.gpu
def test_gpu_tma_matches_float64():
    """On a Hopper GPU: GQA, N = 1000 (a partial last block of every tile), D = 128, causal, bf16."""
    if torch.cuda.get_device_capability() < tf.TMA_MIN_CAPABILITY:
        pytest.skip("TMA needs compute capability 9.0 or newer")
    q, k, v, do = _inputs(1, 8, 2, 1000, 128, torch.bfloat16, device="cuda")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = tf.flash_attention(q, k, v, causal=True, configs=tf.GPU_DEFAULT_CONFIGS, tma=True)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref64 = _naive_with_grads(q, k, v, do, True, torch.float64)
    for name, got, want in zip(("O", "dQ", "dK", "dV"), (out, *grads), ref64):
        check(name, got, want, ulps=16)
