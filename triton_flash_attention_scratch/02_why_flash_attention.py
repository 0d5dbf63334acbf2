"""Step 2: why flash attention — the memory traffic and the memory footprint of the N × N matrix.

A GPU computes far faster than it reads DRAM (HBM): an H100 does ~990 TFLOP/s of bf16 matmul but moves
~3.35 TB/s, so an operation doing fewer than ~300 FLOPs per byte waits on memory. Standard attention runs as
three kernels and round-trips the N × N matrices S and P through DRAM (FlashAttention paper, Algorithm 0):

    bytes_naive = B · H · (4 N D + 4 N²) · bytes_per_element

The tiled algorithm (steps 4-6) keeps one block of S and P on chip, never writes them, and streams K and V
past each block of block_q queries:

    bytes_tiled = B · H · ((2 N D + 2 N D · ceil(N / block_q)) · bytes_per_element + 4 N)      (+ 4 N for L)

For long sequences the ratio tends to 4 N² / (2 N² D / block_q) = 2 · block_q / D: only 2x at block_q = D = 64,
which is why the kernels use the largest block that fits on chip (and why the re-reads of K and V mostly hit
the L2 cache in practice). The *footprint* is where the difference is absolute: naive attention allocates B·H·N² scores,
the tiled loop only B·H·N·D outputs plus a fixed-size tile. This step prints the byte table and measures the
peak memory allocated by both PyTorch implementations at a few N (CPU: profiler memory events; CUDA:
``torch.cuda.max_memory_allocated``).

Run:  python triton_flash_attention_scratch/02_why_flash_attention.py [--seq-lens 256 512 1024 2048]
(the CPU profiler slows the tiled loop: a few seconds per size at N = 2048)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch

from pytorch_basis.common import add_device_argument, positive_int, resolve_device, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import (
    attention_bytes_naive,
    attention_bytes_tiled,
    flash_attention_forward,
    naive_attention,
    peak_memory_bytes,
)


def main(
    batch: int = 1,
    n_head: int = 1,
    head_dim: int = 64,
    seq_lens: tuple[int, ...] = (256, 512, 1024),
    block: int = 64,
    dtype_bytes: int = 2,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    dev = resolve_device(device)
    seed_everything(seed)
    B, H, D = batch, n_head, head_dim

    print(f"DRAM traffic of one forward pass, B={B} H={H} D={D}, {dtype_bytes}-byte elements, block_q={block}")
    print(f"{'N':>7} {'naive MB':>10} {'of which S,P':>13} {'tiled MB':>10} {'naive/tiled':>12}")
    traffic = []
    for N in (*seq_lens, 8192, 32768):
        naive = attention_bytes_naive(B, H, N, D, dtype_bytes)
        tiled = attention_bytes_tiled(B, H, N, D, dtype_bytes, block_q=block)
        sp = B * H * 4 * N * N * dtype_bytes
        traffic.append({"N": N, "naive": naive, "tiled": tiled})
        print(f"{N:>7} {naive / 1e6:>10.2f} {sp / naive:>12.0%} {tiled / 1e6:>10.2f} {naive / tiled:>12.2f}")

    print(f"\npeak memory allocated during one forward (fp32, inputs excluded), device {dev.type}")
    print(f"{'N':>7} {'naive KiB':>11} {'tiled KiB':>11} {'B·H·N² floats KiB':>19}")
    peaks = []
    for N in seq_lens:
        q, k, v = (torch.randn(B, H, N, D, device=dev) for _ in range(3))
        naive = peak_memory_bytes(lambda q=q, k=k, v=v: naive_attention(q, k, v, causal=True), dev)
        tiled = peak_memory_bytes(lambda q=q, k=k, v=v: flash_attention_forward(q, k, v, True, None, block, block), dev)
        peaks.append({"N": N, "naive": naive, "tiled": tiled})
        print(f"{N:>7} {naive / 1024:>11.0f} {tiled / 1024:>11.0f} {B * H * N * N * 4 / 1024:>19.0f}")
    for a, b in zip(peaks, peaks[1:]):
        print(
            f"N {a['N']} -> {b['N']} (x{b['N'] / a['N']:.0f}): naive peak x{b['naive'] / a['naive']:.2f}, "
            f"tiled peak x{b['tiled'] / a['tiled']:.2f}"
        )
    return {"traffic": traffic, "peaks": peaks}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--n-head", type=positive_int, default=1)
    parser.add_argument("--head-dim", type=positive_int, default=64)
    parser.add_argument("--seq-lens", type=positive_int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--block", type=positive_int, default=64)
    parser.add_argument("--dtype-bytes", type=positive_int, default=2, help="bytes per element for the traffic table")
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
