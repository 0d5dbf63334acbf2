"""Attention and flash attention in plain PyTorch: the tested reference for every step of chapter 4.

Every algorithm the Triton kernels of part 2 implement exists here first, written as readable PyTorch with
loops over *blocks* (never over single elements), so it runs in well under a second at N = 257 on a CPU:

* ``naive_attention``                      O = softmax(Q Kᵀ · sm_scale + mask) V, with S and P materialized
* ``naive_softmax`` / ``safe_softmax``      e^x / Σ e^x, and the same after subtracting the row max
* ``online_softmax``                       one pass with a running max m and running sum l
* ``logsumexp`` / ``online_logsumexp``     L = m + log Σ e^(x - m)
* ``block_matmul``                         C = A B computed tile by tile
* ``flash_attention_forward_simple``       the tiled forward written as FlashAttention (v1) Algorithm 1
* ``flash_attention_forward``              FlashAttention-2 Algorithm 1, returns (O, L) with L = m + log(l)
* ``matmul_backward`` / ``softmax_backward`` / ``naive_attention_backward``  the hand-derived gradients
* ``flash_attention_backward``             FlashAttention-2 backward: P recomputed from L, D = rowsum(dO ∘ O)
* ``FlashAttentionTorch`` / ``flash_attention_torch``  the two wrapped in a ``torch.autograd.Function``

Shapes follow the kernels: ``q`` is (B, H, N, D), ``k`` and ``v`` are (B, H_kv, N_kv, D) where H_kv divides H
(grouped-query attention: query head h reads key/value head h // (H // H_kv)). Causal attention needs
N == N_kv (query i sees keys 0..i). Half-precision inputs are computed in float32 (as the kernels accumulate)
and the output is cast back; float64 inputs stay float64 so ``gradcheck`` is meaningful.

References: Dao et al., "FlashAttention" (2022), Algorithm 1; Dao, "FlashAttention-2" (2023), Algorithms 1-2;
Milakov & Gimelshein, "Online normalizer calculation for softmax" (2018).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable

import torch

NEG_INF = float("-inf")


# ============================================================================================ input checks
def _check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[int, ...]:
    """Validate shapes; return (B, H, N, D, H_kv, N_kv). Bad input gets a message naming the problem."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, heads, seq_len, head_dim), got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    B, H, N, D = q.shape
    Bk, H_kv, N_kv, Dk = k.shape
    if Bk != B:
        raise ValueError(f"batch size of q ({B}) and k/v ({Bk}) differ")
    if Dk != D:
        raise ValueError(f"head_dim of q ({D}) and k/v ({Dk}) differ")
    if N == 0 or N_kv == 0:
        raise ValueError(f"sequence length must be at least 1, got q: {N}, k/v: {N_kv}")
    if D == 0:
        raise ValueError("head_dim must be at least 1")
    if H_kv == 0 or H % H_kv != 0:
        raise ValueError(f"number of query heads ({H}) must be a multiple of key/value heads ({H_kv})")
    if causal and N != N_kv:
        raise ValueError(f"causal attention needs equal query and key lengths, got {N} and {N_kv}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    return B, H, N, D, H_kv, N_kv


def _check_blocks(**blocks: int) -> None:
    for name, size in blocks.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")


def _scale(sm_scale: float | None, D: int) -> float:
    return 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for gradcheck); everything else accumulates in float32 like the kernels."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _group(q: torch.Tensor, H_kv: int) -> torch.Tensor:
    """(B, H, N, D) -> (B, H_kv, G, N, D) with G = H // H_kv query heads per key/value head."""
    B, H, N, D = q.shape
    return q.reshape(B, H_kv, H // H_kv, N, D)


def _score_tile(qi: torch.Tensor, kj: torch.Tensor, scale: float, causal: bool, q0: int, k0: int) -> torch.Tensor:
    """S = Q_i K_jᵀ · scale for the tile whose first query is q0 and first key k0, with S = -inf where key j is in
    the future of query i (causal). Tiles on or below the diagonal need no mask; the whole matrix is one tile."""
    s = (qi @ kj.transpose(-2, -1)) * scale  # (…, bq, D) @ (…, D, bk) -> (…, bq, bk)
    bq, bk = s.shape[-2:]
    if causal and k0 + bk - 1 > q0:  # some key of the tile lies after some query of it
        rows = torch.arange(q0, q0 + bq, device=s.device)
        cols = torch.arange(k0, k0 + bk, device=s.device)
        s = s.masked_fill(cols[None, :] > rows[:, None], NEG_INF)
    return s


def _prepare_tiled(q, k, v, causal, sm_scale, block_q, block_k):
    """Checks, scale, compute dtype of the tiled algorithms; Q as (B, H_kv, G, N, D), K/V as (B, H_kv, 1, N_kv, D)."""
    dims = _check_attention_inputs(q, k, v, causal)
    _check_blocks(block_q=block_q, block_k=block_k)
    cdt = _compute_dtype(q.dtype)
    H_kv = dims[4]
    # (B, H, N, D) -> (B, H_kv, G, N, D);  (B, H_kv, N_kv, D) -> (B, H_kv, 1, N_kv, D), broadcast over the G heads
    return dims, _scale(sm_scale, dims[3]), cdt, _group(q, H_kv).to(cdt), k.unsqueeze(2).to(cdt), v.unsqueeze(2).to(cdt)


# ============================================================================================ attention
def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, sm_scale: float | None = None
) -> torch.Tensor:
    """Standard attention with the full score matrix in memory.

    S = Q Kᵀ · sm_scale            (B, H, N, N_kv)
    S_ij = -inf where j > i         (causal only)
    P = softmax(S) row-wise         (B, H, N, N_kv)
    O = P V                         (B, H, N, D)

    sm_scale defaults to 1/sqrt(D). Grouped-query: query head h uses key/value head h // (H // H_kv).
    """
    B, H, N, D, H_kv, N_kv = _check_attention_inputs(q, k, v, causal)
    scale = _scale(sm_scale, D)
    qg = _group(q, H_kv)  # (B, H, N, D) -> (B, H_kv, G, N, D)
    kg, vg = k.unsqueeze(2), v.unsqueeze(2)  # (B, H_kv, N_kv, D) -> (B, H_kv, 1, N_kv, D), broadcast over G
    s = _score_tile(qg, kg, scale, causal, 0, 0)  # (B, H_kv, G, N, N_kv), -inf where j > i if causal
    p = safe_softmax(s, dim=-1)
    o = p @ vg  # (B, H_kv, G, N, D)
    return o.reshape(B, H, N, D)


