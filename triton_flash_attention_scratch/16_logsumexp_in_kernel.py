"""Step 16 — the logsumexp trick inside the kernel: save L, not P.

What this step adds: at the end of its loop the forward program knows, for each of its rows, the running max
``m`` and normaliser ``l`` (both in log2 units, since the scores were multiplied by log2 e). One more line stores

    L_i = ln 2 · (m_i + log2 l_i) = log Σ_j exp(S_ij)          (natural log, fp32, B·H·N numbers)

and that is all the backward needs to rebuild any tile of the attention matrix without a max or a sum:

    P_ij = exp(S_ij - L_i) = exp2(S_ij · log2 e - L_i · log2 e)

This lesson checks the kernel's L against ``torch.logsumexp`` of the explicit scores and against part 1, shows
that exp(S - L) rebuilds P exactly (each row sums to 1), and compares the memory of L with that of P.

Run:  python triton_flash_attention_scratch/16_logsumexp_in_kernel.py [--seq-len 77 --head-dim 32]
"""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import seed_everything
from triton_flash_attention_scratch.attention_torch import flash_attention_forward
from triton_flash_attention_scratch.triton_flash import attention_forward, lesson_parser, resolve_kernel_device


def main(
    batch: int = 1,
    heads: int = 2,
    seq_len: int = 77,
    head_dim: int = 32,
    causal: bool = True,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    dev = resolve_kernel_device(device)
    B, H, N, D = batch, heads, seq_len, head_dim
    q, k, v = (torch.randn(B, H, N, D, device=dev) for _ in range(3))
    sm_scale = 1.0 / math.sqrt(D)
    o, lse = attention_forward(q, k, v, causal=causal, sm_scale=sm_scale)
    print(f"kernel outputs: O {tuple(o.shape)} {o.dtype}, L {tuple(lse.shape)} {lse.dtype}")

    s = (q @ k.transpose(-2, -1)) * sm_scale  # (B, H, N, D) @ (B, H, D, N) -> (B, H, N, N)
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool, device=dev).triu(1), float("-inf"))
    lse_ref = torch.logsumexp(s, dim=-1)  # (B, H, N)
    _, lse_part1 = flash_attention_forward(q, k, v, causal=causal, sm_scale=sm_scale)
    err_ref = (lse - lse_ref).abs().max().item()
    err_part1 = (lse - lse_part1).abs().max().item()
    print(f"max |L - torch.logsumexp(S)| = {err_ref:.2e}    max |L - L_part1| = {err_part1:.2e}")

    p_rebuilt = torch.exp(s - lse[..., None])  # P = exp(S - L): no max, no sum
    p_ref = torch.softmax(s, dim=-1)
    err_p = (p_rebuilt - p_ref).abs().max().item()
    row_sums = p_rebuilt.sum(-1)
    print(f"exp(S - L) vs softmax(S): max diff {err_p:.2e}; row sums in [{row_sums.min():.6f}, {row_sums.max():.6f}]")

    bytes_l = lse.numel() * 4
    bytes_p = B * H * N * N * 2  # P in fp16, what a non-flash backward would keep
    print(f"memory saved for backward: L = {bytes_l:,} bytes vs P = {bytes_p:,} bytes (fp16): {bytes_p / bytes_l:.0f}x")
    for n in (1024, 8192):
        print(f"  at N = {n}, per (batch, head): L {n * 4 / 1024:.0f} KiB vs P {n * n * 2 / 2**20:.0f} MiB")
    return {
        "err_lse_ref": err_ref, "err_lse_part1": err_part1, "err_p": err_p, "row_sums": row_sums,
        "tensors": {"q": q, "k": k, "v": v, "lse": lse, "p_rebuilt": p_rebuilt},
    }  # fmt: skip


def parse_args():
    p = lesson_parser(__doc__, batch=1, heads=2, seq_len=77, head_dim=32)
    p.add_argument("--no-causal", dest="causal", action="store_false")
    return p.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
