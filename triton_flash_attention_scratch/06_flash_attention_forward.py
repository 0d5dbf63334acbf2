"""Step 6: the flash attention forward pass — first as a readable tiled loop, then as FlashAttention-2.

Combine steps 4 and 5: compute S = Q Kᵀ one (block_q × block_k) tile at a time and fold each tile into an
online softmax whose running sum also carries the output. For a block of queries Q_i and its running
statistics (m, l) and accumulator Õ, each key/value block K_j, V_j does

    S = Q_i K_jᵀ · sm_scale,  m_new = max(m, rowmax S),  P̃ = e^(S - m_new)
    l = e^(m - m_new) l + rowsum P̃,   Õ = e^(m - m_new) Õ + P̃ V_j,   m = m_new

— the rescale e^(m - m_new) corrects everything accumulated against the old max, exactly like l in step 4.

* ``flash_attention_forward_simple`` follows FlashAttention (v1) Algorithm 1: outer loop over K/V blocks,
  inner over query blocks, O kept normalized (divided by l) after every tile.
* ``flash_attention_forward`` is FlashAttention-2 Algorithm 1: outer loop over query blocks (the parallel
  dimension on a GPU: each program owns one block of O, no communication), Õ divided by l once at the end,
  and L = m + log(l) saved for the backward pass (step 9). Causal attention skips the tiles above the
  diagonal entirely and masks only the tiles that straddle it.

Both handle any N (the last blocks are ragged) and grouped-query K/V; this step checks them against
``F.scaled_dot_product_attention`` and counts the tiles each variant visits.

First, a worked trace by hand (``flash_forward_row_trace``): one query row over three key blocks, printing m, l
and the unnormalised output õ before and after each rescale, and next to them the plain softmax of the keys seen
so far — max, Σ e^(s − max) and softmax(s) V — which the running values must equal at every step.

Run:  python triton_flash_attention_scratch/06_flash_attention_forward.py [--seq-lens 1 17 100 257]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse
import math

import torch
import torch.nn.functional as F

from pytorch_basis.common import add_device_argument, positive_int, resolve_device, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import (
    flash_attention_forward,
    flash_attention_forward_simple,
    flash_forward_row_trace,
)


def tiles_visited(n: int, block_q: int, block_k: int, causal: bool) -> int:
    """Number of (query block, key block) tiles FlashAttention-2 computes; causal skips those above the diagonal."""
    if not causal:
        return math.ceil(n / block_q) * math.ceil(n / block_k)
    return sum(math.ceil(min(q0 + block_q, n) / block_k) for q0 in range(0, n, block_q))


def worked_trace(n_keys: int = 10, block_k: int = 4, head_dim: int = 2, device="cpu") -> dict:
    """Print the online-softmax state of one query row block by block, beside the plain softmax of the prefix."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(head_dim, generator=g) * 2).to(device)  # a larger q: scores spread, the max moves
    k = torch.randn(n_keys, head_dim, generator=g).to(device)
    v = torch.randn(n_keys, head_dim, generator=g).to(device)
    steps = flash_forward_row_trace(q, k, v, block_k)
    print(f"worked trace: one query row, {n_keys} keys in blocks of {block_k}, D = {head_dim}, sm_scale = 1/sqrt(D)")
    fmt = lambda t: "[" + ", ".join(f"{x:+.4f}" for x in t.tolist()) + "]"  # noqa: E731
    for j, st in enumerate(steps):
        lo, hi = st["keys"]
        prefix = k[:hi] @ q / head_dim**0.5  # plain scores of every key seen so far
        p_plain = torch.softmax(prefix, 0)
        print(f" block {j} (keys {lo}..{hi - 1}) scores {fmt(st['scores'])}")
        print(f"   before: m = {st['m_before']:+.4f}  l = {st['l_before']:.4f}  õ = {fmt(st['o_before'])}")
        print(f"   m_new = {st['m_new']:+.4f}, rescale alpha = e^(m - m_new) = {st['alpha']:.4f}")
        print(f"   after:  m = {st['m_after']:+.4f}  l = {st['l_after']:.4f}  õ = {fmt(st['o_after'])}"
              f"  õ/l = {fmt(st['o_after'] / st['l_after'])}")  # fmt: skip
        print(
            f"   plain softmax of keys 0..{hi - 1}: max = {prefix.max():+.4f}  "
            f"Σ e^(s-max) = {torch.exp(prefix - prefix.max()).sum():.4f}  softmax·V = {fmt(p_plain @ v[:hi])}"
        )
    o = steps[-1]["o_after"] / steps[-1]["l_after"]
    plain = torch.softmax(k @ q / head_dim**0.5, 0) @ v
    print(f" final o = õ / l = {fmt(o)};  softmax(q Kᵀ/sqrt(D)) V = {fmt(plain)}\n")
    return {"q": q, "k": k, "v": v, "steps": steps, "block_k": block_k}