# ============================================================================================ softmax
def naive_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax(x)_i = e^(x_i) / Σ_j e^(x_j). Overflows once x > ~88.7 (fp32) or ~11.1 (fp16): inf / inf = nan."""
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def safe_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax(x)_i = e^(x_i - m) / Σ_j e^(x_j - m) with m = max_j x_j: the same value, every exponent ≤ 0.

    Three passes over the row: max, sum, normalize. A row that is entirely -inf (fully masked) has no softmax;
    it returns nan there, like ``torch.softmax``.
    """
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # all -inf row: e^(-inf - 0) = 0, 0/0 = nan
    e = torch.exp(x - m)
    return e / e.sum(dim=dim, keepdim=True)


def online_softmax_trace(x: torch.Tensor, block_size: int = 1) -> tuple[torch.Tensor, list[torch.Tensor], list]:
    """Row-wise softmax over the last dim with ONE pass for the normalizer; also return the (m, l) trace.

    Walk the row in blocks x[:, j0:j1] (``block_size=1`` is the element-by-element version) keeping

        m_j = max(m_{j-1}, max(x_block))                                   running max
        l_j = l_{j-1} · e^(m_{j-1} - m_j) + Σ_{i in block} e^(x_i - m_j)    running sum, rescaled to the new max

    starting from m_0 = -inf, l_0 = 0. Invariant after the block ending at column j (proof by induction: the
    rescale factor turns every old term e^(x_i - m_{j-1}) into e^(x_i - m_j)):

        m_j = max_{i < j} x_i        and        l_j = Σ_{i < j} e^(x_i - m_j)

    so at the end p_i = e^(x_i - m_N) / l_N is exactly the safe softmax. Returns (p, ms, ls) where ms[t], ls[t]
    are m and l (shape x.shape[:-1]) after block t.
    """
    _check_blocks(block_size=block_size)
    n = x.shape[-1]
    if n == 0:
        raise ValueError("online softmax needs at least one column")
    m = torch.full(x.shape[:-1], NEG_INF, dtype=x.dtype, device=x.device)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    ms, ls = [], []
    for j0 in range(0, n, block_size):
        xb = x[..., j0 : j0 + block_size]
        m_new = torch.maximum(m, xb.amax(dim=-1))
        m_ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)  # still all -inf so far
        l = l * torch.exp(m - m_ref) + torch.exp(xb - m_ref[..., None]).sum(dim=-1)
        m = m_new
        ms.append(m)
        ls.append(l)
    p = torch.exp(x - m[..., None]) / l[..., None]
    return p, ms, ls


