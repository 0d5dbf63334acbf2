"""Softmax variants, logsumexp, block matmul, hand-written gradients and the byte counts of chapter 4 (part 1).

References: ``torch.softmax``, ``torch.logsumexp``, ``@``, autograd, ``torch.autograd.functional.jacobian``, and an
independent tile-by-tile byte accounting for the traffic formulas.
"""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from tests.numerics import assert_close_scaled, assert_close_to_fp64
from triton_flash_attention_scratch.attention_torch import (
    attention_bytes_naive,
    attention_bytes_tiled,
    block_matmul,
    logsumexp,
    matmul_backward,
    naive_softmax,
    online_logsumexp,
    online_softmax,
    online_softmax_trace,
    safe_softmax,
    softmax_backward,
    softmax_jacobian,
)


@pytest.mark.parity
@pytest.mark.parametrize("n", [1, 17, 100, 257])
@pytest.mark.parametrize("block_size", [1, 3, 64])
def test_softmaxes_match_torch(n, block_size):
    x = torch.randn(4, n) * 3
    p64, p32 = torch.softmax(x.double(), dim=-1), torch.softmax(x, dim=-1)
    for name, fn in (("naive", naive_softmax), ("safe", safe_softmax)):
        assert_close_to_fp64(fn(x), p64, p32, what=name)
    assert_close_to_fp64(online_softmax(x, block_size), p64, p32, what="online")
    l64, l32 = torch.logsumexp(x.double(), -1), torch.logsumexp(x, -1)
    assert_close_to_fp64(logsumexp(x), l64, l32, what="logsumexp")
    assert_close_to_fp64(online_logsumexp(x, block_size), l64, l32, what="online logsumexp")


def test_softmax_other_dim_and_large_logits():
    x = torch.randn(5, 6, 7) * 3
    assert_close_to_fp64(safe_softmax(x, dim=1), torch.softmax(x.double(), dim=1), torch.softmax(x, dim=1))
    big = torch.tensor([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1003.0]])
    assert torch.isnan(naive_softmax(big)).all()
    p64, p32 = torch.softmax(big.double(), -1), torch.softmax(big, -1)
    assert_close_to_fp64(safe_softmax(big), p64, p32, what="safe")
    assert_close_to_fp64(online_softmax(big), p64, p32, what="online")
    assert_close_to_fp64(logsumexp(big), torch.logsumexp(big.double(), -1), torch.logsumexp(big, -1))
    half = torch.tensor([12.0, 11.0, 10.0], dtype=torch.float16)
    assert not torch.isfinite(naive_softmax(half)).all()
    # fp16 softmax: a few fp16 ulp of the largest probability (exact values from the float64 softmax)
    assert_close_scaled(safe_softmax(half).double(), torch.softmax(half.double(), -1), ulps=4, dtype=torch.float16)


@pytest.mark.parametrize("block_size", [1, 4])
def test_online_softmax_invariant_each_step(block_size):
    x = torch.randn(3, 23) * 4
    _, ms, ls = online_softmax_trace(x, block_size)
    assert len(ms) == math.ceil(23 / block_size)
    for t, (m, l) in enumerate(zip(ms, ls)):
        prefix = x[:, : (t + 1) * block_size]
        assert torch.equal(m, prefix.max(dim=-1).values)  # a max is exact
        # l_j = Σ e^(x_i - m_j)  <=>  log l_j + m_j = logsumexp(prefix)
        assert_close_to_fp64(torch.log(l) + m, torch.logsumexp(prefix.double(), -1), torch.logsumexp(prefix, -1))


@pytest.mark.parametrize(
    "m,k,n,bm,bn,bk", [(1, 1, 1, 4, 4, 4), (37, 23, 41, 16, 8, 5), (64, 64, 64, 32, 32, 32), (5, 100, 3, 2, 2, 7)]
)
def test_block_matmul_matches_matmul(m, k, n, bm, bn, bk):
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert_close_to_fp64(block_matmul(a, b, bm, bn, bk), a.double() @ b.double(), a @ b)


def test_block_matmul_batched_and_errors():
    a, b = torch.randn(2, 1, 9, 7), torch.randn(3, 7, 5)
    assert_close_to_fp64(block_matmul(a, b, 4, 4, 3), a.double() @ b.double(), a @ b)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        block_matmul(torch.randn(3, 4), torch.randn(5, 6), 2, 2, 2)
    with pytest.raises(ValueError, match="block_k must be a positive integer"):
        block_matmul(torch.randn(3, 4), torch.randn(4, 6), 2, 2, 0)


def test_matmul_backward_matches_autograd():
    a = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 3, dtype=torch.float64)
    (a @ b).backward(g)
    da, db = matmul_backward(a.detach(), b.detach(), g)
    torch.testing.assert_close(da, a.grad)
    torch.testing.assert_close(db, b.grad)


def test_softmax_jacobian_and_backward():
    x = torch.randn(6, dtype=torch.float64)
    p = torch.softmax(x, 0)
    torch.testing.assert_close(softmax_jacobian(p), jacobian(lambda z: torch.softmax(z, 0), x))
    s = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    out = torch.softmax(s, -1)
    dp = torch.randn(4, 9, dtype=torch.float64)
    out.backward(dp)
    torch.testing.assert_close(softmax_backward(out.detach(), dp), s.grad)
    with pytest.raises(ValueError, match="one row"):
        softmax_jacobian(torch.rand(2, 3))


def _count_naive(B, H, N, D, nbytes):
    """Sum the sizes of every tensor each of the three kernels of standard attention reads and writes."""
    q = k = v = o = torch.empty(B, H, N, D, dtype=torch.float16 if nbytes == 2 else torch.float32)
    s = p = torch.empty(B, H, N, N, dtype=q.dtype)
    kernels = [([q, k], [s]), ([s], [p]), ([p, v], [o])]  # (reads, writes) of S = QKᵀ, P = softmax S, O = PV
    return sum(t.nbytes for reads, writes in kernels for t in reads + writes)


def _count_tiled(B, H, N, D, nbytes, block_q):
    """Walk the FlashAttention-2 forward's loops and add up the bytes of every tile loaded or stored."""
    total = 0
    for q0 in range(0, N, block_q):
        rows = min(block_q, N - q0)
        total += rows * D * nbytes  # load Q_i
        for k0 in range(0, N, 64):  # the key block size does not change the traffic
            cols = min(64, N - k0)
            total += 2 * cols * D * nbytes  # load K_j and V_j
        total += rows * D * nbytes + rows * 4  # store O_i and L_i (fp32)
    return B * H * total


@pytest.mark.parametrize("N", [1, 17, 100, 257, 1024])
@pytest.mark.parametrize("nbytes", [2, 4])
def test_traffic_formulas_match_tile_accounting(N, nbytes):
    B, H, D = 2, 3, 64
    assert attention_bytes_naive(B, H, N, D, nbytes) == _count_naive(B, H, N, D, nbytes)
    assert attention_bytes_naive(B, H, N, D, nbytes) == B * H * (4 * N * D + 4 * N * N) * nbytes
    for block_q in (16, 64, 128):
        assert attention_bytes_tiled(B, H, N, D, nbytes, block_q=block_q) == _count_tiled(B, H, N, D, nbytes, block_q)
