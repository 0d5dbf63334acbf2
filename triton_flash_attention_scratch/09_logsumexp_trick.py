"""Step 9: the logsumexp trick, and why the forward pass saves only L = m + log(l).

    LSE(x) = log Σ_j e^(x_j) = m + log Σ_j e^(x_j - m),    m = max_j x_j

The left form overflows (e^1000 = inf) or underflows (log 0 = -inf) for large |x|; the right form is exact
and safe for the same reason as safe softmax (step 3). The online softmax of step 4 ends with m_N and l_N,
so it gets LSE for free: L = m_N + log(l_N).

Why that is all the backward pass needs: softmax is e^(x - LSE(x)), so with L_i saved for each query row,

    P_ij = e^(S_ij - m_i) / l_i = e^(S_ij - (m_i + log l_i)) = e^(S_ij - L_i),

i.e. any tile of P can be rebuilt *exactly* from a recomputed tile of S and one number per row — no N × N
matrix saved, and no separate m and l (one vector instead of two). As a bonus ∂LSE/∂x = softmax(x).
This step checks all of that against ``torch.logsumexp``, ``torch.softmax`` and autograd.

Run:  python triton_flash_attention_scratch/09_logsumexp_trick.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch

from pytorch_basis.common import positive_int, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import flash_attention_forward, logsumexp, online_logsumexp


def main(seq_len: int = 100, head_dim: int = 16, block: int = 32, seed: int = 0) -> dict:
    seed_everything(seed)
    out = {}
    print(f"{'x':24s} {'log(sum(exp(x)))':>18s} {'m + log Σ e^(x-m)':>18s} {'online':>10s} {'torch':>10s}")
    for name, x in (
        ("[1, 2, 3]", torch.tensor([1.0, 2, 3])),
        ("[1000, 999, 998]", torch.tensor([1000.0, 999, 998])),
        ("[-1000, -1001, -1002]", torch.tensor([-1000.0, -1001, -1002])),
    ):
        naive = torch.log(torch.exp(x).sum()).item()
        safe, online, ref = logsumexp(x).item(), online_logsumexp(x).item(), torch.logsumexp(x, 0).item()
        out[name] = {"naive": naive, "safe": safe, "online": online, "reference": ref}
        print(f"{name:24s} {naive:>18.4f} {safe:>18.4f} {online:>10.4f} {ref:>10.4f}")

    # ∂LSE/∂x = softmax(x)
    x = torch.randn(5, 7, requires_grad=True)
    logsumexp(x).sum().backward()
    out["grad_is_softmax_error"] = (x.grad - torch.softmax(x.detach(), -1)).abs().max().item()
    print(f"max |∂LSE/∂x - softmax(x)| = {out['grad_is_softmax_error']:.1e}")

    # rebuild one tile of P from L only
    q, k, v = (torch.randn(1, 1, seq_len, head_dim) for _ in range(3))
    _, lse = flash_attention_forward(q, k, v, causal=True, block_q=block, block_k=block)
    s = q @ k.transpose(-2, -1) / head_dim**0.5
    s = s.masked_fill(torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1), float("-inf"))
    p_ref = torch.softmax(s, dim=-1)
    r0, c0 = min(block, seq_len - 1), 0  # a tile below the diagonal
    s_tile = s[..., r0 : r0 + block, c0 : c0 + block]  # recomputed from Q and K in a real backward
    p_tile = torch.exp(s_tile - lse[..., r0 : r0 + block, None])
    out["tile_error"] = (p_tile - p_ref[..., r0 : r0 + block, c0 : c0 + block]).abs().max().item()
    out["lse_error"] = (lse - torch.logsumexp(s, -1)).abs().max().item()
    print(f"flash forward's L vs torch.logsumexp of the full rows: {out['lse_error']:.1e}")
    print(f"tile P[{r0}:{r0 + block}, {c0}:{c0 + block}] = e^(S_tile - L) vs the full softmax: {out['tile_error']:.1e}")
    print(f"saved for backward: L = {seq_len} floats per head instead of P = {seq_len * seq_len}")
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=positive_int, default=100)
    parser.add_argument("--head-dim", type=positive_int, default=16)
    parser.add_argument("--block", type=positive_int, default=32)
    parser.add_argument("--seed", type=seed_int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