def online_softmax(x: torch.Tensor, block_size: int = 1) -> torch.Tensor:
    """Softmax over the last dim via the running max / running sum (see ``online_softmax_trace``)."""
    return online_softmax_trace(x, block_size)[0]


def logsumexp(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """L = log Σ_j e^(x_j) = m + log Σ_j e^(x_j - m) with m = max_j x_j (finite for any finite x)."""
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return (m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))).squeeze(dim)


def online_logsumexp(x: torch.Tensor, block_size: int = 1) -> torch.Tensor:
    """L = m_N + log(l_N) from one online pass: the only statistic flash attention keeps per query row."""
    _, ms, ls = online_softmax_trace(x, block_size)
    return ms[-1] + torch.log(ls[-1])


# ============================================================================================ block matmul
def block_matmul(a: torch.Tensor, b: torch.Tensor, block_m: int, block_n: int, block_k: int) -> torch.Tensor:
    """C = A B with A (…, M, K), B (…, K, N), computed one (block_m × block_n) tile of C at a time.

        C[i0:i1, j0:j1] = Σ_{k0} A[i0:i1, k0:k1] · B[k0:k1, j0:j1]

    Ragged last tiles (M, N, K not multiples of the blocks) are simply smaller slices; a GPU kernel would
    instead load full tiles with a bounds mask and pad with zeros, which adds nothing to the sum.
    """
    _check_blocks(block_m=block_m, block_n=block_n, block_k=block_k)
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"block_matmul needs matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    M, K = a.shape[-2:]
    K2, N = b.shape[-2:]
    if K != K2:
        raise ValueError(f"inner dimensions differ: A is {tuple(a.shape)}, B is {tuple(b.shape)}")
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    c = torch.zeros(*batch, M, N, dtype=torch.result_type(a, b), device=a.device)
    for i0 in range(0, M, block_m):
        for j0 in range(0, N, block_n):
            acc = torch.zeros(*batch, min(block_m, M - i0), min(block_n, N - j0), dtype=c.dtype, device=c.device)
            for k0 in range(0, K, block_k):
                acc += a[..., i0 : i0 + block_m, k0 : k0 + block_k] @ b[..., k0 : k0 + block_k, j0 : j0 + block_n]
            c[..., i0 : i0 + block_m, j0 : j0 + block_n] = acc
    return c


