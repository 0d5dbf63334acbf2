"""Step 21 — running the code: correctness on this device, then (CUDA) a TFLOP/s benchmark against SDPA.

What this step adds: the check-then-measure routine for the whole kernel.

1. **Correctness** on the current device: ``flash_attention`` forward and gradients vs
   ``F.scaled_dot_product_attention`` (fp32 and fp16; bf16 too on a GPU), causal and not, with a sequence length
   that is not a multiple of any tile. Runs everywhere (under Triton's interpreter on a CPU).
2. **Benchmark** (CUDA only): forward, backward and forward+backward of
     * ``triton``  — this chapter's kernels (autotuned; the first call per shape tunes and is not timed),
     * ``sdpa``    — ``F.scaled_dot_product_attention`` forced to its FlashAttention-2 backend,
     * ``part1``   — the PyTorch tiled algorithm of part 1 (slow Python loops: only up to ``--part1-max-n``),
   at N = 1k … 16k, D = 64 and 128, fp16 and bf16, causal and not, timed with ``triton.testing.do_bench``
   (median, L2 flushed). Throughput counts the useful FLOPs:

       forward  = 4 · B · H · N² · D        (two N×N×D matmuls, 2 FLOPs per multiply-add), × 0.5 when causal
       backward = 2.5 × forward             (five matmuls instead of two)

   B·N is held at 16k tokens, H = 2048 / D (model width 2048). Results go to ``out/triton_flash_attention/``
   as a Markdown table (``benchmark.md``) and JSON, with device, versions and the fraction of the GPU's dense
   fp16/bf16 peak where the GPU is known.

Without CUDA the lesson says that timing needs a GPU: the interpreter emulates each program with NumPy.

Run:  python triton_flash_attention_scratch/21_running_the_code_benchmark.py [--seq-lens 1024 4096]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.nn.functional as F

from pytorch_basis.common import add_device_argument, atomic_write_text, out_dir, seed_everything
from triton_flash_attention_scratch.attention_torch import flash_attention_torch
from triton_flash_attention_scratch.triton_flash import (
    INTERPRET,
    attention_flops,
    do_bench_ms,
    flash_attention,
    resolve_kernel_device,
)

# Dense (no sparsity) fp16/bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "RTX 4090": 165.2}
TOKENS = 16384
MODEL_WIDTH = 2048


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():  # "H100 PCIe" is checked before the "H100" prefix of the SXM part
        if all(word in device_name for word in key.split()):
            return value
    return None


def check_correctness(dev: torch.device, seq_len: int = 45, head_dim: int = 32) -> list[dict]:
    """Max |triton - SDPA| of O, dQ, dK, dV for each dtype and causality (fp32 references for low precision)."""
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if dev.type == "cuda" else [])
    rows = []
    for dtype in dtypes:
        for causal in (False, True):
            q, k, v = (torch.randn(2, 2, seq_len, head_dim, device=dev, dtype=dtype, requires_grad=True)
                       for _ in range(3))  # fmt: skip
            o = flash_attention(q, k, v, causal=causal)
            do = torch.randn_like(o)
            grads = torch.autograd.grad(o, (q, k, v), do)
            q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
            ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
            ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
            err = max(
                (a.float() - b).abs().max().item() for a, b in zip((o, *grads), (ref, *ref_grads))
            )  # worst of O, dQ, dK, dV
            tol = 1e-4 if dtype == torch.float32 else (1e-2 if dtype == torch.float16 else 3e-2)
            rows.append({"dtype": str(dtype).split(".")[-1], "causal": causal, "max_err": err, "ok": err < tol})
    return rows


def _impl_fn(impl: str, causal: bool):
    if impl == "triton":
        return lambda q, k, v: flash_attention(q, k, v, causal=causal)
    if impl == "sdpa":

        def sdpa_flash(q, k, v):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return sdpa_flash
    if impl == "part1":
        return lambda q, k, v: flash_attention_torch(q, k, v, causal=causal)
    raise ValueError(f"unknown impl {impl!r}")


def bench_one(impl: str, N: int, D: int, dtype: torch.dtype, causal: bool, dev: torch.device) -> dict:
    """Time forward, backward and forward+backward of one implementation; return ms and TFLOP/s of each."""
    B, H = max(1, TOKENS // N), MODEL_WIDTH // D
    fn = _impl_fn(impl, causal)
    q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, N, D, device=dev, dtype=dtype)
    o = fn(q, k, v)  # warm-up (and autotuning for triton)
    o.backward(do)
    result = {"impl": impl, "N": N, "D": D, "B": B, "H": H, "dtype": str(dtype).split(".")[-1], "causal": causal}
    with torch.no_grad():
        result["fwd_ms"] = do_bench_ms(lambda: fn(q, k, v))
    o = fn(q, k, v)
    result["bwd_ms"] = do_bench_ms(lambda: o.backward(do, retain_graph=True), grad_to_none=[q, k, v])
    result["fwd_bwd_ms"] = do_bench_ms(lambda: fn(q, k, v).backward(do), grad_to_none=[q, k, v])
    for mode in ("fwd", "bwd", "fwd_bwd"):
        result[f"{mode}_tflops"] = attention_flops(B, H, N, D, causal, mode) / result[f"{mode}_ms"] * 1e-9
    return result


def markdown_table(rows: list[dict], peak: float | None) -> str:
    head = "| impl | dtype | causal | D | N | B×H | fwd TFLOP/s | bwd TFLOP/s | fwd+bwd TFLOP/s |"
    if peak:
        head += " fwd % peak |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (
            f"| {r['impl']} | {r['dtype']} | {r['causal']} | {r['D']} | {r['N']} | {r['B']}×{r['H']} | "
            f"{r['fwd_tflops']:.1f} | {r['bwd_tflops']:.1f} | {r['fwd_bwd_tflops']:.1f} |"
        )
        if peak:
            line += f" {100 * r['fwd_tflops'] / peak:.0f}% |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(
    seq_lens: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384),
    head_dims: tuple[int, ...] = (64, 128),
    dtypes: tuple[str, ...] = ("float16", "bfloat16"),
    impls: tuple[str, ...] = ("triton", "sdpa", "part1"),
    part1_max_n: int = 2048,
    bench: bool = True,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    dev = resolve_kernel_device(device)
    print(f"1. correctness on {dev} ({'Triton interpreter' if INTERPRET else 'compiled Triton'}) vs SDPA")
    checks = check_correctness(dev)
    for r in checks:
        print(f"   {r['dtype']:<9} causal={r['causal']!s:<5} worst of O/dQ/dK/dV: {r['max_err']:.1e} "
              f"{'OK' if r['ok'] else 'MISMATCH'}")  # fmt: skip
    out = {"checks": checks, "rows": []}
    if not bench:
        return out
    if dev.type != "cuda":
        print("\n2. benchmark: timing needs a CUDA GPU (the interpreter emulates every program with NumPy on the CPU)")
        return out

    name = torch.cuda.get_device_name(dev)
    peak = peak_tflops(name)
    import triton

    meta = (
        f"device {name}, torch {torch.__version__}, triton {triton.__version__}, "
        f"CUDA {torch.version.cuda}, {time.strftime('%Y-%m-%d', time.gmtime())}"
        + (f", dense fp16/bf16 peak {peak} TFLOP/s" if peak else "")
    )
    print(f"\n2. benchmark: {meta}")
    for dtype_name in dtypes:
        for D in head_dims:
            for causal in (False, True):
                for N in seq_lens:
                    for impl in impls:
                        if impl == "part1" and N > part1_max_n:
                            continue
                        r = bench_one(impl, N, D, getattr(torch, dtype_name), causal, dev)
                        out["rows"].append(r)
                        print(
                            f"   {impl:<6} {dtype_name:<8} causal={causal!s:<5} D={D:<3} N={N:<5} "
                            f"fwd {r['fwd_tflops']:6.1f}  bwd {r['bwd_tflops']:6.1f}  "
                            f"fwd+bwd {r['fwd_bwd_tflops']:6.1f} TFLOP/s"
                        )
                        torch.cuda.empty_cache()
    folder = out_dir("triton_flash_attention")
    atomic_write_text(f"{meta}\n\n" + markdown_table(out["rows"], peak), folder / "benchmark.md")
    atomic_write_text(json.dumps({"meta": meta, "rows": out["rows"]}, indent=1), folder / "benchmark.json")
    print(f"\nwrote {folder / 'benchmark.md'}")
    out["meta"] = meta
    return out


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16"])
    p.add_argument("--impls", nargs="+", default=["triton", "sdpa", "part1"], choices=["triton", "sdpa", "part1"])
    p.add_argument("--part1-max-n", type=int, default=2048, help="longest N for the slow part-1 PyTorch version")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="only the correctness check")
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    args = p.parse_args()
    for name in ("seq_lens", "head_dims", "dtypes", "impls"):
        setattr(args, name, tuple(getattr(args, name)))
    return args


if __name__ == "__main__":
    main(**vars(parse_args()))
