"""Step 5: block (tiled) matrix multiplication — C = A B one tile at a time.

Split A (M × K) into row blocks and B (K × N) into column blocks. Tile (i, j) of C needs only row block i of A
and column block j of B, and the dot products along K can be summed in chunks:

    C[i0:i1, j0:j1] = Σ_{k0 = 0, block_k, 2·block_k, ...}  A[i0:i1, k0:k1] · B[k0:k1, j0:j1]

This is how every GPU matmul works: one program (thread block) owns one tile of C, keeps its accumulator in
registers, and streams block_m × block_k tiles of A and block_k × block_n tiles of B through fast on-chip
memory. Each element loaded from DRAM is reused block_n (or block_m) times instead of once, which is what
lifts the arithmetic intensity above the memory-bandwidth limit (step 2). Flash attention is two of these
matmuls per tile with a softmax in between. Shapes need not be multiples of the blocks: the last tiles are
smaller (a kernel pads them with zeros under a mask instead, which adds 0 to every dot product).

Run:  python triton_flash_attention_scratch/05_block_matmul.py [--m 100 --k 70 --n 45 --block-m 32 ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse
import math

import torch

from pytorch_basis.common import positive_int, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import block_matmul


def main(
    m: int = 100, k: int = 70, n: int = 45, block_m: int = 32, block_n: int = 16, block_k: int = 16, seed: int = 0
) -> dict:
    seed_everything(seed)
    a, b = torch.randn(m, k), torch.randn(k, n)
    c = block_matmul(a, b, block_m, block_n, block_k)
    err = (c - a @ b).abs().max().item()
    tiles = (math.ceil(m / block_m), math.ceil(n / block_n), math.ceil(k / block_k))
    print(f"A {m}x{k} @ B {k}x{n} with tiles {block_m}x{block_n} (K chunks of {block_k})")
    print(
        f"C is covered by {tiles[0]} x {tiles[1]} = {tiles[0] * tiles[1]} tiles, each summing {tiles[2]} "
        f"partial products; ragged last tiles: M {m % block_m or block_m}, N {n % block_n or block_n}, "
        f"K {k % block_k or block_k}"
    )
    print(f"max |block_matmul - A @ B| = {err:.2e}")
    # DRAM reads (in elements) if every tile reloads its inputs: A is read once per column of tiles, B once per row
    loads_tiled = m * k * tiles[1] + k * n * tiles[0]
    loads_naive = 2 * m * n * k  # one A and one B element per multiply-add when nothing is reused
    print(
        f"element loads: {loads_naive} without reuse vs {loads_tiled} tiled "
        f"({loads_naive / loads_tiled:.1f}x fewer; larger tiles -> more reuse)"
    )
    # batched operands broadcast like torch.matmul
    a3, b3 = torch.randn(3, 1, 17, 9), torch.randn(4, 9, 5)
    c3 = block_matmul(a3, b3, 8, 4, 4)
    err_batched = (c3 - a3 @ b3).abs().max().item()
    print(f"batched (3, 1, 17, 9) @ (4, 9, 5): max error {err_batched:.2e}")
    return {
        "a": a,
        "b": b,
        "c": c,
        "max_error": err,
        "max_error_batched": err_batched,
        "tiles": tiles,
        "batched": (a3, b3, c3),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("m", 100), ("k", 70), ("n", 45), ("block-m", 32), ("block-n", 16), ("block-k", 16)):
        parser.add_argument(f"--{name}", type=positive_int, default=default)
    parser.add_argument("--seed", type=seed_int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
