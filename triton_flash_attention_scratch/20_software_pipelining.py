"""Step 20 — Triton tricks: software pipelining with ``num_stages``.

What this step adds: the forward loop does, per key block, *load K_j, V_j from HBM* then *compute with them*.
Run naively, the tensor cores wait for every load. With ``num_stages = s`` the compiler rewrites the ``for`` loop
(``tl.range`` in the kernels) into a pipeline: while block j is being computed, the loads of blocks j+1 … j+s-1
are already in flight (``cp.async`` on Ampere, TMA on Hopper) into s rotating shared-memory buffers:

    stages=1:  load K0 | math 0 | load K1 | math 1 | load K2 | math 2          memory and math take turns
    stages=3:  load K0  load K1  load K2
                        math 0 · load K3
                                 math 1 · load K4 ...                       the load latency is hidden

The price is shared memory: s × (K tile + V tile) = s × 2 × BLOCK_N × D × 2 bytes (fp16). Too many stages spill
out of shared memory (the config fails to compile, which the autotuner's pruning avoids) or cost occupancy
(fewer programs per SM), so the best s depends on the tile and the GPU: that is why ``num_stages`` is part of the
autotuned config space (step 19).

On CUDA this lesson times the forward kernel with one fixed tile and num_stages = 1 … 4 (TFLOP/s, do_bench).
Under the interpreter ``num_stages`` is accepted and ignored (there is no memory hierarchy to overlap): the
lesson checks that the results do not depend on it and prints the shared-memory cost instead.

Run:  python triton_flash_attention_scratch/20_software_pipelining.py [--seq-len 4096 --head-dim 64]  (GPU)
"""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import seed_everything
from triton_flash_attention_scratch.triton_flash import (
    INTERPRET,
    attention_flops,
    attention_forward,
    do_bench_ms,
    lesson_parser,
    padded_head_dim,
    resolve_kernel_device,
)


def stage_smem_bytes(num_stages: int, block_n: int, head_dim: int, itemsize: int = 2) -> int:
    """Shared memory of the pipelined K and V tiles: num_stages × 2 tiles × BLOCK_N × D elements."""
    return num_stages * 2 * block_n * padded_head_dim(head_dim) * itemsize


def main(
    batch: int = 4,
    heads: int = 16,
    seq_len: int = 4096,
    head_dim: int = 64,
    block_m: int = 128,
    block_n: int = 64,
    num_warps: int = 8,
    stages: tuple[int, ...] = (1, 2, 3, 4),
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    dev = resolve_kernel_device(device)
    print(f"forward tile BLOCK_M={block_m}, BLOCK_N={block_n}, D={head_dim}: shared memory of the K/V pipeline")
    smem = {s: stage_smem_bytes(s, block_n, head_dim) for s in stages}
    for s, b in smem.items():
        print(f"  num_stages={s}: {b / 1024:>5.0f} KiB  (an H100 SM has up to 228 KiB)")
    out = {"smem": smem, "tflops": {}}

    if INTERPRET:
        B, H, N = 1, 2, 70  # tiny: the interpreter is slow and num_stages is only accepted, not used
        q, k, v = (torch.randn(B, H, N, head_dim, device=dev) for _ in range(3))
        outs = [
            attention_forward(q, k, v, causal=True, config={"BLOCK_M": 32, "BLOCK_N": 16, "num_stages": s})[0]
            for s in (1, 3)
        ]
        out["max_diff_between_stages"] = (outs[0] - outs[1]).abs().max().item()
        print(f"\ninterpreter: num_stages=1 vs 3 give the same output (max diff {out['max_diff_between_stages']})")
        print("timing the pipeline needs a CUDA GPU")
        return out

    for causal in (False, True):
        q, k, v = (torch.randn(batch, heads, seq_len, head_dim, device=dev, dtype=torch.float16) for _ in range(3))
        flops = attention_flops(batch, heads, seq_len, head_dim, causal)
        print(f"\nB={batch} H={heads} N={seq_len} D={head_dim} fp16 causal={causal}")
        for s in stages:
            cfg = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": s}
            try:
                ms = do_bench_ms(partial(attention_forward, q, k, v, causal=causal, config=cfg))
            except Exception as e:  # e.g. out of shared memory for a deep pipeline
                print(f"  num_stages={s}: failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
                continue
            out["tflops"][(causal, s)] = flops / ms * 1e-9
            print(f"  num_stages={s}: {ms:8.3f} ms  {flops / ms * 1e-9:7.1f} TFLOP/s")
    return out


def parse_args():
    p = lesson_parser(__doc__, batch=4, heads=16, seq_len=4096, head_dim=64, block_m=128, block_n=64, num_warps=8)
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4])
    args = p.parse_args()
    args.stages = tuple(args.stages)
    return args


if __name__ == "__main__":
    main(**vars(parse_args()))