# ============================================================================================ flash forward
def flash_attention_forward_simple(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """The tiled forward as a readable loop, in the order of FlashAttention (v1) Algorithm 1.

    Outer loop over key/value blocks j, inner loop over query blocks i. Every query row keeps its running
    max m_i, running sum l_i and an output O_i that is *always normalized* (divided by l_i). For a tile:

        S = Q_i K_jᵀ · sm_scale,   m̃ = rowmax(S),   P̃ = e^(S - m̃),   l̃ = rowsum(P̃)
        m_new = max(m_i, m̃),       l_new = e^(m_i - m_new) l_i + e^(m̃ - m_new) l̃
        O_i  ← (l_i e^(m_i - m_new) O_i + e^(m̃ - m_new) P̃ V_j) / l_new

    Only an N × D output and two length-N vectors live in memory besides one block_q × block_k tile.
    """
    (B, H, N, D, H_kv, N_kv), scale, cdt, qg, kg, vg = _prepare_tiled(q, k, v, causal, sm_scale, block_q, block_k)
    o = torch.zeros_like(qg)
    m = torch.full(qg.shape[:-1], NEG_INF, dtype=cdt, device=q.device)  # (B, H_kv, G, N)
    l = torch.zeros(qg.shape[:-1], dtype=cdt, device=q.device)
    for k0 in range(0, N_kv, block_k):
        k1 = min(k0 + block_k, N_kv)
        kj, vj = kg[..., k0:k1, :], vg[..., k0:k1, :]
        for q0 in range(0, N, block_q):
            q1 = min(q0 + block_q, N)
            if causal and k0 > q1 - 1:  # every key of this block is in the future of every query
                continue
            s = _score_tile(qg[..., q0:q1, :], kj, scale, causal, q0, k0)  # (B, H_kv, G, bq, bk)
            m_tile = s.amax(dim=-1)  # (…, bq); -inf for a row whose keys are all masked in this tile
            m_tile_safe = torch.where(torch.isneginf(m_tile), torch.zeros_like(m_tile), m_tile)
            p_tile = torch.exp(s - m_tile_safe[..., None])
            l_tile = p_tile.sum(dim=-1)
            m_i, l_i = m[..., q0:q1], l[..., q0:q1]
            m_new = torch.maximum(m_i, m_tile)  # finite: key 0 is always visible
            alpha = torch.exp(m_i - m_new)  # rescale of the old statistics
            beta = torch.exp(m_tile - m_new)  # rescale of the new tile
            l_new = alpha * l_i + beta * l_tile
            o_sum = (l_i * alpha)[..., None] * o[..., q0:q1, :] + beta[..., None] * (p_tile @ vj)  # unnormalized
            o[..., q0:q1, :] = o_sum / l_new[..., None]
            m[..., q0:q1], l[..., q0:q1] = m_new, l_new
    return o.reshape(B, H, N, D).to(q.dtype)


def flash_forward_row_trace(
    q_row: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_k: int, sm_scale: float | None = None
) -> list[dict]:
    """The FlashAttention-2 forward for ONE query row q (D,) over keys/values k, v (N, D), block by block.

    One entry per key block j, with the state *before* and *after* folding it in::

        s_j    = K_j q · sm_scale                       (block_k scores)
        m_new  = max(m, max s_j)        alpha = e^(m - m_new)       (rescale of what was accumulated)
        l      = alpha · l + Σ e^(s_j - m_new)
        õ      = alpha · õ + Σ_t e^(s_jt - m_new) V_jt                (unnormalised output, (D,))

    After the last block, o = õ / l. The running values are exactly the softmax statistics of the keys seen so far:
    m = their max, l = Σ e^(s - m), õ / l = softmax(s_prefix) V_prefix — which the lesson and the tests check.
    """
    if q_row.dim() != 1 or k.dim() != 2 or v.shape != k.shape or k.shape[1] != q_row.shape[0]:
        raise ValueError(f"q_row must be (D,), k and v (N, D); got {tuple(q_row.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")  # fmt: skip
    _check_blocks(block_k=block_k)
    scale = _scale(sm_scale, q_row.shape[0])
    m = torch.tensor(float("-inf"), dtype=q_row.dtype)
    l = torch.zeros((), dtype=q_row.dtype)  # noqa: E741 - the paper's symbol
    o = torch.zeros_like(q_row)
    steps = []
    for start in range(0, k.shape[0], block_k):
        kj, vj = k[start : start + block_k], v[start : start + block_k]
        s = kj @ q_row * scale  # (block_k, D) @ (D,) -> (block_k,)
        m_new = torch.maximum(m, s.max())
        alpha = torch.exp(m - m_new)  # e^(-inf) = 0 on the first block: nothing to rescale yet
        p = torch.exp(s - m_new)
        step = {"keys": (start, start + kj.shape[0]), "m_before": m, "l_before": l, "o_before": o,
                "scores": s, "m_new": m_new, "alpha": alpha}  # fmt: skip
        l = alpha * l + p.sum()  # noqa: E741
        o = alpha * o + p @ vj  # (block_k,) @ (block_k, D) -> (D,)
        m = m_new
        step.update({"m_after": m, "l_after": l, "o_after": o})
        steps.append(step)
    return steps


def flash_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention-2 forward (Algorithm 1): returns O (B, H, N, D) and L = m + log(l) (B, H, N), natural log.

    Outer loop over query blocks Q_i (on a GPU: one program per block, in parallel). For each, start from
    m = -inf, l = 0, Õ = 0 and walk the key/value blocks j (causal: only those with a key ≤ the last query):

        S = Q_i K_jᵀ · sm_scale                  (bq, bk)
        m_new = max(m, rowmax(S))
        P̃ = e^(S - m_new)                        unnormalized probabilities of this tile
        l  = e^(m - m_new) · l + rowsum(P̃)
        Õ  = e^(m - m_new) · Õ + P̃ V_j            still unnormalized
        m  = m_new

    then O_i = Õ / l once at the end (v1 divided at every step) and L_i = m + log(l) = logsumexp(S_i row),
    which is all the backward pass needs to rebuild P = e^(S - L).
    """
    (B, H, N, D, H_kv, N_kv), scale, cdt, qg, kg, vg = _prepare_tiled(q, k, v, causal, sm_scale, block_q, block_k)
    o = torch.empty_like(qg)
    lse = torch.empty(qg.shape[:-1], dtype=cdt, device=q.device)  # (B, H_kv, G, N)
    for q0 in range(0, N, block_q):
        q1 = min(q0 + block_q, N)
        qi = qg[..., q0:q1, :]
        m = torch.full(qi.shape[:-1], NEG_INF, dtype=cdt, device=q.device)  # (B, H_kv, G, bq)
        l = torch.zeros_like(m)
        acc = torch.zeros_like(qi)  # (B, H_kv, G, bq, D)
        k_stop = min(q1, N_kv) if causal else N_kv  # causal: keys 0 .. q1-1 are the only visible ones
        for k0 in range(0, k_stop, block_k):
            k1 = min(k0 + block_k, N_kv)
            s = _score_tile(qi, kg[..., k0:k1, :], scale, causal, q0, k0)  # (B, H_kv, G, bq, bk)
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)  # guard: row still empty
            p = torch.exp(s - m_ref[..., None])
            alpha = torch.exp(m - m_ref)
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ vg[..., k0:k1, :]
            m = m_new
        o[..., q0:q1, :] = acc / l[..., None]  # the one normalization
        lse[..., q0:q1] = m + torch.log(l)
    return o.reshape(B, H, N, D).to(q.dtype), lse.reshape(B, H, N)


# ============================================================================================ backward
def matmul_backward(a: torch.Tensor, b: torch.Tensor, dc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For C = A B and upstream gradient dC = ∂L/∂C:  dA = dC Bᵀ  and  dB = Aᵀ dC."""
    return dc @ b.transpose(-2, -1), a.transpose(-2, -1) @ dc


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """Jacobian of p = softmax(x) for one row p (n,): ∂p_i/∂x_j = p_i (δ_ij - p_j), i.e. diag(p) - p pᵀ."""
    if p.dim() != 1:
        raise ValueError(f"softmax_jacobian takes one row (n,), got shape {tuple(p.shape)}")
    return torch.diag(p) - torch.outer(p, p)


def softmax_backward(p: torch.Tensor, dp: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Vector-Jacobian product through a row-wise softmax without forming the n × n Jacobian.

    dS = (diag(p) - p pᵀ) dP = P ∘ (dP - rowsum(dP ∘ P))
    """
    return p * (dp - (dp * p).sum(dim=dim, keepdim=True))


def naive_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of ``naive_attention`` by hand, with the full P in memory:

        dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP - rowsum(dP ∘ P)),   dQ = dS K · sm_scale,   dK = dSᵀ Q · sm_scale

    Grouped-query heads: dK and dV of a key/value head sum the contributions of all query heads that read it.
    """
    B, H, N, D, H_kv, N_kv = _check_attention_inputs(q, k, v, causal)
    scale = _scale(sm_scale, D)
    qg, dog = _group(q, H_kv), _group(do, H_kv)  # (B, H_kv, G, N, D)
    kg, vg = k.unsqueeze(2), v.unsqueeze(2)  # (B, H_kv, 1, N_kv, D)
    p = safe_softmax(_score_tile(qg, kg, scale, causal, 0, 0))  # (B, H_kv, G, N, N_kv)
    dv = (p.transpose(-2, -1) @ dog).sum(2)  # (B, H_kv, G, N_kv, D) -> (B, H_kv, N_kv, D)
    dp = dog @ vg.transpose(-2, -1)
    ds = softmax_backward(p, dp)
    dq = (ds @ kg) * scale
    dk = ((ds.transpose(-2, -1) @ qg) * scale).sum(2)
    return dq.reshape(B, H, N, D), dk, dv


def flash_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward, tiled; nothing of size N × N_kv is ever stored.

    Preprocess: D_i = rowsum(dO_i ∘ O_i), equal to rowsum(dP ∘ P) since Σ_j P_ij (dO_i · V_j) = dO_i · O_i.
    For a tile (i, j):  S = Q_i K_jᵀ · sm_scale,  P = e^(S - L_i)  (exact probabilities, recomputed from L),
    dP = dO_i V_jᵀ,  dS = P ∘ (dP - D_i).

    Pass 1, outer loop over key/value blocks j (one GPU program per K/V block), inner over query blocks i:
        dV_j += Pᵀ dO_i,     dK_j += dSᵀ Q_i · sm_scale
    Pass 2, outer loop over query blocks i, inner over key/value blocks j:
        dQ_i += dS K_j · sm_scale

    The paper's Algorithm 2 does dQ inside pass 1 with atomic adds; two passes recompute P once more but every
    block of the output is owned by exactly one program (this is how Triton's fused-attention tutorial does it).
    GQA: dK, dV of a key/value head sum over its G query heads.
    """
    (B, H, N, D, H_kv, N_kv), scale, cdt, qg, kg, vg = _prepare_tiled(q, k, v, causal, sm_scale, block_q, block_k)
    if o.shape != q.shape or do.shape != q.shape:
        raise ValueError(f"o and do must have the shape of q {tuple(q.shape)}, got {tuple(o.shape)}, {tuple(do.shape)}")
    if lse.shape != (B, H, N):
        raise ValueError(f"lse must have shape {(B, H, N)}, got {tuple(lse.shape)}")
    dog = _group(do, H_kv).to(cdt)  # (B, H_kv, G, N, D)
    lse_g = lse.reshape(B, H_kv, H // H_kv, N).to(cdt)
    delta = (dog * _group(o, H_kv).to(cdt)).sum(-1)  # D = rowsum(dO ∘ O): (B, H_kv, G, N)

    def tile(q0: int, q1: int, k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Recompute P and dS of tile (i, j)."""
        s = _score_tile(qg[..., q0:q1, :], kg[..., k0:k1, :], scale, causal, q0, k0)  # (B, H_kv, G, bq, bk)
        p = torch.exp(s - lse_g[..., q0:q1, None])  # masked entries: e^-inf = 0
        dp = dog[..., q0:q1, :] @ vg[..., k0:k1, :].transpose(-2, -1)
        ds = p * (dp - delta[..., q0:q1, None])
        return p, ds

    dk = torch.empty(B, H_kv, N_kv, D, dtype=cdt, device=q.device)
    dv = torch.empty_like(dk)
    for k0 in range(0, N_kv, block_k):  # pass 1: dK, dV
        k1 = min(k0 + block_k, N_kv)
        dk_j = torch.zeros(B, H_kv, k1 - k0, D, dtype=cdt, device=q.device)
        dv_j = torch.zeros_like(dk_j)
        q_start = (k0 // block_q) * block_q if causal else 0  # causal: queries before key k0 see nothing here
        for q0 in range(q_start, N, block_q):
            q1 = min(q0 + block_q, N)
            p, ds = tile(q0, q1, k0, k1)
            dv_j += (p.transpose(-2, -1) @ dog[..., q0:q1, :]).sum(2)  # sum over the G query heads
            dk_j += (ds.transpose(-2, -1) @ qg[..., q0:q1, :]).sum(2)
        dk[..., k0:k1, :] = dk_j * scale
        dv[..., k0:k1, :] = dv_j
    dq = torch.empty_like(qg)
    for q0 in range(0, N, block_q):  # pass 2: dQ
        q1 = min(q0 + block_q, N)
        dq_i = torch.zeros_like(qg[..., q0:q1, :])
        k_stop = min(q1, N_kv) if causal else N_kv
        for k0 in range(0, k_stop, block_k):
            k1 = min(k0 + block_k, N_kv)
            _, ds = tile(q0, q1, k0, k1)
            dq_i += ds @ kg[..., k0:k1, :]
        dq[..., q0:q1, :] = dq_i * scale
    return dq.reshape(B, H, N, D).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ============================================================================================ autograd
class FlashAttentionTorch(torch.autograd.Function):
    """Flash attention as an autograd op: forward saves only Q, K, V, O and L; backward recomputes P tile-wise."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, sm_scale=None, block_q=64, block_k=64):
        o, lse = flash_attention_forward(q, k, v, causal, sm_scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.sm_scale, ctx.block_q, ctx.block_k = causal, sm_scale, block_q, block_k
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(
            q, k, v, o, lse, do.contiguous(), ctx.causal, ctx.sm_scale, ctx.block_q, ctx.block_k
        )
        return dq, dk, dv, None, None, None, None


def flash_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """Differentiable flash attention in PyTorch: same result and gradients as ``naive_attention``."""
    return FlashAttentionTorch.apply(q, k, v, causal, sm_scale, block_q, block_k)


# ============================================================================================ memory traffic
def attention_bytes_naive(B: int, H: int, N: int, D: int, dtype_bytes: int) -> int:
    """Bytes moved between DRAM (HBM) and the chip by standard attention (FlashAttention paper, Algorithm 0).

    Per (batch, head), in three kernels:
      1. read Q, K (2 N D), write S = Q Kᵀ (N²)
      2. read S (N²), write P = softmax(S) (N²)
      3. read P (N²) and V (N D), write O (N D)
    total = B · H · (4 N D + 4 N²) · dtype_bytes  — the N² terms dominate once N > D.
    """
    return B * H * (4 * N * D + 4 * N * N) * dtype_bytes


def attention_bytes_tiled(
    B: int, H: int, N: int, D: int, dtype_bytes: int, block_q: int = 64, lse_bytes: int = 4
) -> int:
    """Bytes moved by the tiled (FlashAttention-2) forward, non-causal.

    Per (batch, head): Q read once (N D), O written once (N D), L written once (N values of ``lse_bytes``);
    each of the T_q = ceil(N / block_q) query blocks streams all of K and V through on-chip memory (2 N D each).
    total = B · H · ((2 N D + 2 N D · ceil(N / block_q)) · dtype_bytes + N · lse_bytes)
    Nothing of size N² is ever written; the K/V re-reads shrink as the on-chip block grows.
    """
    _check_blocks(block_q=block_q)
    t_q = -(-N // block_q)
    return B * H * ((2 * N * D + 2 * N * D * t_q) * dtype_bytes + N * lse_bytes)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated *during* ``fn()`` above what was allocated before (inputs excluded).

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (no allocator statistics there): the profiler's memory
    events, replayed in order: running sum of allocation (+) and free (-) sizes, maximum taken.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_memory(fn)


@contextlib.contextmanager
def _silence_native_stderr():
    """Send file descriptor 2 to /dev/null for the block: the profiler's C++ side (Kineto) prints a
    ``USDT: ... profiler_start`` / ``profiler_stop`` line per run there, bypassing Python's ``sys.stderr``."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real fd 2 (embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak_memory(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _silence_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each "[memory]" event is one allocation (nbytes > 0) or free (nbytes < 0) by the CPU allocator.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak
