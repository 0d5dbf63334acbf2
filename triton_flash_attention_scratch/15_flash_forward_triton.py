"""Step 15 — the flash-attention forward pass as a Triton kernel (``_attn_fwd`` in ``triton_flash.py``).

What this step adds: part 1's tiled forward (``flash_attention_forward`` in ``attention_torch.py``) becomes one
Triton program per (query block, batch·head). Grid = (ceil(N / BLOCK_M), B·H); the program keeps its Q tile
(BLOCK_M × D) in registers and streams K/V tiles of BLOCK_N keys through the online softmax:

    S = Q Kᵀ · sm_scale · log2(e)          scores in log2 units
    m_new = max(m, rowmax(S))     P = exp2(S - m_new)     α = exp2(m - m_new)
    l ← α l + rowsum(P)           acc ← α acc + P V       m ← m_new
    O = acc / l                   (fp32 accumulation, stored in the input dtype)

* **exp2 trick**: exp(x) = 2^(x · log2 e). Folding log2 e into the one multiply by sm_scale lets the loop call the
  hardware ``exp2`` directly (``exp`` is exp2 plus a multiply on GPUs).
* **causal in two stages**: key blocks entirely left of the diagonal block need no mask (stage 1); only the
  diagonal block applies ``i >= j`` (stage 2); blocks to the right are never loaded. This needs BLOCK_M to be a
  multiple of BLOCK_N. The table printed below counts the blocks each query block visits.
* **masks only where needed**: the last key block may stick out past N; its loads read zeros and its scores
  are set to -inf, and stores are masked, so N needs no relation to the tiles (N = 100 below is not a multiple
  of anything). Every other block is whole, so the loop over them (``CHECK_N=False``) loads with no bounds mask
  and skips the per-score compare and select: without a GPU the cost shows in the compiled code (NOTES.md,
  "Registers": 18–23 % fewer instructions per iteration on sm_90, fewer registers).

The result is checked against naive attention and the part-1 PyTorch version, fp32 and fp16 (bf16 on GPU only).

Run:  python triton_flash_attention_scratch/15_flash_forward_triton.py [--seq-len 100 --head-dim 64]
"""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import seed_everything
from triton_flash_attention_scratch.attention_torch import flash_attention_forward, naive_attention
from triton_flash_attention_scratch.triton_flash import (
    INTERPRET,
    INTERPRET_CONFIGS,
    LOG2E,
    attention_forward,
    lesson_parser,
    resolve_kernel_device,
)


def causal_block_schedule(n_ctx: int, block_m: int, block_n: int) -> list[dict]:
    """For each query block: how many key blocks stage 1 (no mask) and stage 2 (diagonal, masked) visit."""
    if block_m % block_n:
        raise ValueError(f"the two-stage causal split needs BLOCK_M % BLOCK_N == 0, got {block_m}, {block_n}")
    rows = []
    for start_m in range(0, n_ctx, block_m):
        unmasked = start_m // block_n  # key blocks [0, start_m)
        masked = math.ceil((min(start_m + block_m, n_ctx) - start_m) / block_n)  # key blocks [start_m, end)
        rows.append({"query_rows": (start_m, min(start_m + block_m, n_ctx)), "unmasked": unmasked, "masked": masked})
    return rows


def main(
    batch: int = 2,
    heads: int = 2,
    seq_len: int = 100,
    head_dim: int = 64,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    dev = resolve_kernel_device(device)
    print(f"device {dev} ({'Triton interpreter' if INTERPRET else 'compiled Triton'})")

    x = torch.linspace(-20, 5, 6, dtype=torch.float64)
    exp2_err = (torch.exp(x) - torch.exp2(x * LOG2E)).abs().max().item()
    print(f"exp(x) vs exp2(x * log2 e) on {x.tolist()}: max diff {exp2_err:.1e}")

    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if dev.type == "cuda" else [])
    results = []
    print(f"\nB={batch} H={heads} N={seq_len} D={head_dim}: max |O_triton - O_ref| (fp32 references)")
    print(f"{'dtype':<10} {'causal':<7} {'vs naive':>10} {'vs part 1':>10} {'out dtype':>14}")
    for dtype in dtypes:
        for causal in (False, True):
            q, k, v = (torch.randn(batch, heads, seq_len, head_dim, device=dev, dtype=dtype) for _ in range(3))
            o, lse = attention_forward(q, k, v, causal=causal)
            ref = naive_attention(q.float(), k.float(), v.float(), causal=causal)
            ref_p1, _ = flash_attention_forward(q.float(), k.float(), v.float(), causal=causal)
            row = {
                "dtype": str(dtype).split(".")[-1],
                "causal": causal,
                "err_naive": (o.float() - ref).abs().max().item(),
                "err_part1": (o.float() - ref_p1).abs().max().item(),
                "out_dtype": o.dtype,
                "tensors": {"q": q, "k": k, "v": v, "o": o, "lse": lse},  # for tests that recompute the reference
            }
            results.append(row)
            print(
                f"{row['dtype']:<10} {causal!s:<7} {row['err_naive']:>10.2e} {row['err_part1']:>10.2e} "
                f"{str(o.dtype):>14}"
            )

    cfg = INTERPRET_CONFIGS["fwd"].kwargs
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    schedule = causal_block_schedule(seq_len, bm, bn)
    total = math.ceil(seq_len / bn)
    print(f"\ncausal schedule with BLOCK_M={bm}, BLOCK_N={bn} (non-causal visits all {total} key blocks every time):")
    for row in schedule:
        print(f"  queries {row['query_rows'][0]:>4}..{row['query_rows'][1] - 1:<4} stage 1 (no mask): "
              f"{row['unmasked']:>3} blocks   stage 2 (masked): {row['masked']} blocks")  # fmt: skip
    visited = sum(r["unmasked"] + r["masked"] for r in schedule)
    print(f"  {visited} of {len(schedule) * total} key-block visits ({visited / (len(schedule) * total):.0%})")
    return {"results": results, "schedule": schedule, "exp2_err": exp2_err}


def parse_args():
    p = lesson_parser(__doc__, batch=2, heads=2, seq_len=100, head_dim=64)
    return p.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
