"""Step 4: online softmax — the normalizer in one pass, with a running max and a running sum.

Safe softmax reads each row three times: m = max x, l = Σ e^(x - m), then e^(x - m) / l. The online version
(Milakov & Gimelshein, 2018) fuses the first two. Walk the row left to right (one element, or one block of
columns at a time) and keep

    m_j = max(m_{j-1}, x_j)
    l_j = l_{j-1} · e^(m_{j-1} - m_j) + e^(x_j - m_j)          m_0 = -inf, l_0 = 0

Invariant (what the loop maintains), for every prefix x_1 .. x_j:

    m_j = max_{i ≤ j} x_i        and        l_j = Σ_{i ≤ j} e^(x_i - m_j)

Proof by induction. j = 1: m_1 = x_1 and l_1 = 0 · e^(-inf) + e^0 = 1 = e^(x_1 - m_1). Step j-1 -> j: m_j is the
max of the prefix max and x_j, i.e. the new prefix max; and

    l_{j-1} · e^(m_{j-1} - m_j) = Σ_{i<j} e^(x_i - m_{j-1}) · e^(m_{j-1} - m_j) = Σ_{i<j} e^(x_i - m_j),

so adding e^(x_j - m_j) gives Σ_{i ≤ j} e^(x_i - m_j).  ∎  At the end, softmax(x)_i = e^(x_i - m_N) / l_N.

The factor e^(m_{j-1} - m_j) ≤ 1 is the whole trick: when a bigger value arrives, everything summed so far is
rescaled to the new reference. Flash attention applies it block-wise, and to the output accumulator as well.
This step runs the loop, prints the trace, and checks the invariant at every step against torch's own
prefix max and prefix sum.

Run:  python triton_flash_attention_scratch/04_online_softmax.py [--length 10 --block-size 1]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch

from pytorch_basis.common import finite_float, positive_int, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import online_softmax_trace


def check_invariant(x: torch.Tensor, ms: list[torch.Tensor], ls: list[torch.Tensor], block_size: int) -> float:
    """Largest violation of m_j = max(x[:j]) and l_j = Σ e^(x[:j] - m_j) over all steps (computed with torch)."""
    worst = 0.0
    for t, (m, l) in enumerate(zip(ms, ls)):
        prefix = x[..., : (t + 1) * block_size]
        m_ref = prefix.amax(dim=-1)
        l_ref = torch.exp(prefix - m_ref[..., None]).sum(dim=-1)
        worst = max(worst, (m - m_ref).abs().max().item(), ((l - l_ref).abs() / l_ref).max().item())
    return worst


def main(rows: int = 4, length: int = 10, block_size: int = 1, scale: float = 5.0, seed: int = 0) -> dict:
    seed_everything(seed)
    x = torch.randn(rows, length) * scale
    p, ms, ls = online_softmax_trace(x, block_size)
    print(f"row 0: {[round(v, 2) for v in x[0].tolist()]}")
    head = "x_j" if block_size == 1 else "max blk"  # block mode: show the block's largest value
    print(f"{'step':>4} {head:>8} {'m_j':>8} {'l_j':>10}   rescale e^(m_(j-1) - m_j)")
    m_prev = float("-inf")
    for t, (m, l) in enumerate(zip(ms, ls)):
        xs = x[0, t * block_size : (t + 1) * block_size]
        rescale = torch.exp(torch.tensor(m_prev - m[0].item())).item()
        label = f"{xs.max().item():8.2f}" if block_size > 1 else f"{xs.item():8.2f}"
        print(f"{t + 1:>4} {label} {m[0].item():8.2f} {l[0].item():10.4f}   {rescale:.4f}")
        m_prev = m[0].item()
    violation = check_invariant(x, ms, ls, block_size)
    err = (p - torch.softmax(x, dim=-1)).abs().max().item()
    print(f"invariant m_j = max(x[:j]), l_j = Σ e^(x[:j] - m_j): largest violation over all steps {violation:.2e}")
    print(f"max |online softmax - torch.softmax| = {err:.2e}")
    return {"x": x, "p": p, "ms": ms, "ls": ls, "invariant_violation": violation, "max_error": err}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=4)
    parser.add_argument("--length", type=positive_int, default=10)
    parser.add_argument(
        "--block-size", type=positive_int, default=1, help="columns consumed per step (1 = element-wise)"
    )
    parser.add_argument("--scale", type=finite_float, default=5.0, help="std of the random logits")
    parser.add_argument("--seed", type=seed_int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
