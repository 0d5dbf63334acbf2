"""Step 17 — the flash-attention backward pass in Triton: preprocess, dK/dV kernel, dQ kernel.

What this step adds: the three backward kernels of ``triton_flash.py``. With ``P_ij = exp(S_ij - L_i)`` rebuilt
tile by tile from the saved logsumexp (step 16):

    D_i  = rowsum(dO_i ∘ O_i)                                 _attn_bwd_preprocess, one program per query block
    dV_j = Σ_i P_ijᵀ dO_i      dP = dO Vᵀ      dS = P ∘ (dP - D)
    dK_j = sm_scale · Σ_i dS_ijᵀ Q_i                            _attn_bwd_dkdv: a key block stays in registers,
                                                                the program loops over query blocks
    dQ_i = sm_scale · Σ_j dS_ij K_j                             _attn_bwd_dq: a query block stays, loops over keys

Why D: the softmax backward needs Σ_j P_ij dP_ij per row, which would need a whole row of P; but
Σ_j P_ij dP_ij = Σ_j P_ij (dO_i · V_j) = dO_i · (Σ_j P_ij V_j) = dO_i · O_i — one dot product per row, computed
once before the two big kernels. Splitting dK/dV from dQ means every program *owns* the rows it writes: no atomic
adds. Causal runs skip the fully masked tiles: the dK/dV program of keys [j0, j1) starts at query j0 and the dQ
program of queries [i0, i1) stops at key i1; only the diagonal tiles are masked. The dQ loop, like the forward,
also leaves the bounds mask to the partial last key block; the dK/dV loop drops it when every query block is
whole (``EVEN_M``: N a multiple of BLOCK_M, decided at launch), because splitting off its tail costs registers
(NOTES.md, "Registers").

Checks: D identity, Triton gradients vs autograd of naive attention and the part-1 PyTorch backward, fp32 and
fp16, causal and not, N not a multiple of the tiles; the fraction of tiles a causal backward visits.

Run:  python triton_flash_attention_scratch/17_flash_backward_triton.py [--seq-len 90 --head-dim 32]
"""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import seed_everything
from triton_flash_attention_scratch.attention_torch import flash_attention_backward, naive_attention
from triton_flash_attention_scratch.triton_flash import (
    INTERPRET_CONFIGS,
    attention_backward,
    attention_forward,
    lesson_parser,
    resolve_kernel_device,
)


def causal_tiles_visited(n_ctx: int, block_m: int, block_n: int) -> tuple[int, int]:
    """(tiles the causal dK/dV kernel visits, tiles in the full N×N grid); needs BLOCK_N % BLOCK_M == 0."""
    n_q, n_k = math.ceil(n_ctx / block_m), math.ceil(n_ctx / block_n)
    visited = sum(n_q - (j0 // block_m) for j0 in range(0, n_ctx, block_n))  # query blocks from the key block on
    return visited, n_q * n_k


def main(
    batch: int = 1,
    heads: int = 2,
    seq_len: int = 90,
    head_dim: int = 32,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    dev = resolve_kernel_device(device)
    B, H, N, D = batch, heads, seq_len, head_dim

    # the D identity: rowsum(P ∘ dP) == rowsum(dO ∘ O)
    q, k, v, do = (torch.randn(B, H, N, D, device=dev, dtype=torch.float64) for _ in range(4))
    p = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(D), dim=-1)  # (B, H, N, N)
    o = p @ v
    dp = do @ v.transpose(-2, -1)  # (B, H, N, N)
    d_identity = ((p * dp).sum(-1) - (do * o).sum(-1)).abs().max().item()
    print(f"max |rowsum(P * dP) - rowsum(dO * O)| = {d_identity:.1e}  (float64)")

    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if dev.type == "cuda" else [])
    results = []
    print(f"\nB={B} H={H} N={N} D={D}: max |grad_triton - grad_ref|, references in fp32")
    print(f"{'dtype':<9} {'causal':<7} {'dQ':>9} {'dK':>9} {'dV':>9} {'vs part 1 (max)':>16}")
    for dtype in dtypes:
        for causal in (False, True):
            q, k, v, do = (torch.randn(B, H, N, D, device=dev, dtype=dtype) for _ in range(4))
            o, lse = attention_forward(q, k, v, causal=causal)
            grads = attention_backward(q, k, v, o, lse, do, causal=causal)
            q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
            naive_attention(q32, k32, v32, causal=causal).backward(do.float())
            errs = [(g.float() - r.grad).abs().max().item() for g, r in zip(grads, (q32, k32, v32))]
            part1 = flash_attention_backward(
                q.float(), k.float(), v.float(), o.float(), lse, do.float(), causal=causal, sm_scale=None
            )
            err_p1 = max((g.float() - r).abs().max().item() for g, r in zip(grads, part1))
            name = str(dtype).split(".")[-1]
            tensors = {"q": q, "k": k, "v": v, "do": do, "grads": grads}  # for tests that recompute the reference
            results.append({"dtype": name, "causal": causal, "dq": errs[0], "dk": errs[1], "dv": errs[2],
                            "part1": err_p1, "tensors": tensors})  # fmt: skip
            print(f"{name:<9} {causal!s:<7} {errs[0]:>9.2e} {errs[1]:>9.2e} {errs[2]:>9.2e} {err_p1:>16.2e}")

    cfg = INTERPRET_CONFIGS["dkdv"].kwargs
    print(f"\ncausal tile skipping, dK/dV kernel with BLOCK_M={cfg['BLOCK_M']}, BLOCK_N={cfg['BLOCK_N']}:")
    for n in (N, 1024, 8192):
        visited, total = causal_tiles_visited(n, cfg["BLOCK_M"], cfg["BLOCK_N"])
        print(f"  N={n:>5}: {visited:>7} of {total:>7} tiles ({visited / total:.0%})")
    return {"d_identity": d_identity, "results": results}


def parse_args():
    p = lesson_parser(__doc__, batch=1, heads=2, seq_len=90, head_dim=32)
    return p.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
