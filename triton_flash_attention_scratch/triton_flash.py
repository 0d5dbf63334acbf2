"""Flash attention in Triton: forward, backward, the autograd Function, input validation and autotuning.

This is the module the lessons 15-22 build up; importing it registers the kernel with chapter 2's GPT-2 as
``attn_impl="triton"`` (see ``_register_with_gpt2``)::

    from triton_flash_attention_scratch.triton_flash import flash_attention
    o = flash_attention(q, k, v, causal=True)          # q (B, H, N, D), k/v (B, H_kv, N, D), H % H_kv == 0

The maths (same symbols as part 1, ``attention_torch.py``). For one (batch, head) and scores ``S = Q Kᵀ · sm_scale``:

    P = softmax(S)            O = P V            L_i = log Σ_j exp(S_ij)        (the logsumexp, natural log)

Forward (one program per query block of BLOCK_M rows and per batch·head) walks over key blocks with the *online
softmax*: a running row maximum ``m_i``, running normaliser ``l_i`` and unnormalised output ``acc``::

    m_new = max(m_i, rowmax(S_ij))      p = exp(S_ij - m_new)      α = exp(m_i - m_new)
    l_i  ← α l_i + rowsum(p)            acc ← α acc + p V_j         m_i ← m_new
    O_i = acc / l_i                     L_i = m_i + log l_i

Everything is done in base 2: ``exp(x) = exp2(x · log2 e)``, so the scale ``sm_scale · log2 e`` is folded into
the scores once and the kernel only calls the cheap ``exp2``. The saved ``L`` is converted back to natural log.

Backward (three kernels), with ``dO`` the incoming gradient and ``P_ij = exp(S_ij - L_i)`` recomputed from ``L``:

    D_i  = rowsum(dO_i ∘ O_i)                               (preprocess kernel)
    dV_j = Σ_i P_ijᵀ dO_i                                    dP = dO Vᵀ
    dS   = P ∘ (dP - D)                                      (softmax backward, using Σ_j P_ij dP_ij = D_i)
    dK_j = sm_scale · Σ_i dS_ijᵀ Q_i   (dK/dV kernel: one program per key block, loops over query blocks)
    dQ_i = sm_scale · Σ_j dS_ij K_j    (dQ kernel: one program per query block, loops over key blocks)

Grouped-query attention: query head ``h`` reads K/V head ``h // (H / H_kv)``; the dK/dV program of a K/V head
loops over the ``H / H_kv`` query heads of its group, so gradients are summed without atomics. ``dkdv_split=s``
shares a group among s programs instead (s times the programs when B · H_kv · N / BLOCK_N is small next to the
GPU's multiprocessors), each writing a partial sum in fp32 that one ``sum`` adds up afterwards.

Causal attention runs in two stages: the blocks strictly left of the diagonal need no mask; only the diagonal
block is masked; blocks right of the diagonal are never visited. Loads and stores are masked where a block can
leave the tensor (a partial last block, the padding lanes of a head dim that is not a power of two, which is
padded to one), so any sequence length works. ``tma=True`` streams the K/V (or Q/dO) tiles through tensor
descriptors instead, Hopper's Tensor Memory Accelerator, whose copies fill what lies outside the matrix with zeros.

Runs compiled on a CUDA GPU, and on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set below when
there is no CUDA). The interpreter is exact for fp32 and fp16 but computes bf16 ``tl.dot`` wrongly, so bf16 is
refused there with a clear error. Autotuning searches a pruned config space on GPU and uses one config under the
interpreter (where timing means nothing and multi-config autotuning is not supported).
"""

from __future__ import annotations

import itertools
import math
import os
import re

import torch

if not torch.cuda.is_available():  # must happen before `import triton` defines any kernel
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton
import triton.language as tl

from triton_flash_attention_scratch.triton_intro import check_interpreter

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634  # log2(e):  exp(x) = exp2(x * LOG2E)
LN2 = 0.6931471805599453  # ln(2):     log(x) = log2(x) * LN2
MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ============================================================================================ forward kernel
@triton.jit
def _load_tile(ptrs, rows, n_rows, d_ok, CHECK_ROWS: tl.constexpr, PAD_D: tl.constexpr):
    """A (rows, BLOCK_D) tile, masked only where it can leave the tensor: rows past ``n_rows`` (a partial last
    block, ``CHECK_ROWS``) and head-dim lanes past HEAD_DIM (``PAD_D``, when D is not a power of two). The loops
    over full blocks load with no mask at all: no compare, no select per element."""
    if CHECK_ROWS:
        tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & d_ok, other=0.0)
    elif PAD_D:
        tile = tl.load(ptrs, mask=d_ok, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _load_vec(ptrs, rows, n_rows, CHECK_ROWS: tl.constexpr):
    """A vector of per-row values (L or D of the backward), masked only for a partial last block."""
    if CHECK_ROWS:
        vec = tl.load(ptrs, mask=rows < n_rows, other=0.0)
    else:
        vec = tl.load(ptrs)
    return vec


@triton.jit
def _stream_tile(src, start, rows, n_rows, stride, offs_d, d_ok, CHECK_ROWS: tl.constexpr, PAD_D: tl.constexpr,
                 USE_TMA: tl.constexpr):  # fmt: skip
    """The (rows, BLOCK_D) tile at row ``start`` of a streamed tensor: K or V (forward, dQ), Q or dO (dK/dV).

    ``USE_TMA``: ``src`` is a tensor descriptor and one instruction asks Hopper's Tensor Memory Accelerator for
    the whole tile; it arrives in shared memory with rows past ``n_rows`` and lanes past HEAD_DIM filled with
    zeros by the hardware, so no mask is computed. Otherwise ``src`` is the (batch, head)'s base pointer and
    every thread computes its own addresses (``_load_tile``)."""
    if USE_TMA:
        tile = src.load([start, 0])
    else:
        tile = _load_tile(src + rows[:, None] * stride + offs_d[None, :], rows, n_rows, d_ok, CHECK_ROWS, PAD_D)
    return tile


@triton.jit
def _streamed_source(base, stride, N_CTX, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                     BLOCK_D: tl.constexpr, USE_TMA: tl.constexpr):  # fmt: skip
    """What ``_stream_tile`` reads from: a descriptor of the (N_CTX, HEAD_DIM) matrix at ``base`` (row stride
    ``stride``, tiles of (BLOCK_ROWS, BLOCK_D)) with ``USE_TMA``, else ``base`` itself. The descriptor is built
    on the device, once per program and (batch, head) it streams (128 bytes in a scratch buffer Triton asks the
    allocator for; the dK/dV kernel rebuilds its two for every query head of its GQA group)."""
    if USE_TMA:
        src = tl.make_tensor_descriptor(base, shape=[N_CTX, HEAD_DIM], strides=[stride, 1],
                                        block_shape=[BLOCK_ROWS, BLOCK_D])  # fmt: skip
    else:
        src = base
    return src


@triton.jit
def _attn_fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_src,
    v_src,
    stride_kn,
    stride_vn,
    offs_m,
    offs_d,
    lo,
    hi,
    N_CTX,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASK_DIAG: tl.constexpr,
    CHECK_N: tl.constexpr,
    PAD_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Online softmax over the key blocks [lo, hi). ``MASK_DIAG`` applies the causal mask (diagonal block only);
    ``CHECK_N`` masks keys past N_CTX (only a partial last block needs it)."""
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d[None, :] < HEAD_DIM
    for start_n in tl.range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # key positions of this block
        k = _stream_tile(k_src, start_n, cols, N_CTX, stride_kn, offs_d, d_ok, CHECK_N, PAD_D, USE_TMA)  # (BLOCK_N, D)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if CHECK_N:
            valid = cols[None, :] < N_CTX  # the last key block may be partial
            if MASK_DIAG:
                valid = valid & (offs_m[:, None] >= cols[None, :])
            qk = tl.where(valid, qk, float("-inf"))
        elif MASK_DIAG:
            qk = tl.where(offs_m[:, None] >= cols[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])  # (BLOCK_M, BLOCK_N)
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old maximum
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _stream_tile(v_src, start_n, cols, N_CTX, stride_vn, offs_d, d_ok, CHECK_N, PAD_D, USE_TMA)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)  # fp32 accumulation
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    O,
    LSE,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_on,
    H,
    H_KV,
    N_CTX,
    N_CTX_BUCKET,  # next power of two of N_CTX: only the autotuning key (unused in the body)
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,  # K and V tiles through the Tensor Memory Accelerator (Hopper and newer)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program = BLOCK_M query rows of one (batch, head). Writes O (input dtype) and L (fp32, natural log)."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    off_hkv = off_h // (H // H_KV)  # grouped-query attention: several query heads share one K/V head

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N_CTX
    d_ok = offs_d < HEAD_DIM
    io_mask = row_ok[:, None] & d_ok[None, :]

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=io_mask, other=0.0)  # (BLOCK_M, BLOCK_D), stays in registers for the whole loop
    k_src = _streamed_source(K + off_b * stride_kb + off_hkv * stride_kh, stride_kn, N_CTX, HEAD_DIM, BLOCK_N,
                             BLOCK_D, USE_TMA)  # fmt: skip
    v_src = _streamed_source(V + off_b * stride_vb + off_hkv * stride_vh, stride_vn, N_CTX, HEAD_DIM, BLOCK_N,
                             BLOCK_D, USE_TMA)  # fmt: skip

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # sm_scale · log2(e): scores in log2 units, so exp2 replaces exp

    PAD_D = HEAD_DIM != BLOCK_D  # a constexpr: both sides are
    if CAUSAL:
        # stage 1: key blocks strictly left of the diagonal block, no mask at all: every key is < start_m < N_CTX
        # and visible to every query of the block (needs BLOCK_M % BLOCK_N == 0)
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
            0, start_m, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, False, False, PAD_D, INPUT_PRECISION, USE_TMA,
        )  # fmt: skip
        # stage 2: the diagonal block, with the causal mask (and the bounds check: it may be the partial last one)
        hi = tl.minimum(start_m + BLOCK_M, N_CTX)
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
            start_m, hi, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, True, True, PAD_D, INPUT_PRECISION, USE_TMA,
        )  # fmt: skip
    else:
        # the full key blocks without a mask, then the partial last one (if N_CTX % BLOCK_N) with it
        n_full = (N_CTX // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
            0, n_full, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, False, False, PAD_D, INPUT_PRECISION, USE_TMA,
        )  # fmt: skip
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
            n_full, N_CTX, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, False, True, PAD_D, INPUT_PRECISION, USE_TMA,
        )  # fmt: skip

    acc = acc / l_i[:, None]
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # back to natural log: L = ln 2 · (m + log2 l)
    o_ptrs = O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=io_mask)
    tl.store(LSE + off_bh * N_CTX + offs_m, lse, mask=row_ok)


# ============================================================================================ backward kernels
@triton.jit
def _attn_bwd_preprocess(
    O,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_on,
    stride_dob,
    stride_doh,
    stride_don,
    H,
    N_CTX,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """D_i = Σ_d dO_id · O_id (fp32), one program per BLOCK_M rows of one (batch, head)."""
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N_CTX
    mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(
        O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :], mask=mask, other=0.0
    )
    do = tl.load(
        DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
        mask=mask,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + off_bh * N_CTX + offs_m, delta, mask=row_ok)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_src,
    do_src,
    lse_base,
    delta_base,
    stride_qn,
    stride_don,
    offs_n,
    offs_d,
    lo,
    hi,
    N_CTX,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    MASK_DIAG: tl.constexpr,
    CHECK_M: tl.constexpr,
    PAD_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Accumulate dK, dV of one key block over the query blocks [lo, hi). Works with transposed tiles (N, M).
    ``CHECK_M`` masks queries past N_CTX (needed when a query block of [lo, hi) may be partial)."""
    d_ok = offs_d[None, :] < HEAD_DIM
    for start_m in tl.range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _stream_tile(q_src, start_m, offs_m, N_CTX, stride_qn, offs_d, d_ok, CHECK_M, PAD_D, USE_TMA)
        lse = _load_vec(lse_base + offs_m, offs_m, N_CTX, CHECK_M) * 1.4426950408889634  # L in log2 units
        qkT = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION)  # (BLOCK_N, BLOCK_M) = (Q Kᵀ)ᵀ
        # Pᵀ recomputed from the saved logsumexp; masked entries get exp2(-inf) = 0 (never a huge exp of a
        # future score that would overflow before being masked)
        sT = qkT * qk_scale - lse[None, :]
        if CHECK_M:
            valid = offs_m[None, :] < N_CTX
            if MASK_DIAG:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])
            sT = tl.where(valid, sT, float("-inf"))
        elif MASK_DIAG:
            sT = tl.where(offs_m[None, :] >= offs_n[:, None], sT, float("-inf"))
        pT = tl.exp2(sT)
        do = _stream_tile(do_src, start_m, offs_m, N_CTX, stride_don, offs_d, d_ok, CHECK_M, PAD_D, USE_TMA)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)  # dV += Pᵀ dO
        delta = _load_vec(delta_base + offs_m, offs_m, N_CTX, CHECK_M)
        dpT = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)  # (dO Vᵀ)ᵀ, (BLOCK_N, BLOCK_M)
        dsT = pT * (dpT - delta[None, :])  # dSᵀ = Pᵀ ∘ (dPᵀ - D)
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)  # dK += dSᵀ Q   (× sm_scale later)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_don,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    H,
    H_KV,
    N_CTX,
    N_CTX_BUCKET,  # next power of two of N_CTX: only the autotuning key (unused in the body)
    KV_SPLIT,  # programs per (batch, K/V head, key block); each takes group / KV_SPLIT query heads
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,  # Q and dO tiles through the Tensor Memory Accelerator (Hopper and newer)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr,  # N_CTX % BLOCK_M == 0 (set by the launch, see _attn_bwd_dkdv_even)
):
    """One program = BLOCK_N keys of one (batch, K/V head); loops over the query heads of its GQA group.

    With ``KV_SPLIT`` = s > 1 the group's query heads are shared among s programs, and program ``j`` of a K/V
    head writes its partial sums to row ``off_hkv · s + j`` of DK/DV, which then have ``H_KV · s`` heads (fp32,
    summed over s by the caller). s = 1 (the default, a compile-time 1 for Triton) writes dK, dV directly.

    Its loop keeps the bounds mask on every query block unless every block is whole (``EVEN_M``): splitting off
    a masked tail, as the forward and dQ loops do, would put a third loop copy inside the loop over the group,
    and that spills registers (NOTES.md, "Registers")."""
    start_n = tl.program_id(0) * BLOCK_N
    off_bpart = tl.program_id(1)  # over B · H_KV · KV_SPLIT
    off_b = off_bpart // (H_KV * KV_SPLIT)
    off_part = off_bpart % (H_KV * KV_SPLIT)  # the row of DK/DV this program writes
    off_hkv = off_part // KV_SPLIT
    heads = (H // H_KV) // KV_SPLIT  # query heads per program
    first_h = off_hkv * (H // H_KV) + (off_part % KV_SPLIT) * heads

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < N_CTX) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(
        K + off_b * stride_kb + off_hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
        mask=kv_mask,
        other=0.0,
    )
    v = tl.load(
        V + off_b * stride_vb + off_hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
        mask=kv_mask,
        other=0.0,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    PAD_D = HEAD_DIM != BLOCK_D  # a constexpr: both sides are
    CHECK_M = not EVEN_M
    for g in range(heads):
        off_h = first_h + g
        q_src = _streamed_source(Q + off_b * stride_qb + off_h * stride_qh, stride_qn, N_CTX, HEAD_DIM, BLOCK_M,
                                 BLOCK_D, USE_TMA)  # fmt: skip
        do_src = _streamed_source(DO + off_b * stride_dob + off_h * stride_doh, stride_don, N_CTX, HEAD_DIM,
                                  BLOCK_M, BLOCK_D, USE_TMA)  # fmt: skip
        lse_base = LSE + (off_b * H + off_h) * N_CTX
        delta_base = DELTA + (off_b * H + off_h) * N_CTX
        if CAUSAL:
            # queries before start_n see none of these keys: skipped. The query blocks overlapping the key block
            # are masked (needs BLOCK_N % BLOCK_M == 0); every later query sees all of them: no mask.
            hi = tl.minimum(start_n + BLOCK_N, N_CTX)
            dk, dv = _attn_bwd_dkdv_inner(
                dk, dv, k, v, q_src, do_src, lse_base, delta_base, stride_qn, stride_don, offs_n, offs_d,
                start_n, hi, N_CTX, qk_scale, HEAD_DIM, BLOCK_M, True, True, PAD_D, INPUT_PRECISION, USE_TMA,
            )  # fmt: skip
            dk, dv = _attn_bwd_dkdv_inner(
                dk, dv, k, v, q_src, do_src, lse_base, delta_base, stride_qn, stride_don, offs_n, offs_d,
                start_n + BLOCK_N, N_CTX, N_CTX, qk_scale, HEAD_DIM, BLOCK_M, False, CHECK_M, PAD_D, INPUT_PRECISION,
                USE_TMA,
            )  # fmt: skip
        else:
            dk, dv = _attn_bwd_dkdv_inner(
                dk, dv, k, v, q_src, do_src, lse_base, delta_base, stride_qn, stride_don, offs_n, offs_d,
                0, N_CTX, N_CTX, qk_scale, HEAD_DIM, BLOCK_M, False, CHECK_M, PAD_D, INPUT_PRECISION, USE_TMA,
            )  # fmt: skip

    dk = dk * sm_scale  # S = sm_scale · Q Kᵀ, so dK picks up the scale once here
    dk_ptrs = DK + off_b * stride_dkb + off_part * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    dv_ptrs = DV + off_b * stride_dvb + off_part * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
    k_src,
    v_src,
    stride_kn,
    stride_vn,
    offs_m,
    offs_d,
    lo,
    hi,
    N_CTX,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASK_DIAG: tl.constexpr,
    CHECK_N: tl.constexpr,
    PAD_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Accumulate dQ of one query block over the key blocks [lo, hi). ``CHECK_N``: mask keys past N_CTX."""
    d_ok = offs_d[None, :] < HEAD_DIM
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _stream_tile(k_src, start_n, offs_n, N_CTX, stride_kn, offs_d, d_ok, CHECK_N, PAD_D, USE_TMA)
        v = _stream_tile(v_src, start_n, offs_n, N_CTX, stride_vn, offs_d, d_ok, CHECK_N, PAD_D, USE_TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # (BLOCK_M, BLOCK_N)
        s = qk * qk_scale - lse[:, None]
        if CHECK_N:
            valid = offs_n[None, :] < N_CTX
            if MASK_DIAG:
                valid = valid & (offs_m[:, None] >= offs_n[None, :])
            s = tl.where(valid, s, float("-inf"))
        elif MASK_DIAG:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        p = tl.exp2(s)  # masked: exp2(-inf) = 0
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)  # dP = dO Vᵀ
        ds = p * (dp - delta[:, None])  # dS = P ∘ (dP - D)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=INPUT_PRECISION)  # dQ += dS K   (× sm_scale later)
    return dq


@triton.jit
def _attn_bwd_dq(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_don,
    stride_dqb,
    stride_dqh,
    stride_dqn,
    H,
    H_KV,
    N_CTX,
    N_CTX_BUCKET,  # next power of two of N_CTX: only the autotuning key (unused in the body)
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,  # K and V tiles through the Tensor Memory Accelerator (Hopper and newer)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program = BLOCK_M query rows of one (batch, head); loops over key blocks."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    off_hkv = off_h // (H // H_KV)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N_CTX
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :],
        mask=io_mask,
        other=0.0,
    )
    do = tl.load(
        DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
        mask=io_mask,
        other=0.0,
    )
    lse = tl.load(LSE + off_bh * N_CTX + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + off_bh * N_CTX + offs_m, mask=row_ok, other=0.0)
    k_src = _streamed_source(K + off_b * stride_kb + off_hkv * stride_kh, stride_kn, N_CTX, HEAD_DIM, BLOCK_N,
                             BLOCK_D, USE_TMA)  # fmt: skip
    v_src = _streamed_source(V + off_b * stride_vb + off_hkv * stride_vh, stride_vn, N_CTX, HEAD_DIM, BLOCK_N,
                             BLOCK_D, USE_TMA)  # fmt: skip
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    PAD_D = HEAD_DIM != BLOCK_D  # a constexpr: both sides are
    if CAUSAL:
        # key blocks left of the diagonal: no mask at all (needs BLOCK_M % BLOCK_N == 0); the diagonal block:
        # the causal mask and the bounds check
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
            0, start_m, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, False, False, PAD_D, INPUT_PRECISION, USE_TMA,
        )  # fmt: skip
        hi = tl.minimum(start_m + BLOCK_M, N_CTX)
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
            start_m, hi, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, True, True, PAD_D, INPUT_PRECISION, USE_TMA,
        )  # fmt: skip
    else:
        n_full = (N_CTX // BLOCK_N) * BLOCK_N  # full key blocks without a mask, then the partial one with it
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
            0, n_full, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, False, False, PAD_D, INPUT_PRECISION, USE_TMA,
        )  # fmt: skip
        dq = _attn_bwd_dq_inner(
            dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_vn, offs_m, offs_d,
            n_full, N_CTX, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, False, True, PAD_D, INPUT_PRECISION, USE_TMA,
        )  # fmt: skip

    dq = dq * sm_scale
    dq_ptrs = DQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=io_mask)


# ============================================================================================ autotuning
# Under the interpreter: one small config (multi-config autotuning needs a GPU, and timing on the CPU means
# nothing). Small blocks also make short test sequences cover several blocks, partial tails and both causal stages.
INTERPRET_CONFIGS = {
    "fwd": triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
    "dkdv": triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=1),
    "dq": triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
}
# A reasonable fixed choice on a GPU (tests and lessons that must not wait for autotuning pass it explicitly).
# Chosen so that none spills registers: ptxas reports 0 spill bytes for each of them at D = 64 and 128, fp16 and
# bf16, causal or not, for sm_80 and sm_90 (the table in NOTES.md; the ahead-of-time tests check it). With 4 warps
# the dK/dV tiles spill at D = 128: they need more than the 255 registers a thread has. The forward with 8 warps
# holds the fewest registers of its small space.
GPU_DEFAULT_CONFIGS = {
    "fwd": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    "dkdv": {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    "dq": {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
}
PREPROCESS_BLOCK_M = 64
# Keyed by the sequence length rounded up to a power of two (N_CTX_BUCKET), not N_CTX itself: otherwise every new
# length (e.g. each step of token-by-token generation) would pay for a fresh tuning run.
AUTOTUNE_KEY = ["N_CTX_BUCKET", "HEAD_DIM", "CAUSAL", "USE_TMA"]
KERNELS = ("fwd", "dkdv", "dq")
# How much the compiled kernels autotune (read once, at import):
#   LLM_SCRATCH_AUTOTUNE=small (default)  <= 4 hand-picked configs per kernel: a first call per key compiles
#                                           and times at most 4 variants of each of the three kernels
#   LLM_SCRATCH_AUTOTUNE=full             the whole space of config_space(kernel, "full"), 36 per kernel
#                                           (also LLM_SCRATCH_FULL_AUTOTUNE=1): minutes per key, for people with time
#   LLM_SCRATCH_AUTOTUNE=off              no tuning: GPU_DEFAULT_CONFIGS (the first one that fits per key)
AUTOTUNE_MODES = ("small", "full", "off")


def autotune_mode_from_env(environ=os.environ) -> str:
    """The autotuning volume chosen by ``LLM_SCRATCH_AUTOTUNE`` / ``LLM_SCRATCH_FULL_AUTOTUNE`` (see above)."""
    mode = environ.get("LLM_SCRATCH_AUTOTUNE", "").strip().lower()
    if environ.get("LLM_SCRATCH_FULL_AUTOTUNE", "0").strip() == "1":
        if mode not in ("", "full"):
            raise ValueError(f"LLM_SCRATCH_FULL_AUTOTUNE=1 contradicts LLM_SCRATCH_AUTOTUNE={mode}")
        mode = "full"
    mode = mode or "small"
    if mode not in AUTOTUNE_MODES:
        raise ValueError(f"LLM_SCRATCH_AUTOTUNE={mode!r} is not one of {', '.join(AUTOTUNE_MODES)}")
    return mode


AUTOTUNE_MODE = autotune_mode_from_env()

# The small spaces: the GPU default plus three others per kernel, after Triton's fused-attention tutorial (which
# fixes its backward to one config). Forward and dK/dV: the default, the same tiles with 4 warps (twice the
# registers per thread; the dK/dV one spills at D = 128, which the timing may still prefer), bigger tiles for long
# sequences, and small tiles that fit shared memory at D = 256 or in fp32 (the last entry, the fallback).
_SMALL_SPACES = {
    "fwd": [(64, 64, 8, 3), (64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 2)],
    "dkdv": [(32, 64, 8, 2), (32, 64, 4, 2), (32, 128, 8, 2), (16, 32, 4, 2)],
    "dq": [(64, 32, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2), (32, 16, 4, 2)],
}


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose fwd, dkdv or dq")


def config_space(kernel: str, mode: str | None = None) -> list[triton.Config]:
    """The GPU search space of ``kernel`` ("fwd", "dkdv" or "dq") before pruning, for an autotune ``mode``.

    ``full``: query tiles (BLOCK_M) × key tiles (BLOCK_N) × pipeline depth (num_stages) × warps, 36 configs. The
    forward and dQ kernels keep a query tile in registers and stream keys; the dK/dV kernel keeps a key tile and
    streams queries. ``small`` (the default, ``AUTOTUNE_MODE``): 4 of them; ``off``: the GPU default alone.
    """
    _check_kernel(kernel)
    mode = AUTOTUNE_MODE if mode is None else mode
    if mode not in AUTOTUNE_MODES:
        raise ValueError(f"autotune mode {mode!r} is not one of {', '.join(AUTOTUNE_MODES)}")
    if mode == "off":
        c = GPU_DEFAULT_CONFIGS[kernel]
        small = _SMALL_SPACES[kernel][-1]  # fallback that fits where the default does not (fp32 at D = 256)
        return [
            triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]}, num_warps=c["num_warps"],
                          num_stages=c["num_stages"]),
            triton.Config({"BLOCK_M": small[0], "BLOCK_N": small[1]}, num_warps=small[2], num_stages=small[3]),
        ]  # fmt: skip
    if mode == "small":
        return [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in _SMALL_SPACES[kernel]
        ]
    if kernel == "fwd":
        tiles = [(m, n) for m in (64, 128) for n in (32, 64, 128)]
    elif kernel == "dkdv":
        tiles = [(m, n) for m in (16, 32, 64) for n in (64, 128)]
    else:
        tiles = [(m, n) for m in (64, 128) for n in (16, 32, 64)]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for (m, n), s, w in itertools.product(tiles, (2, 3, 4), (4, 8))
    ]


# Shared memory of the GPUs the kernels are tuned for (max per block, opt-in): A100 164 KiB - 1 KiB, H100 228 KiB
# - 1 KiB (CUDA C programming guide, compute capabilities table). Used when no device can be asked.
SMEM_LIMIT_BYTES_DEFAULT = 163 * 1024


def smem_estimate_bytes(kernel: str, block_m: int, block_n: int, num_stages: int, head_dim: int,
                        itemsize: int = 2) -> int:  # fmt: skip
    """Shared memory of the pipelined streamed tiles: num_stages × 2 tiles × streamed × D_pad × element size.

    Forward: K and V tiles of BLOCK_N rows; dQ: K and V of BLOCK_N rows; dK/dV: Q and dO of BLOCK_M rows.
    (The compiled kernels' real use is compared with this formula in lesson 20 and in the ahead-of-time tests.)
    """
    _check_kernel(kernel)
    streamed = block_m if kernel == "dkdv" else block_n
    return max(1, num_stages) * 2 * streamed * padded_head_dim(head_dim) * itemsize


def smem_limit_bytes(device: torch.device | None = None) -> int:
    """The shared memory a program may use on ``device`` (the current CUDA device), else the A100 default."""
    if torch.cuda.is_available() and not INTERPRET:
        props = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
        limit = getattr(props, "shared_memory_per_block_optin", 0)
        if limit:
            return int(limit)
    return SMEM_LIMIT_BYTES_DEFAULT


def config_is_valid(kernel: str, cfg: triton.Config, n_ctx: int, head_dim: int, itemsize: int = 2,
                    smem_limit: int | None = None) -> bool:  # fmt: skip
    """Is ``cfg`` a legal and sensible config of ``kernel`` for this problem (``itemsize`` bytes per element)?

    * legal: the causal two-stage split needs the streamed tile to divide the resident one (fwd/dQ:
      BLOCK_M % BLOCK_N == 0; dK/dV: BLOCK_N % BLOCK_M == 0), and the pipelined tiles must fit in shared memory
      (``smem_estimate_bytes`` with the real element size: fp32 needs twice what fp16 does);
    * sensible: a resident tile of 128 rows gets 8 warps (with 4, most such configs spill registers at D = 64
      already, the dK/dV kernel by up to tens of KiB: NOTES.md, "Registers"); large head dims with large tiles
      spill; tiles much longer than the sequence only compute padding.
    """
    m, n = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    resident, streamed = (n, m) if kernel == "dkdv" else (m, n)
    if resident % streamed:
        return False
    block_d = padded_head_dim(head_dim)
    limit = SMEM_LIMIT_BYTES_DEFAULT if smem_limit is None else smem_limit
    if smem_estimate_bytes(kernel, m, n, cfg.num_stages, head_dim, itemsize) > limit:
        return False
    if block_d >= 256 and (resident > 64 or cfg.num_stages > 2):
        return False
    if resident >= 128 and cfg.num_warps < 8:
        return False
    n_pow2 = max(16, triton.next_power_of_2(n_ctx))
    return max(m, n) <= max(n_pow2, 64)


def _make_pruner(kernel: str):
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        n_ctx, head_dim = int(args["N_CTX"]), int(args["HEAD_DIM"])
        q = args.get("Q")
        itemsize = q.element_size() if isinstance(q, torch.Tensor) else 2
        limit = smem_limit_bytes(q.device) if isinstance(q, torch.Tensor) and q.is_cuda else None
        kept = [c for c in configs if config_is_valid(kernel, c, n_ctx, head_dim, itemsize, limit)]
        if AUTOTUNE_MODE == "off":
            kept = kept[:1]
        # never prune everything: fall back to the smallest tiles
        return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))]

    return prune


def _autotuned(kernel_fn, kernel: str):
    configs = [INTERPRET_CONFIGS[kernel]] if INTERPRET else config_space(kernel)
    prune = None if INTERPRET else {"early_config_prune": _make_pruner(kernel)}
    return triton.autotune(configs=configs, key=AUTOTUNE_KEY, prune_configs_by=prune)(kernel_fn)


_attn_fwd_tuned = _autotuned(_attn_fwd, "fwd")
# EVEN_M follows from the length and the tile the autotuner (or an explicit config) chose: whole query blocks only
_attn_bwd_dkdv_even = triton.heuristics({"EVEN_M": lambda args: args["N_CTX"] % args["BLOCK_M"] == 0})(_attn_bwd_dkdv)
_attn_bwd_dkdv_tuned = _autotuned(_attn_bwd_dkdv_even, "dkdv")
_attn_bwd_dq_tuned = _autotuned(_attn_bwd_dq, "dq")


def describe_config(cfg: triton.Config) -> str:
    """``BLOCK_M=64 BLOCK_N=32 warps=4 stages=3``: the parts of a config this module tunes."""
    return (
        f"BLOCK_M={cfg.kwargs['BLOCK_M']} BLOCK_N={cfg.kwargs['BLOCK_N']} warps={cfg.num_warps} stages={cfg.num_stages}"
    )


def best_configs() -> dict[str, dict]:
    """The configs the autotuner picked so far (GPU only), per kernel: ``{kernel: {key: description}}``."""
    out = {}
    for name, tuned in (("fwd", _attn_fwd_tuned), ("dkdv", _attn_bwd_dkdv_tuned), ("dq", _attn_bwd_dq_tuned)):
        out[name] = {str(k): describe_config(c) for k, c in tuned.cache.items()}
    return out


# ============================================================================================ validation
def padded_head_dim(head_dim: int) -> int:
    """Head dims are padded to a power of two ≥ 16 inside the kernels (``tl.dot`` needs tiles of at least 16)."""
    return max(16, triton.next_power_of_2(head_dim))


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def validate_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a clear error for anything the kernels cannot run on — *before* any launch.

    A bad launch does not raise: compiled it reads out of bounds or produces garbage; under the interpreter it
    can crash the whole Python process. So device, dtype, shapes, head dim and strides are all checked here.
    """
    check_interpreter()
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dims (batch, heads, seq_len, head_dim), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"unsupported dtype {q.dtype}; the kernels support float16, bfloat16 and float32")
    if INTERPRET and q.dtype == torch.bfloat16:
        raise TypeError(
            "bfloat16 needs a CUDA GPU: Triton's CPU interpreter computes bf16 tl.dot incorrectly. "
            "Use float16 or float32 on the CPU (or run on a GPU)."
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if INTERPRET and q.device.type != "cpu":
        raise ValueError(f"TRITON_INTERPRET=1 runs the kernels on the CPU: move the tensors to cpu (got {q.device})")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(
            f"compiled Triton kernels need CUDA tensors, got {q.device}; "
            "set TRITON_INTERPRET=1 before importing triton to run them on the CPU"
        )
    B, H, N, D = q.shape
    Bk, H_kv, Nk, Dk = k.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if Bk != B or Nk != N or Dk != D:
        raise ValueError(
            f"k/v shape {tuple(k.shape)} does not match q shape {tuple(q.shape)}: batch, seq_len and head_dim "
            "must be equal (self-attention)"
        )
    if min(B, H, N, D, H_kv) < 1:
        raise ValueError(f"empty input: q shape {tuple(q.shape)}, k shape {tuple(k.shape)}")
    if H % H_kv:
        raise ValueError(f"number of query heads {H} must be a multiple of the number of key/value heads {H_kv}")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {D} is not supported: the kernels support head dims up to {MAX_HEAD_DIM}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (stride(-1) == 1), got strides {t.stride()}")
        extent = sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
        if extent >= 2**31:
            raise ValueError(f"{name} spans {extent} elements; the kernels use 32-bit offsets (limit 2**31)")


def _input_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products ("ieee"), not TF32, so fp32 results match PyTorch to ~1e-6 on GPU as well
    return "ieee" if dtype == torch.float32 else "tf32"


CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")


def check_config(kernel: str, config: object, head_dim: int, dtype: torch.dtype = torch.float16,
                 smem_limit: int | None = None) -> dict:  # fmt: skip
    """Validate an explicit config of ``kernel`` and return it complete (``num_warps`` 4, ``num_stages`` 2 if absent).

    Checks, with one clear error each: a dict with exactly the keys BLOCK_M and BLOCK_N (plus optional
    num_warps, num_stages); tiles powers of two >= 16 (``tl.dot`` needs 16); the causal split's divisibility; and
    that the pipelined tiles fit in ``smem_limit`` bytes of shared memory (``smem_estimate_bytes`` with the real
    element size of ``dtype``). ``smem_limit=None``: the GPU's limit when compiled; not checked under the
    interpreter, which has no shared memory.
    """
    _check_kernel(kernel)
    if not isinstance(config, dict):
        raise TypeError(f"{kernel} config must be a dict like {{'BLOCK_M': 64, 'BLOCK_N': 32}}, got {config!r}")
    unknown = sorted(set(config) - set(CONFIG_KEYS), key=str)
    if unknown:
        raise ValueError(f"{kernel} config has unknown keys {unknown}; allowed: {', '.join(CONFIG_KEYS)}")
    missing = [key for key in ("BLOCK_M", "BLOCK_N") if key not in config]
    if missing:
        raise ValueError(f"{kernel} config {config} is missing {' and '.join(missing)} (needs BLOCK_M and BLOCK_N)")
    cfg = {"num_warps": 4, "num_stages": 2, **config}
    for key in CONFIG_KEYS:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{kernel} config {key} must be an int, got {value!r}")
    for key in ("BLOCK_M", "BLOCK_N"):
        if cfg[key] < 16 or cfg[key] & (cfg[key] - 1) or cfg[key] > 256:
            raise ValueError(f"{kernel} config {key}={cfg[key]} must be a power of two between 16 and 256")
    if cfg["num_warps"] not in (1, 2, 4, 8, 16):
        raise ValueError(f"{kernel} config num_warps={cfg['num_warps']} must be one of 1, 2, 4, 8, 16")
    if not 1 <= cfg["num_stages"] <= 8:
        raise ValueError(f"{kernel} config num_stages={cfg['num_stages']} must be between 1 and 8")
    m, n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    if kernel == "dkdv" and n % m:
        raise ValueError(f"dK/dV config needs BLOCK_N % BLOCK_M == 0, got {config}")
    if kernel != "dkdv" and m % n:
        name = "forward" if kernel == "fwd" else "dQ"
        raise ValueError(f"{name} config needs BLOCK_M % BLOCK_N == 0, got {config}")
    if smem_limit is None and not INTERPRET:
        smem_limit = smem_limit_bytes()
    if smem_limit is not None:
        itemsize = torch.empty((), dtype=dtype).element_size()
        need = smem_estimate_bytes(kernel, m, n, cfg["num_stages"], head_dim, itemsize)
        if need > smem_limit:
            raise ValueError(
                f"{kernel} config {config} needs ~{need / 1024:.0f} KiB of shared memory at head_dim {head_dim} in "
                f"{str(dtype).split('.')[-1]} (num_stages x 2 tiles x {n if kernel != 'dkdv' else m} x "
                f"{padded_head_dim(head_dim)} x {itemsize} B) but the GPU allows {smem_limit / 1024:.0f} KiB: "
                "use fewer num_stages or smaller tiles"
            )
    return cfg


def _launch(tuned, raw, grid, cfg: dict | None, *args, **kwargs):
    """Run the autotuned kernel, or ``raw`` with one explicit, already checked config (``check_config``)."""
    if cfg is None:
        tuned[grid](*args, **kwargs)
        return
    meta = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]}
    try:
        raw[grid](*args, **kwargs, **meta, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    except triton.runtime.errors.OutOfResources as e:  # the estimate said it fits, the compiler disagrees
        raise ValueError(f"config {cfg} does not fit this GPU: {e}") from None


TMA_MIN_CAPABILITY = (9, 0)  # the Tensor Memory Accelerator came with Hopper (H100, H200)


def check_tma(tma: object, tensors: dict[str, torch.Tensor]) -> bool:
    """Can ``tma=True`` run on these tensors? One clear error if not; returns ``tma``.

    A TMA descriptor needs a GPU that has the unit (compute capability 9.0+; under the interpreter it is
    emulated, so the CPU tests run the same kernels) and 16-byte aligned rows: the tensor's start and every stride
    but the last a multiple of 16 bytes (Triton does not check this on the device: a misaligned descriptor is an
    illegal-instruction fault, not an error message). Contiguous fp16/bf16 tensors with a head dim that is a
    multiple of 8 (fp32: 4) have them.
    """
    if not isinstance(tma, bool):
        raise TypeError(f"tma must be True or False, got {tma!r}")
    if not tma:
        return False
    first = next(iter(tensors.values()))
    if not INTERPRET:
        cap = torch.cuda.get_device_capability(first.device)
        if cap < TMA_MIN_CAPABILITY:
            raise ValueError(
                f"tma=True needs a GPU with a Tensor Memory Accelerator (compute capability 9.0 or newer, e.g. H100); "
                f"{torch.cuda.get_device_name(first.device)} has {cap[0]}.{cap[1]}: use tma=False"
            )
    for name, t in tensors.items():
        size = t.element_size()
        # the row stride, and the batch and head strides where that dim is really stepped over (size > 1)
        steps = [t.stride(2)] + [st for n, st in zip(t.shape[:2], t.stride()[:2]) if n > 1]
        bad = [st * size for st in steps if st * size % 16]
        if t.data_ptr() % 16 or bad:
            what = f"starts {t.data_ptr() % 16} bytes past a 16-byte boundary" if t.data_ptr() % 16 else (
                f"has a stride of {bad[0]} bytes")  # fmt: skip
            raise ValueError(
                f"tma=True needs 16-byte aligned rows, but {name} (shape {tuple(t.shape)}, strides {t.stride()}, "
                f"{size}-byte elements) {what}: use a head dim that is a multiple of {16 // size} and a contiguous "
                "tensor, or tma=False"
            )
    return True


def _tma_scratch(size: int, alignment: int, stream: object) -> torch.Tensor:
    """Global memory for the descriptors the kernels build on the device (``triton.set_allocator``)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _prepare_tma(tma: bool) -> None:
    # The allocator is a context variable: set it in the thread that launches (autograd runs the backward in a
    # thread of its own), every time, since another library may have set its own.
    if tma and not INTERPRET:
        triton.set_allocator(_tma_scratch)


def _check_causal_and_scale(causal: object, sm_scale: object) -> None:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if sm_scale is not None:
        if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)):
            raise TypeError(f"sm_scale must be a number or None, got {sm_scale!r}")
        if not math.isfinite(sm_scale) or sm_scale == 0:
            raise ValueError(f"sm_scale must be finite and non-zero, got {sm_scale!r}")


def dkdv_grid(B: int, H_kv: int, N: int, block_n: int, split: int = 1) -> tuple[int, int]:
    """The dK/dV kernel's launch grid: (key blocks, B · H_kv · split) programs."""
    return triton.cdiv(N, block_n), B * H_kv * split


def check_dkdv_split(split: object, heads: int, kv_heads: int) -> int:
    """``dkdv_split``: how many dK/dV programs share the query heads of one K/V head's group; returns it.

    It must be a positive int that divides the group size ``heads / kv_heads``. 1 (the default) is one program per
    (batch, K/V head, key block), which loops over the whole group; ``heads // kv_heads`` is one program per query
    head, as FlashAttention-2 does for GQA: ``split`` times the programs, each with a ``split``-th of the serial
    work, at the cost of fp32 partial dK/dV (``split`` x the size of K and V, as fp32) summed afterwards.
    """
    if isinstance(split, bool) or not isinstance(split, int):
        raise TypeError(f"dkdv_split must be an int, got {split!r}")
    group = heads // kv_heads
    if split < 1 or group % split:
        divisors = [d for d in range(1, group + 1) if group % d == 0]
        raise ValueError(
            f"dkdv_split must divide the GQA group size {group} (H={heads} query heads, H_kv={kv_heads} K/V heads): "
            f"one of {divisors}, got {split}"
        )
    return split


# ============================================================================================ Python entry points
def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    config: dict | None = None,
    tma: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash-attention forward: returns ``o`` (B, H, N, D) in the input dtype and ``lse`` (B, H, N) fp32, natural log.

    ``config`` fixes the tiles instead of autotuning, e.g. ``{"BLOCK_M": 64, "BLOCK_N": 32, "num_stages": 3}``
    (the causal split needs BLOCK_M % BLOCK_N == 0). ``tma=True`` loads the K and V tiles through tensor
    descriptors, i.e. Hopper's Tensor Memory Accelerator (``check_tma`` says where it can run).
    """
    validate_attention_inputs(q, k, v)
    _check_causal_and_scale(causal, sm_scale)
    tma = check_tma(tma, {"q": q, "k": k, "v": v})
    B, H, N, D = q.shape
    H_kv = k.shape[1]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    config = None if config is None else check_config("fwd", config, D, q.dtype)
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    grid = lambda META: (triton.cdiv(N, META["BLOCK_M"]), B * H)
    _prepare_tma(tma)
    _launch(
        _attn_fwd_tuned, _attn_fwd, grid, config,
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, H_kv, N, triton.next_power_of_2(N), sm_scale,
        HEAD_DIM=D, BLOCK_D=padded_head_dim(D), CAUSAL=bool(causal), INPUT_PRECISION=_input_precision(q.dtype),
        USE_TMA=tma,
    )  # fmt: skip
    return o, lse


def attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    dkdv_config: dict | None = None,
    dq_config: dict | None = None,
    tma: bool = False,
    dkdv_split: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flash-attention backward from the saved ``o`` and ``lse``: returns ``(dq, dk, dv)`` in the input dtype.

    ``tma=True``: the streamed tiles (Q and dO in the dK/dV kernel, K and V in the dQ kernel) come through tensor
    descriptors, as in ``attention_forward``. ``dkdv_split``: dK/dV programs per K/V head (``check_dkdv_split``)."""
    validate_attention_inputs(q, k, v)
    _check_causal_and_scale(causal, sm_scale)
    B, H, N, D = q.shape
    H_kv = k.shape[1]
    split = check_dkdv_split(dkdv_split, H, H_kv)
    for name, t in (("o", o), ("do", do)):
        _check_tensor(name, t)
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"{name} must match q (shape {tuple(q.shape)}, {q.dtype}, {q.device}), "
                f"got {tuple(t.shape)}, {t.dtype}, {t.device}"
            )
    _check_tensor("lse", lse)
    if lse.shape != (B, H, N) or lse.dtype != torch.float32 or lse.device != q.device or not lse.is_contiguous():
        raise ValueError(f"lse must be a contiguous float32 tensor of shape {(B, H, N)} on {q.device}")
    dkdv_config = None if dkdv_config is None else check_config("dkdv", dkdv_config, D, q.dtype)
    dq_config = None if dq_config is None else check_config("dq", dq_config, D, q.dtype)
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    o = o if o.stride(-1) == 1 else o.contiguous()
    do = do if do.stride(-1) == 1 else do.contiguous()
    if tma is True and isinstance(do, torch.Tensor) and (do.data_ptr() % 16 or not do.is_contiguous()):
        do = do.clone(memory_format=torch.contiguous_format)  # any view of a gradient: a fresh copy is aligned
    tma = check_tma(tma, {"q": q, "k": k, "v": v, "do": do})
    _prepare_tma(tma)
    block_d = padded_head_dim(D)
    precision = _input_precision(q.dtype)

    delta = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    _attn_bwd_preprocess[(triton.cdiv(N, PREPROCESS_BLOCK_M), B * H)](
        o, do, delta,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, N, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=PREPROCESS_BLOCK_M,
    )  # fmt: skip

    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    if split == 1:
        dk = torch.empty_like(k, memory_format=torch.contiguous_format)
        dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    else:  # fp32 partial sums, one row per program of a K/V head: (B, H_kv · split, N, D)
        dk = torch.empty((B, H_kv * split, N, D), device=q.device, dtype=torch.float32)
        dv = torch.empty_like(dk)
    common = dict(HEAD_DIM=D, BLOCK_D=block_d, CAUSAL=bool(causal), INPUT_PRECISION=precision, USE_TMA=tma)
    grid_kv = lambda META: dkdv_grid(B, H_kv, N, META["BLOCK_N"], split)
    _launch(
        _attn_bwd_dkdv_tuned, _attn_bwd_dkdv_even, grid_kv, dkdv_config,
        q, k, v, do, lse, delta, dk, dv,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        H, H_kv, N, triton.next_power_of_2(N), split, sm_scale, **common,
    )  # fmt: skip
    if split > 1:  # (B, H_kv · split, N, D) -> (B, H_kv, split, N, D), summed over the split
        dk = dk.view(B, H_kv, split, N, D).sum(2).to(k.dtype)
        dv = dv.view(B, H_kv, split, N, D).sum(2).to(v.dtype)
    grid_q = lambda META: (triton.cdiv(N, META["BLOCK_M"]), B * H)
    _launch(
        _attn_bwd_dq_tuned, _attn_bwd_dq, grid_q, dq_config,
        q, k, v, do, lse, delta, dq,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        H, H_kv, N, triton.next_power_of_2(N), sm_scale, **common,
    )  # fmt: skip
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """``torch.autograd.Function`` tying the Triton forward and backward together.

    forward saves ``q, k, v, o`` and the logsumexp ``L`` (B·H·N floats) — never the N×N attention matrix;
    backward recomputes ``P`` block by block from ``L``. The backward kernels are not themselves differentiable:
    a backward with ``create_graph=True`` (double backward, e.g. a gradient penalty) raises a clear error instead
    of silently returning gradients whose own gradients miss every second-order term.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, configs=None, tma=False, dkdv_split=1):
        configs = configs or {}
        o, lse = attention_forward(q, k, v, causal=causal, sm_scale=sm_scale, config=configs.get("fwd"), tma=tma)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        ctx.sm_scale = sm_scale
        ctx.configs = configs
        ctx.tma = tma
        ctx.dkdv_split = dkdv_split
        return o

    @staticmethod
    def backward(ctx, do):
        if torch.is_grad_enabled():  # autograd runs backward in grad mode only for create_graph=True
            raise RuntimeError(
                "flash_attention has no double backward (create_graph=True): its backward kernels are not "
                "differentiable; use F.scaled_dot_product_attention or the part-1 naive_attention for "
                "higher-order gradients"
            )
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(
            q, k, v, o, lse, do, causal=ctx.causal, sm_scale=ctx.sm_scale,
            dkdv_config=ctx.configs.get("dkdv"), dq_config=ctx.configs.get("dq"), tma=ctx.tma,
            dkdv_split=ctx.dkdv_split,
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    configs: dict[str, dict] | None = None,
    tma: bool = False,
    dkdv_split: int = 1,
) -> torch.Tensor:
    """Differentiable flash attention. q (B, H, N, D); k, v (B, H_kv, N, D) with H % H_kv == 0 (GQA).

    Same result as ``F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale)`` (with K/V heads
    repeated for GQA). Inputs whose last dim is not contiguous are copied first; everything else is validated
    before any kernel launch. ``configs`` fixes the tiles of some kernels instead of autotuning them, e.g.
    ``configs=GPU_DEFAULT_CONFIGS`` or ``{"fwd": {"BLOCK_M": 64, "BLOCK_N": 32}}`` (keys fwd, dkdv, dq).
    ``tma=True`` streams tiles through Hopper's Tensor Memory Accelerator (``check_tma``: compute capability
    9.0+, 16-byte aligned rows); off by default. ``dkdv_split`` (GQA): how many backward programs share the query
    heads of one K/V head, 1 to ``H // H_kv`` (``check_dkdv_split``).
    """
    if configs is not None:
        if not isinstance(configs, dict) or set(configs) - set(KERNELS):
            raise ValueError(f"configs must be a dict with keys among {KERNELS}, got {configs!r}")
        validate_attention_inputs(q, k, v)
        configs = {name: check_config(name, cfg, q.shape[-1], q.dtype) for name, cfg in configs.items()}
    _check_causal_and_scale(causal, sm_scale)
    if not isinstance(tma, bool):
        raise TypeError(f"tma must be True or False, got {tma!r}")
    if type(dkdv_split) is not int or dkdv_split != 1:  # checked before the forward runs, not in the backward
        validate_attention_inputs(q, k, v)
        check_dkdv_split(dkdv_split, q.shape[1], k.shape[1])
    q, k, v = (
        t.contiguous() if isinstance(t, torch.Tensor) and t.dim() and t.stride(-1) != 1 else t for t in (q, k, v)
    )
    return FlashAttentionFunction.apply(q, k, v, causal, sm_scale, configs, tma, dkdv_split)


# ============================================================================================ ahead of time
# ``triton.compile`` with a ``GPUTarget`` builds PTX and a cubin for a given GPU without one being present (the
# Triton wheel ships ptxas). CI uses it so that a compile error cannot wait for the first GPU run; lesson 20 uses it
# to show what ``num_stages`` does to the compiled code. A launch specialises each integer argument on its value
# (native_specialize_impl in triton/runtime/jit.py): 1 becomes a compile-time constant, a multiple of 16 gets a
# ``tt.divisibility`` attribute that lets the compiler prove wide, aligned accesses, anything else is a plain i32.
# ``aot_source`` does the same by hand: the pointers (PyTorch's allocator aligns them) and the strides of contiguous
# (B, H, N, D) tensors are marked from D, and H, H_KV, N_CTX either from the ``sizes`` of a concrete launch or, by
# default, as general values that give the compiler no such fact (GPT-2's H = 12, a prompt of 1000 tokens).
AOT_KERNELS = ("fwd", "dkdv", "dq", "preprocess")
_FP32_POINTERS = {"LSE", "DELTA"}
_POINTERS = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ"} | _FP32_POINTERS


_SIZE_NAMES = ("H", "H_KV", "N_CTX")


def check_aot_sizes(sizes: dict | None) -> dict | None:
    """``sizes`` of a launch to compile for: ``{"H": .., "H_KV": .., "N_CTX": ..}`` (query heads, key/value heads,
    sequence length), positive ints with H a multiple of H_KV; None for general sizes."""
    if sizes is None:
        return None
    if not isinstance(sizes, dict) or set(sizes) != set(_SIZE_NAMES):
        raise ValueError(f"sizes must be None or a dict with exactly the keys {_SIZE_NAMES}, got {sizes!r}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"sizes[{name!r}] must be a positive int, got {value!r}")
    if sizes["H"] % sizes["H_KV"]:
        raise ValueError(f"sizes: H={sizes['H']} is not a multiple of H_KV={sizes['H_KV']}")
    return dict(sizes)


def _check_aot_kv_split(kv_split: object) -> None:
    if isinstance(kv_split, bool) or not isinstance(kv_split, int) or kv_split < 1:
        raise ValueError(f"kv_split must be a positive int, got {kv_split!r}")


def _int_spec(value: int | None) -> tuple[str, list]:
    """How a launch passes an integer argument of this value: (type, attributes); type "constexpr" for 1. None is a
    general value (no attribute)."""
    if value == 1:
        return "constexpr", []
    kind = "i64" if value is not None and value >= 2**31 else "i32"
    return kind, [["tt.divisibility", 16]] if value is not None and value % 16 == 0 else []


def _stride(name: str, head_dim: int, sizes: dict | None) -> int | None:
    """``stride_<tensor><b|h|n>`` of a contiguous (B, heads, N, D) tensor: D, N·D, heads·N·D (heads = H_KV for K, V
    and their gradients). General sizes: a multiple of D, so of 16 if D is."""
    tensor, dim = name[len("stride_") : -1], name[-1]
    if dim == "n":
        return head_dim
    if sizes is None:
        return 16 if head_dim % 16 == 0 else None
    heads = sizes["H_KV"] if tensor in ("k", "v", "dk", "dv") else sizes["H"]
    return sizes["N_CTX"] * head_dim * (heads if dim == "b" else 1)


def aot_source(kernel: str, arch: int, dtype: str, head_dim: int, causal: bool, config: dict | None,
               even_m: bool = True, tma: bool = False, sizes: dict | None = None, kv_split: int = 1):  # fmt: skip
    """What ``triton.compile`` needs for one kernel: ``(ASTSource, options, cfg)``, specialised as a launch with
    contiguous (B, H, N, D) tensors of this head dim (and of ``sizes``, if given) specialises it; ``kv_split``
    is the dK/dV kernel's ``dkdv_split``, specialised as a launch does (1 becomes a compile-time constant)."""
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.compiler import ASTSource

    fn = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dq": _attn_bwd_dq, "preprocess": _attn_bwd_preprocess}[kernel]
    tdt = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[dtype]
    sizes = check_aot_sizes(sizes)
    # the preprocess kernel is launched without options: the CUDA backend's default warps and stages
    cfg = {"num_warps": CUDAOptions.num_warps, "num_stages": CUDAOptions.num_stages, "BLOCK_M": PREPROCESS_BLOCK_M}
    if kernel != "preprocess":
        cfg = check_config(kernel, config or GPU_DEFAULT_CONFIGS[kernel], head_dim, getattr(torch, dtype),
                           smem_limit=1 << 30)  # fmt: skip
    values = {
        "HEAD_DIM": head_dim, "BLOCK_D": padded_head_dim(head_dim), "CAUSAL": bool(causal),
        "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32", "BLOCK_M": cfg["BLOCK_M"],
        "BLOCK_N": cfg.get("BLOCK_N"), "EVEN_M": bool(even_m), "USE_TMA": bool(tma),
    }  # fmt: skip
    _check_aot_kv_split(kv_split)
    ints = dict.fromkeys(_SIZE_NAMES) | {"N_CTX_BUCKET": 16, "KV_SPLIT": kv_split}  # bucket: 16 from N = 9 on
    if sizes is not None:
        ints |= sizes | {"N_CTX_BUCKET": triton.next_power_of_2(sizes["N_CTX"])}
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[(i,)] = values[name]
            continue
        if name in _POINTERS:
            fp32 = name in _FP32_POINTERS or (kv_split > 1 and name in ("DK", "DV"))  # partial sums are fp32
            signature[name], spec = "*fp32" if fp32 else f"*{tdt}", [["tt.divisibility", 16]]
        elif name == "sm_scale":
            signature[name], spec = "fp32", []
        else:
            value = _stride(name, head_dim, sizes) if name.startswith("stride") else ints[name]
            signature[name], spec = _int_spec(value)
            if signature[name] == "constexpr":
                constexprs[(i,)] = 1
        if spec:
            attrs[(i,)] = spec
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return src, {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}, cfg


def _aot_one(kernel: str, arch: int, dtype: str, head_dim: int, causal: bool, config: dict | None,
             even_m: bool = True, tma: bool = False, sizes: dict | None = None, kv_split: int = 1) -> dict:  # fmt: skip
    from triton.backends.compiler import GPUTarget

    src, options, cfg = aot_source(kernel, arch, dtype, head_dim, causal, config, even_m, tma, sizes, kv_split)
    compiled, usage = _compile_with_ptxas_log(src, GPUTarget("cuda", arch, 32), options)
    ptx = compiled.asm["ptx"]
    # one instruction per line; a predicate guard (``@%p3``, ``@!%p3``) in front is dropped before matching
    lines = [re.sub(r"^@!?%p\d+\s+", "", line.strip()) for line in ptx.splitlines()]
    count = lambda prefix: sum(line.startswith(prefix) for line in lines)  # noqa: E731
    return {
        "kernel": kernel, "arch": arch, "dtype": dtype, "head_dim": head_dim, "causal": bool(causal),
        "config": {k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages") if k in cfg},
        "even_m": bool(even_m),
        "use_tma": bool(tma),
        "sizes": sizes,
        "kv_split": kv_split,
        "shared_bytes": int(compiled.metadata.shared),
        "global_scratch_bytes": int(getattr(compiled.metadata, "global_scratch_size", 0) or 0),  # TMA descriptors
        "cp_async": count("cp.async.ca") + count("cp.async.cg"),  # Ampere-style asynchronous global->shared copies
        "cp_async_wait": count("cp.async.wait_group"),
        "tma": count("cp.async.bulk.tensor"),  # Hopper's Tensor Memory Accelerator copies (tensor descriptors)
        "mbarrier_waits": count("mbarrier.try_wait"),  # where a TMA copy's arrival is awaited
        "wgmma": count("wgmma.mma_async"),  # Hopper warpgroup matrix multiply
        "mma_sync": count("mma.sync"),  # Ampere warp-level tensor-core matmul
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
        **usage,  # registers per thread and bytes spilled to local memory, from ptxas' own report
    }  # fmt: skip


_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict:
    """``registers``, ``spill_stores``, ``spill_loads`` from a ``ptxas -v`` log (None where a line is missing).

    ptxas prints, per kernel: ``N bytes stack frame, S bytes spill stores, L bytes spill loads`` and ``Used R
    registers, ...``. R is per thread (255 is the most an sm_80/sm_90 thread can have); S > 0 means values did
    not fit in registers and go through local memory (L1/L2) instead: slower loops.
    """
    regs, spills = _PTXAS_REGISTERS.findall(log), _PTXAS_SPILLS.findall(log)
    return {
        "registers": int(regs[-1]) if regs else None,
        "spill_stores": int(spills[-1][0]) if spills else None,
        "spill_loads": int(spills[-1][1]) if spills else None,
    }


def _compile_with_ptxas_log(src, target, options):
    """``triton.compile`` with Triton's ptxas log captured (``TRITON_DUMP_PTXAS_LOG``; the cache is bypassed so
    ptxas really runs). Triton builds the cubin with ``ptxas -v`` itself, so these are the counts of the very
    cubin a launch would load; a Triton without those knobs gives None counts."""
    import contextlib
    import io

    knobs = getattr(triton, "knobs", None)
    nvidia, compilation = getattr(knobs, "nvidia", None), getattr(knobs, "compilation", None)
    if not (hasattr(nvidia, "dump_ptxas_log") and hasattr(compilation, "always_compile")):
        return triton.compile(src, target=target, options=options), parse_ptxas_log("")
    log, before = io.StringIO(), (nvidia.dump_ptxas_log, compilation.always_compile)
    try:
        nvidia.dump_ptxas_log = compilation.always_compile = True
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options)
    finally:
        nvidia.dump_ptxas_log, compilation.always_compile = before
    return compiled, parse_ptxas_log(log.getvalue())


def compile_ahead_of_time(jobs: list[dict], timeout_s: float = 600) -> list[dict]:
    """Compile kernels for CUDA targets without a GPU; one dict of facts per job (see ``_aot_one``).

    A job: ``{"kernel": "fwd"|"dkdv"|"dq"|"preprocess", "arch": 80|90, "dtype": "float16"|"bfloat16"|"float32",
    "head_dim": 64, "causal": True, "config": None | {"BLOCK_M": .., "BLOCK_N": .., "num_warps": .., "num_stages":
    ..}, "even_m": True, "tma": False, "sizes": None}`` (``even_m``: the dK/dV kernel's variant for lengths that are
    a multiple of BLOCK_M; ``tma``: streamed tiles through tensor descriptors, sm_90 only; ``sizes``: compile as a
    launch with ``{"H": .., "H_KV": .., "N_CTX": ..}`` does, e.g. ``{"H": 32, "H_KV": 32, "N_CTX": 4096}``, or
    None for general sizes; ``kv_split``: the dK/dV kernel's ``dkdv_split``, 1 by default; see ``aot_source``).
    Under the interpreter the kernels are not compilable in this process (``TRITON_INTERPRET=1`` turned them into
    interpreted functions), so the jobs run in one child process with ``TRITON_INTERPRET=0``.
    """
    for job in jobs:
        if job.get("kernel") not in AOT_KERNELS:
            raise ValueError(f"kernel must be one of {AOT_KERNELS}, got {job.get('kernel')!r}")
        if job.get("arch") not in (80, 86, 89, 90):
            raise ValueError(f"arch must be 80, 86, 89 or 90 (sm_XX), got {job.get('arch')!r}")
        if job.get("tma") and job["arch"] < 90:  # Triton would quietly lower the descriptors to pointer loads
            raise ValueError(f"tma=True needs arch 90 (TMA came with Hopper), got {job['arch']}")
        check_aot_sizes(job.get("sizes"))
        _check_aot_kv_split(job.get("kv_split", 1))
    full = [{"dtype": "float16", "head_dim": 64, "causal": True, "config": None, "even_m": True, **job} for job in jobs]
    if not INTERPRET:
        return [_aot_one(**job) for job in full]
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from triton_flash_attention_scratch.triton_flash import _aot_one; "
        "print(json.dumps([_aot_one(**job) for job in json.loads(sys.argv[2])]))"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, root, json.dumps(full)], capture_output=True, text=True, env=env, timeout=timeout_s
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"ahead-of-time compilation failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================================ lesson helpers
def causal_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``flash_attention(q, k, v, causal=True)``: the form chapter 2's GPT-2 calls as ``attn_impl="triton"``."""
    return flash_attention(q, k, v, causal=True)


def _register_with_gpt2() -> None:
    """Chapter 2's GPT-2 takes attention implementations by name; importing this module adds ``"triton"``.
    (Chapter 4 may import chapter 2; never the other way round.)"""
    from pytorch_gpt2_from_scratch.model import register_attention

    register_attention("triton", causal_flash_attention)


_register_with_gpt2()


def resolve_kernel_device(name: str = "auto") -> torch.device:
    """The device the kernels run on: CUDA when compiled, the CPU under the interpreter (``auto`` picks it)."""
    from pytorch_basis.common import resolve_device

    want = "cpu" if INTERPRET else "cuda"
    dev = torch.device(want) if name == "auto" else resolve_device(name)
    if dev.type != want:
        mode = "Triton's interpreter (no CUDA here)" if INTERPRET else "compiled Triton kernels"
        raise ValueError(f"--device {name}: {mode} run on {want}; use --device {want} or auto")
    return dev


def attention_flops(B: int, H: int, N: int, D: int, causal: bool, mode: str = "fwd") -> float:
    """FLOPs of attention: 2 matmuls of 2·N²·D each per head forward (4·B·H·N²·D), halved when causal.

    The backward does 5 such matmuls against the forward's 2, so it counts 2.5× the forward; "fwd_bwd" is 3.5×.
    """
    flops = 4.0 * B * H * N * N * D * (0.5 if causal else 1.0)
    factor = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
    if mode not in factor:
        raise ValueError(f"mode must be one of {sorted(factor)}, got {mode!r}")
    return flops * factor[mode]


def do_bench_ms(fn, warmup: int = 25, rep: int = 100, grad_to_none=None) -> float:
    """Median milliseconds of ``fn()`` on the GPU with ``triton.testing.do_bench`` (L2 flushed between runs).

    ``grad_to_none``: tensors whose ``.grad`` is reset before each run, so timed backward passes do not also time
    the accumulation into old gradients.
    """
    if INTERPRET:
        raise RuntimeError("timing needs a CUDA GPU: under the interpreter kernels run as NumPy code on the CPU")
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median"))


def lesson_parser(doc: str, **int_options: int):
    """The lessons' argparse parser: ``--name`` int options with defaults (``seq_len=90`` -> ``--seq-len 90``),
    plus ``--seed`` and ``--device``; the description is the first paragraph of the lesson's docstring."""
    import argparse

    from pytorch_basis.common import add_device_argument, positive_int, seed_int

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    for name, default in {**int_options, "seed": 0}.items():  # sizes and counts >= 1; the seed in NumPy's range
        kind = seed_int if name == "seed" else positive_int
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help="(default: %(default)s)")
    add_device_argument(p)
    return p
