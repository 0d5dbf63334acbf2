"""Step 14 — Triton in three kernels: vector add, a fused row-wise softmax, a tiled matmul.

What this step adds: the Triton programming model, on the three kernels of ``triton_intro.py``:

* **vector add** — a 1-D grid of programs, each owning BLOCK consecutive elements; ``mask = offsets < n`` guards
  the partial last block (n = 1000 is deliberately not a multiple of BLOCK);
* **fused softmax** — one program per row, the whole row in registers: ``exp(x - max) / Σ exp(x - max)`` with
  one read and one write per element, where eager PyTorch makes several passes over memory;
* **tiled matmul** — a 2-D tile of C per program, ``tl.dot`` on (BLOCK_M × BLOCK_K) @ (BLOCK_K × BLOCK_N) tiles
  accumulated in fp32 over K, with grouped program order for L2 reuse. Flash attention (next step) is this
  matmul with a softmax fused between two of them.

Each result is checked against PyTorch. On a CUDA GPU each kernel is also timed with ``triton.testing.do_bench``
against PyTorch (GB/s for the memory-bound ones, TFLOP/s for matmul); without CUDA the kernels run under Triton's
interpreter on the CPU (``TRITON_INTERPRET=1``, set by the module before ``import triton``), which checks
correctness but says nothing about speed.

Run:  python triton_flash_attention_scratch/14_intro_to_triton.py [--n 1000] [--rows 37 --cols 100]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import add_device_argument, positive_int, seed_everything, seed_int
from triton_flash_attention_scratch.triton_flash import do_bench_ms, resolve_kernel_device
from triton_flash_attention_scratch.triton_intro import INTERPRET, matmul, softmax, vector_add


def benchmark(fn, *, bytes_moved: float = 0.0, flops: float = 0.0) -> dict:
    """Median time of ``fn`` on the GPU (``do_bench`` flushes L2 between runs) and the derived GB/s or TFLOP/s."""
    ms = do_bench_ms(fn)
    return {"ms": ms, "GB/s": bytes_moved / ms * 1e-6, "TFLOP/s": flops / ms * 1e-9}


def benchmark_kernels(dev: torch.device, dt: torch.dtype) -> dict:
    """GPU only: each kernel against its PyTorch twin on large inputs (GB/s or TFLOP/s)."""
    results: dict = {}
    size = dt.itemsize
    big = 1 << 24
    xb, yb = torch.randn(big, device=dev, dtype=dt), torch.randn(big, device=dev, dtype=dt)
    sm = torch.randn(4096, 4096, device=dev, dtype=dt)
    ma, mb = torch.randn(4096, 4096, device=dev, dtype=dt), torch.randn(4096, 4096, device=dev, dtype=dt)
    cases = {
        "vector_add": (lambda: vector_add(xb, yb), lambda: xb + yb, dict(bytes_moved=3 * big * size)),
        "softmax": (lambda: softmax(sm), lambda: torch.softmax(sm, -1), dict(bytes_moved=2 * sm.numel() * size)),
        "matmul": (lambda: matmul(ma, mb), lambda: ma @ mb, dict(flops=2 * 4096**3)),
    }
    print(f"\n{'kernel':<11} {'Triton':>18} {'PyTorch':>18}")
    for name, (tri, ref_fn, work) in cases.items():
        t, r = benchmark(tri, **work), benchmark(ref_fn, **work)
        unit = "TFLOP/s" if "flops" in work else "GB/s"
        results[name] = {"triton": t, "torch": r}
        print(f"{name:<11} {t[unit]:>10.1f} {unit:<7} {r[unit]:>10.1f} {unit:<7}")
    return results


def main(
    n: int = 1000,
    rows: int = 37,
    cols: int = 100,
    m: int = 70,
    k: int = 50,
    n_cols: int = 90,
    dtype: str = "float32",
    bench: bool = True,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    dev = resolve_kernel_device(device)
    dt = getattr(torch, dtype)
    print(f"device {dev}, {'Triton interpreter (CPU)' if INTERPRET else 'compiled Triton'}, dtype {dtype}")
    tol = 1e-5 if dt == torch.float32 else 1e-2
    out: dict = {"errors": {}, "bench": {}}

    # 1. vector add: ceil(n / BLOCK) programs, the last one masked
    x, y = torch.randn(n, device=dev, dtype=dt), torch.randn(n, device=dev, dtype=dt)
    block = 256
    print(f"\nvector add: n={n}, BLOCK={block} -> {-(-n // block)} programs, last one has {n % block or block} lanes")
    c = vector_add(x, y, block=block)
    out["errors"]["vector_add"] = (c - (x + y)).abs().max().item()

    # 2. fused softmax: one program per row, row padded to the next power of two with -inf
    a = torch.randn(rows, cols, device=dev, dtype=dt)
    print(f"softmax: {rows} rows of {cols}, BLOCK = next_power_of_2({cols}) = {1 << (cols - 1).bit_length()}")
    p = softmax(a)
    out["errors"]["softmax"] = (p.float() - torch.softmax(a.float(), dim=-1)).abs().max().item()

    # 3. tiled matmul: (m, k) @ (k, n_cols), none of them multiples of the tiles
    a2, b2 = torch.randn(m, k, device=dev, dtype=dt), torch.randn(k, n_cols, device=dev, dtype=dt)
    print(f"matmul: ({m}, {k}) @ ({k}, {n_cols}) with 64x64 tiles of C, K in steps of 32")
    ref = a2.float() @ b2.float()
    c2 = matmul(a2, b2)
    out["errors"]["matmul"] = ((c2.float() - ref).abs().max() / ref.abs().max()).item()
    # inputs and outputs, for tests that recompute the references themselves
    out["tensors"] = {"x": x, "y": y, "c": c, "a": a, "p": p, "a2": a2, "b2": b2, "c2": c2}

    print("\nmax |Triton - PyTorch| (matmul: relative to max |C|):")
    for name, err in out["errors"].items():
        status = "OK" if err < tol else "MISMATCH"
        print(f"  {name:<11} {err:.2e}  {status}")
    out["ok"] = all(e < tol for e in out["errors"].values())

    if bench and dev.type == "cuda":
        out["bench"] = benchmark_kernels(dev, dt)
    elif bench:
        print("\ntiming needs a CUDA GPU: the interpreter runs each program in Python, so its speed means nothing")
    return out


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=positive_int, default=1000, help="vector length (default: %(default)s)")
    p.add_argument("--rows", type=positive_int, default=37, help="softmax rows (default: %(default)s)")
    p.add_argument("--cols", type=positive_int, default=100, help="softmax row length (default: %(default)s)")
    p.add_argument("--m", type=positive_int, default=70, help="matmul rows of A (default: %(default)s)")
    p.add_argument("--k", type=positive_int, default=50, help="matmul inner dim (default: %(default)s)")
    p.add_argument("--n-cols", type=positive_int, default=90, help="matmul columns of B (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--no-bench", dest="bench", action="store_false", help="skip the GPU timing")
    p.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(p)
    return p.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