def main(
    batch: int = 2,
    n_head: int = 4,
    n_kv_head: int = 2,
    head_dim: int = 32,
    seq_lens: tuple[int, ...] = (1, 17, 100, 257),
    block_q: int = 64,
    block_k: int = 32,
    trace_keys: int = 10,
    trace_block: int = 4,
    trace_dim: int = 2,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    dev = resolve_device(device)
    seed_everything(seed)
    rep = n_head // n_kv_head
    trace = worked_trace(trace_keys, trace_block, trace_dim, dev)
    rows = []
    print(f"B={batch} H={n_head} H_kv={n_kv_head} D={head_dim} block_q={block_q} block_k={block_k}")
    print(f"{'N':>5} {'causal':>6} {'simple err':>11} {'FA2 err':>9} {'lse err':>9} {'tiles':>6} {'of':>5}")
    for n in seq_lens:
        q = torch.randn(batch, n_head, n, head_dim, device=dev)
        k, v = (torch.randn(batch, n_kv_head, n, head_dim, device=dev) for _ in range(2))
        for causal in (False, True):
            ref = F.scaled_dot_product_attention(
                q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=causal
            )
            o_simple = flash_attention_forward_simple(q, k, v, causal, None, block_q, block_k)
            o, lse = flash_attention_forward(q, k, v, causal, None, block_q, block_k)
            s = q @ k.repeat_interleave(rep, 1).transpose(-2, -1) / head_dim**0.5  # only to check L
            if causal:
                s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=dev).triu(1), float("-inf"))
            row = {
                "N": n,
                "causal": causal,
                "simple_error": (o_simple - ref).abs().max().item(),
                "fa2_error": (o - ref).abs().max().item(),
                "lse_error": (lse - torch.logsumexp(s, dim=-1)).abs().max().item(),
                "tiles": tiles_visited(n, block_q, block_k, causal),
                "tiles_total": tiles_visited(n, block_q, block_k, False),
                "tensors": {"q": q, "k": k, "v": v, "o_simple": o_simple, "o": o, "lse": lse},  # for the tests
            }
            rows.append(row)
            print(
                f"{n:>5} {causal!s:>6} {row['simple_error']:>11.2e} {row['fa2_error']:>9.2e} "
                f"{row['lse_error']:>9.2e} {row['tiles']:>6} {row['tiles_total']:>5}"
            )
    print("causal attention computes roughly half the tiles: those above the diagonal are skipped, not masked")
    return {"rows": rows, "trace": trace}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--n-head", type=positive_int, default=4)
    parser.add_argument("--n-kv-head", type=positive_int, default=2)
    parser.add_argument("--head-dim", type=positive_int, default=32)
    parser.add_argument("--seq-lens", type=positive_int, nargs="+", default=[1, 17, 100, 257])
    parser.add_argument("--block-q", type=positive_int, default=64)
    parser.add_argument("--block-k", type=positive_int, default=32)
    parser.add_argument(
        "--trace-keys", type=positive_int, default=10, help="keys in the worked trace (default: %(default)s)"
    )
    parser.add_argument("--trace-block", type=positive_int, default=4, help="key block of the worked trace")
    parser.add_argument("--trace-dim", type=positive_int, default=2, help="head dim of the worked trace")
    parser.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(parser)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    def _cli():
        args = parse_args()
        args.seq_lens = tuple(args.seq_lens)
        main(**vars(args))

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(_cli, EXPECTED_CLI_ERRORS + (TypeError,))
