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

   B·N is held at 16k tokens, H = 2048 / D (model width 2048). Ours and SDPA are timed side by side for each
   shape (interleaved, the 20/50/80 % quantiles kept), so load on the GPU affects both alike. Results go to
   ``out/triton_flash_attention/`` as a Markdown table (``benchmark.md``) and JSON, with device, versions and
   the fraction of the GPU's dense fp16/bf16 peak where the GPU is known. ``--grid trimmed`` is the short grid
   (N = 1024, 4096, 16384; D = 64, 128; fp16, bf16; causal and not; ours vs SDPA), also callable as
   ``benchmark_rows()`` from other scripts; ``--configs default`` times the fixed ``GPU_DEFAULT_CONFIGS``
   instead of autotuning (autotuning volume: ``LLM_SCRATCH_AUTOTUNE=small|full|off``, see ``triton_flash.py``).
3. ``--tma`` (Hopper and newer): the same kernels with their streamed tiles loaded through tensor descriptors
   (``flash_attention(..., tma=True)``: the Tensor Memory Accelerator copies a whole tile per instruction) against
   the pointer loads, both with ``GPU_DEFAULT_CONFIGS`` so that only the load path differs, at N = 4096 in bf16;
   ``tma_rows()`` from other scripts. Each row first checks both outputs against SDPA.

4. ``--gqa``: grouped-query heads, the backward with the group shared among ``dkdv_split = H / H_kv`` dK/dV
   programs against the plain loop over the group (lesson 18 counts where that can matter), and SDPA's flash
   backend with ``enable_gqa=True`` (or, where this PyTorch's flash backend refuses GQA, on K/V repeated per
   query head), all with ``GPU_DEFAULT_CONFIGS``, N = 4096, D = 128, bf16, causal, one sequence;
   ``gqa_rows()`` from other scripts.

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

from pytorch_basis.common import (
    add_device_argument,
    atomic_write_text,
    out_dir,
    positive_int,
    seed_everything,
    seed_int,
)
from triton_flash_attention_scratch.attention_torch import flash_attention_torch
from triton_flash_attention_scratch.triton_flash import (
    GPU_DEFAULT_CONFIGS,
    INTERPRET,
    TMA_MIN_CAPABILITY,
    attention_flops,
    do_bench_ms,
    flash_attention,
    resolve_kernel_device,
)

# Dense (no sparsity) fp16/bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "RTX 4090": 165.2}
TOKENS = 16384
MODEL_WIDTH = 2048
TRIMMED_GRID = {
    "seq_lens": (1024, 4096, 16384),
    "head_dims": (64, 128),
    "dtypes": ("float16", "bfloat16"),
    "causal": (False, True),
}


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
            # fixed tiles on a GPU: each dtype x causality compiles once instead of autotuning 6 keys
            o = flash_attention(q, k, v, causal=causal, configs=GPU_DEFAULT_CONFIGS if dev.type == "cuda" else None)
            do = torch.randn_like(o)
            grads = torch.autograd.grad(o, (q, k, v), do)
            q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
            ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
            ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
            err = max(
                (a.float() - b).abs().max().item() for a, b in zip((o, *grads), (ref, *ref_grads))
            )  # worst of O, dQ, dK, dV
            tol = 1e-4 if dtype == torch.float32 else (1e-2 if dtype == torch.float16 else 3e-2)
            rows.append({"dtype": str(dtype).split(".")[-1], "causal": causal, "max_err": err, "ok": err < tol,
                         "tensors": {"q": q, "k": k, "v": v, "do": do, "o": o, "grads": grads}})  # fmt: skip
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


def _quantiles_ms(fn, grad_to_none=None, warmup: int = 25, rep: int = 100) -> tuple[float, float, float]:
    import triton.testing

    q20, q50, q80 = triton.testing.do_bench(
        fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, quantiles=[0.2, 0.5, 0.8]
    )
    return float(q20), float(q50), float(q80)


def _time_side_by_side(row: dict, impls: dict, q, k, v, do, warmup: int, rep: int) -> None:
    """Forward (no grad) of every implementation, then the backward of every one, so that both see the same
    conditions; fills ``row[f"{name}_{mode}_ms"]`` (median), ``_ms_q20``/``_ms_q80`` and ``_tflops``."""
    B, H, N, D = q.shape
    flops = {m: attention_flops(B, H, N, D, row["causal"], m) for m in ("fwd", "bwd")}
    times = {}
    for name, fn in impls.items():
        with torch.no_grad():
            times[(name, "fwd")] = _quantiles_ms(fn, warmup=warmup, rep=rep)
    for name, fn in impls.items():
        o = fn()
        times[(name, "bwd")] = _quantiles_ms(
            lambda o=o: o.backward(do, retain_graph=True), grad_to_none=[q, k, v], warmup=warmup, rep=rep
        )
    for (name, mode), (q20, q50, q80) in times.items():
        row[f"{name}_{mode}_ms"] = q50
        row[f"{name}_{mode}_ms_q20"], row[f"{name}_{mode}_ms_q80"] = q20, q80
        row[f"{name}_{mode}_tflops"] = flops[mode] / q50 * 1e-9


def _measure_pair(row: dict, dtype: torch.dtype, cfg, dev: torch.device, warmup: int, rep: int) -> None:
    """Fill ``row`` with forward and backward timings of ours and SDPA (flash backend), measured alternately."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, N, D, causal = row["B"], row["H"], row["N"], row["D"], row["causal"]
    q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, N, D, device=dev, dtype=dtype)

    def ours():
        return flash_attention(q, k, v, causal=causal, configs=cfg)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    impls = {"ours": ours, "sdpa": sdpa}
    for fn in impls.values():  # warm-up (ours autotunes here unless configs are fixed)
        fn().backward(do)
    _time_side_by_side(row, impls, q, k, v, do, warmup, rep)
    for mode in ("fwd", "bwd"):
        row[f"{mode}_vs_sdpa"] = row[f"ours_{mode}_tflops"] / row[f"sdpa_{mode}_tflops"]


def _run_row(row: dict, measure, deadline: float | None, log, formatter) -> None:
    """Measure one row (``measure(row)`` fills it) unless ``deadline`` (time.monotonic()) has passed; a failure
    becomes the row's status instead of stopping the rows after it."""
    if deadline is not None and time.monotonic() > deadline:
        row["status"] = "time limit"
        return
    try:
        measure(row)
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one failing shape must not stop the others
        row["status"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else repr(e)
    finally:
        torch.cuda.empty_cache()
    if log is not None:
        log(formatter(row))


def benchmark_rows(
    seq_lens: tuple[int, ...] = TRIMMED_GRID["seq_lens"],
    head_dims: tuple[int, ...] = TRIMMED_GRID["head_dims"],
    dtypes: tuple[str, ...] = TRIMMED_GRID["dtypes"],
    causal: tuple[bool, ...] = TRIMMED_GRID["causal"],
    configs: str | dict | None = None,
    time_limit_s: float | None = None,
    warmup: int = 25,
    rep: int = 100,
    device: str = "cuda",
    log=print,
) -> list[dict]:
    """Forward and backward TFLOP/s of ours vs SDPA's flash backend, one row per (dtype, D, causal, N).

    ``configs``: None autotunes (``LLM_SCRATCH_AUTOTUNE`` decides how much), ``"default"`` uses
    ``GPU_DEFAULT_CONFIGS``, a dict ``{"fwd": {...}, "dkdv": {...}, "dq": {...}}`` fixes the tiles.
    Each row: ``dtype, D, N, B, H, causal``, then per implementation ``ours_``/``sdpa_`` +
    ``fwd_ms, bwd_ms`` (medians), ``fwd_ms_q20/q80, bwd_ms_q20/q80`` (spread), ``fwd_tflops, bwd_tflops``, and
    ``fwd_vs_sdpa, bwd_vs_sdpa`` (ours / SDPA throughput) and ``status`` ("ok", "time limit" or the error line).
    Rows past ``time_limit_s`` (seconds from the call) are returned with status "time limit", not run.
    """
    if INTERPRET or not torch.cuda.is_available():
        raise RuntimeError("benchmark_rows needs a CUDA GPU (the interpreter's timings mean nothing)")
    dev = torch.device(device)
    cfg = GPU_DEFAULT_CONFIGS if configs == "default" else configs
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for D in head_dims:
            for is_causal in causal:
                for N in seq_lens:
                    B, H = max(1, TOKENS // N), MODEL_WIDTH // D
                    rows.append({"dtype": dtype_name, "D": D, "N": N, "B": B, "H": H, "causal": is_causal})
                    measure = lambda row, dtype=dtype: _measure_pair(row, dtype, cfg, dev, warmup, rep)  # noqa: E731
                    _run_row(rows[-1], measure, deadline, log, format_row)
    return rows


TMA_GRID = {"seq_len": 4096, "head_dims": (64, 128), "dtype": "bfloat16", "causal": (False, True)}


def _check_against(row: dict, impls: dict, ref, q, k, v, do) -> None:
    """``row[f"{name}_max_err"]``: the largest |difference| of O, dQ, dK, dV from the reference's, for each
    implementation (their first call compiles: the check doubles as the warm-up)."""
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    for name, fn in impls.items():
        o = fn()
        grads = torch.autograd.grad(o, (q, k, v), do)
        row[f"{name}_max_err"] = max((a - b).abs().max().item() for a, b in zip((o, *grads), (ref, *ref_grads)))


def _measure_tma_pair(row: dict, dtype: torch.dtype, dev: torch.device, warmup: int, rep: int) -> None:
    """Fill ``row`` with forward and backward timings of the pointer (``ptr_``) and TMA (``tma_``) load paths,
    same tiles (``GPU_DEFAULT_CONFIGS``), measured alternately; first their worst error against SDPA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, N, D, causal = row["B"], row["H"], row["N"], row["D"], row["causal"]
    q, k, v = (torch.randn(B, H, N, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(B, H, N, D, device=dev, dtype=dtype)
    impls = {
        name: (lambda tma=tma: flash_attention(q, k, v, causal=causal, configs=GPU_DEFAULT_CONFIGS, tma=tma))
        for name, tma in (("ptr", False), ("tma", True))
    }
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    _check_against(row, impls, ref, q, k, v, do)
    if not row["tma_max_err"] <= 2 * row["ptr_max_err"] + 1e-3:
        raise RuntimeError(f"TMA path error {row['tma_max_err']:.2e} vs pointer path {row['ptr_max_err']:.2e}")
    _time_side_by_side(row, impls, q, k, v, do, warmup, rep)
    for mode in ("fwd", "bwd"):
        row[f"{mode}_tma_vs_ptr"] = row[f"tma_{mode}_tflops"] / row[f"ptr_{mode}_tflops"]


def tma_rows(
    seq_len: int = TMA_GRID["seq_len"],
    head_dims: tuple[int, ...] = TMA_GRID["head_dims"],
    dtype: str = TMA_GRID["dtype"],
    causal: tuple[bool, ...] = TMA_GRID["causal"],
    time_limit_s: float | None = None,
    warmup: int = 25,
    rep: int = 100,
    device: str = "cuda",
    log=print,
) -> list[dict]:
    """TMA vs pointer loads, one row per (D, causal): ``ptr_``/``tma_`` + ``max_err`` (vs SDPA), ``fwd_ms``,
    ``bwd_ms``, ``fwd_tflops``, ``bwd_tflops``; ``fwd_tma_vs_ptr``, ``bwd_tma_vs_ptr``; ``status`` as in
    ``benchmark_rows``. Needs a GPU of compute capability 9.0 or newer."""
    if INTERPRET or not torch.cuda.is_available():
        raise RuntimeError("tma_rows needs a CUDA GPU (the interpreter's timings mean nothing)")
    dev = torch.device(device)
    cap = torch.cuda.get_device_capability(dev)
    if cap < TMA_MIN_CAPABILITY:
        raise RuntimeError(
            f"tma_rows needs a GPU with a Tensor Memory Accelerator (9.0+), this one is {cap[0]}.{cap[1]}"
        )
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    rows = []
    for D in head_dims:
        for is_causal in causal:
            B, H = max(1, TOKENS // seq_len), MODEL_WIDTH // D
            rows.append({"dtype": dtype, "D": D, "N": seq_len, "B": B, "H": H, "causal": is_causal})
            measure = lambda row: _measure_tma_pair(row, getattr(torch, dtype), dev, warmup, rep)  # noqa: E731
            _run_row(rows[-1], measure, deadline, log, format_tma_row)
    return rows


# (name, H, H_kv): lesson 18's shapes where splitting the group should matter (one K/V head: its bound drops 4x)
# and where it should not (Llama-3-8B's 32/8 heads), at one sequence of GQA_GRID["seq_len"] tokens
GQA_GRID = {"seq_len": 4096, "head_dim": 128, "dtype": "bfloat16", "causal": True, "batch": 1,
            "heads": (("Llama-3-70B over 8 GPUs", 8, 1), ("Llama-3-8B", 32, 8))}  # fmt: skip


def _sdpa_gqa_fn(q, k, v, causal: bool):
    """SDPA's flash backend on GQA heads: ``enable_gqa=True`` where this PyTorch's flash kernel takes it, else on
    K/V repeated per query head (what a model without it does; the repeat is timed too). Returns (fn, how, output
    of the call that decided)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def native():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    def repeated():
        rep = q.shape[1] // k.shape[1]
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                  is_causal=causal)  # fmt: skip

    try:
        return native, "enable_gqa", native()
    except RuntimeError:  # "No available kernel": this flash backend has no GQA
        return repeated, "repeat_interleave", repeated()


def _measure_gqa(row: dict, dtype: torch.dtype, dev: torch.device, warmup: int, rep: int) -> None:
    """Fill ``row`` with forward and backward timings of ours with ``dkdv_split`` 1 (``s1_``) and H / H_kv
    (``sg_``) and SDPA (``sdpa_``), measured alternately; first the worst error of each against SDPA."""
    B, H, H_kv, N, D, causal = row["B"], row["H"], row["H_kv"], row["N"], row["D"], row["causal"]
    q = torch.randn(B, H, N, D, device=dev, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, H_kv, N, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
    do = torch.randn(B, H, N, D, device=dev, dtype=dtype)
    sdpa, row["sdpa_gqa"], ref = _sdpa_gqa_fn(q, k, v, causal)
    impls = {
        name: (lambda s=s: flash_attention(q, k, v, causal=causal, configs=GPU_DEFAULT_CONFIGS, dkdv_split=s))
        for name, s in (("s1", 1), ("sg", H // H_kv))
    }
    _check_against(row, impls, ref, q, k, v, do)
    if not row["sg_max_err"] <= 2 * row["s1_max_err"] + 1e-3:
        raise RuntimeError(f"dkdv_split={H // H_kv} error {row['sg_max_err']:.2e} vs {row['s1_max_err']:.2e}")
    _time_side_by_side(row, {**impls, "sdpa": sdpa}, q, k, v, do, warmup, rep)
    row["bwd_split_vs_1"] = row["sg_bwd_tflops"] / row["s1_bwd_tflops"]
    best = max(row["s1_bwd_tflops"], row["sg_bwd_tflops"])
    row["bwd_best_vs_sdpa"] = best / row["sdpa_bwd_tflops"]
    row["fwd_vs_sdpa"] = row["s1_fwd_tflops"] / row["sdpa_fwd_tflops"]


def gqa_rows(
    seq_len: int = GQA_GRID["seq_len"],
    heads: tuple = GQA_GRID["heads"],
    head_dim: int = GQA_GRID["head_dim"],
    dtype: str = GQA_GRID["dtype"],
    causal: bool = GQA_GRID["causal"],
    batch: int = GQA_GRID["batch"],
    time_limit_s: float | None = None,
    warmup: int = 25,
    rep: int = 100,
    device: str = "cuda",
    log=print,
) -> list[dict]:
    """GQA backward with and without the split, one row per ``(name, H, H_kv)`` of ``heads``: ``s1_``/``sg_``/
    ``sdpa_`` + ``fwd_ms, bwd_ms, fwd_tflops, bwd_tflops`` (and q20/q80), ``s1_max_err``/``sg_max_err``,
    ``bwd_split_vs_1``, ``bwd_best_vs_sdpa``, ``fwd_vs_sdpa``, ``sdpa_gqa`` (how SDPA got the heads), ``status``."""
    if INTERPRET or not torch.cuda.is_available():
        raise RuntimeError("gqa_rows needs a CUDA GPU (the interpreter's timings mean nothing)")
    dev = torch.device(device)
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    rows = []
    for name, H, H_kv in heads:
        rows.append({"shape": name, "dtype": dtype, "D": head_dim, "N": seq_len, "B": batch, "H": H, "H_kv": H_kv,
                     "causal": causal, "split": H // H_kv})  # fmt: skip
        measure = lambda row: _measure_gqa(row, getattr(torch, dtype), dev, warmup, rep)  # noqa: E731
        _run_row(rows[-1], measure, deadline, log, format_gqa_row)
    return rows


def format_gqa_row(row: dict) -> str:
    """One line of ``gqa_rows``: backward TFLOP/s without and with the split, and SDPA."""
    head = f"{row['shape']:<24} H={row['H']:<2} H_kv={row['H_kv']:<2} N={row['N']:<5}"
    if row.get("status") != "ok":
        return f"   {head} {row.get('status')}"
    return (f"   {head} bwd split 1 {row['s1_bwd_tflops']:6.1f}  split {row['split']} {row['sg_bwd_tflops']:6.1f} "
            f"(x{row['bwd_split_vs_1']:.2f})  SDPA {row['sdpa_bwd_tflops']:6.1f} TFLOP/s")  # fmt: skip


def gqa_table(rows: list[dict]) -> str:
    """Markdown: GQA backward TFLOP/s without and with the split, SDPA, and the ratios."""
    head = ("| shape | B×H/H_kv | N | bwd split 1 | bwd split H/H_kv | split / 1 | bwd SDPA | best / SDPA "
            "| SDPA GQA by |")  # fmt: skip
    return _status_table(
        head, rows, lambda r: f"| {r['shape']} | {r['B']}×{r['H']}/{r['H_kv']} | {r['N']} |",
        lambda r: f"{r['s1_bwd_tflops']:.1f} | {r['sg_bwd_tflops']:.1f} (s={r['split']}) | {r['bwd_split_vs_1']:.2f} | "
                  f"{r['sdpa_bwd_tflops']:.1f} | {r['bwd_best_vs_sdpa']:.2f} | {r['sdpa_gqa']} |",
    )  # fmt: skip


def _status_table(head: str, rows: list[dict], start, cells) -> str:
    """Markdown table: ``head``, then per row ``start(row)`` (its leading cells) and ``cells(row)``, or the row's
    status where it is not "ok", padded to the header's columns."""
    width = head.count("|") - 1
    lines = [head, "|" + "---|" * width]
    for r in rows:
        lead = start(r)
        ok = r.get("status") == "ok"
        lines.append(f"{lead} {cells(r)}" if ok else f"{lead} {r.get('status')} |" + " |" * (width - lead.count("|")))
    return "\n".join(lines) + "\n"


def format_tma_row(row: dict) -> str:
    """One line of ``tma_rows``: pointer and TMA TFLOP/s, forward and backward, and TMA / pointer."""
    return _format_pair(row, "ptr", "tma", "tma_vs_ptr")


def tma_table(rows: list[dict]) -> str:
    """Markdown: pointer vs TMA loads per shape, forward and backward TFLOP/s and the TMA/pointer ratio."""
    head = (
        "| dtype | causal | D | N | B×H | fwd pointer | fwd TMA | fwd TMA/pointer | bwd pointer | bwd TMA "
        "| bwd TMA/pointer |"
    )
    return _status_table(
        head, rows, _shape_cells,
        lambda r: f"{r['ptr_fwd_tflops']:.1f} | {r['tma_fwd_tflops']:.1f} | {r['fwd_tma_vs_ptr']:.2f} | "
                  f"{r['ptr_bwd_tflops']:.1f} | {r['tma_bwd_tflops']:.1f} | {r['bwd_tma_vs_ptr']:.2f} |",
    )  # fmt: skip


def _shape_cells(r: dict) -> str:
    return f"| {r['dtype']} | {r['causal']} | {r['D']} | {r['N']} | {r['B']}×{r['H']} |"


def _format_pair(row: dict, first: str, second: str, ratio: str) -> str:
    head = f"{row['dtype']:<8} D={row['D']:<3} causal={row['causal']!s:<5} N={row['N']:<5}"
    if row.get("status") != "ok":
        return f"   {head} {row.get('status')}"
    parts = [
        f"{mode} {first} {row[f'{first}_{mode}_tflops']:6.1f} {second} {row[f'{second}_{mode}_tflops']:6.1f} "
        f"(x{row[f'{mode}_{ratio}']:.2f})"
        for mode in ("fwd", "bwd")
    ]
    return f"   {head} {'  '.join(parts)} TFLOP/s"


def format_row(row: dict) -> str:
    """One line of ``benchmark_rows``: ours and SDPA TFLOP/s, forward and backward, and ours / SDPA."""
    return _format_pair(row, "ours", "sdpa", "vs_sdpa")


def comparison_table(rows: list[dict], peak: float | None) -> str:
    """Markdown: ours vs SDPA per shape, forward and backward TFLOP/s, ratio, % of the peak, p20-p80 spread."""
    head = (
        "| dtype | causal | D | N | B×H | fwd ours | fwd SDPA | fwd ours/SDPA | bwd ours | bwd SDPA | bwd ours/SDPA |"
    )
    if peak:
        head += " fwd ours % peak |"
    head += " fwd ours p20–p80 ms |"

    def cells(r: dict) -> str:
        line = (
            f"{r['ours_fwd_tflops']:.1f} | {r['sdpa_fwd_tflops']:.1f} | {r['fwd_vs_sdpa']:.2f} | "
            f"{r['ours_bwd_tflops']:.1f} | {r['sdpa_bwd_tflops']:.1f} | {r['bwd_vs_sdpa']:.2f} |"
        )
        if peak:
            line += f" {100 * r['ours_fwd_tflops'] / peak:.0f}% |"
        return line + f" {r['ours_fwd_ms_q20']:.3f}–{r['ours_fwd_ms_q80']:.3f} |"

    return _status_table(head, rows, _shape_cells, cells)


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


def run_benchmark(seq_lens, head_dims, dtypes, impls, part1_max_n, configs, dev, tma=False, gqa=False) -> dict:
    """GPU only: ours vs SDPA (and part 1's loops) over the grid; writes benchmark.md / .json and returns rows."""
    out: dict = {"rows": []}
    name = torch.cuda.get_device_name(dev)
    peak = peak_tflops(name)
    import triton

    meta = (
        f"device {name}, torch {torch.__version__}, triton {triton.__version__}, "
        f"CUDA {torch.version.cuda}, {time.strftime('%Y-%m-%d', time.gmtime())}"
        + (f", dense fp16/bf16 peak {peak} TFLOP/s" if peak else "")
    )
    print(f"\n2. benchmark: {meta}")
    if "triton" in impls and "sdpa" in impls:
        out["rows"] = benchmark_rows(seq_lens, head_dims, dtypes, (False, True), configs=configs, device=str(dev))
    report = f"{meta}\n\n" + comparison_table(out["rows"], peak)
    if "part1" in impls:
        part1 = []
        for dtype_name in dtypes:
            for D in head_dims:
                for N in (n for n in seq_lens if n <= part1_max_n):
                    r = bench_one("part1", N, D, getattr(torch, dtype_name), False, dev)
                    part1.append(r)
                    print(f"   part1  {dtype_name:<8} D={D:<3} N={N:<5} fwd {r['fwd_tflops']:6.2f} TFLOP/s")
        out["part1_rows"] = part1
        report += "\npart 1 (PyTorch tiled loops, non-causal)\n\n" + markdown_table(part1, peak)
    if tma and torch.cuda.get_device_capability(dev) >= TMA_MIN_CAPABILITY:
        print("\n3. TMA vs pointer loads, GPU_DEFAULT_CONFIGS")
        out["tma_rows"] = tma_rows(device=str(dev))
        report += "\nTMA vs pointer loads (GPU_DEFAULT_CONFIGS, TFLOP/s)\n\n" + tma_table(out["tma_rows"])
    elif tma:
        print("\n3. TMA: this GPU has no Tensor Memory Accelerator (compute capability 9.0+ needed)")
    if gqa:
        print("\n4. GQA backward: the group in one dK/dV program or split among H / H_kv, GPU_DEFAULT_CONFIGS")
        out["gqa_rows"] = gqa_rows(device=str(dev))
        report += "\nGQA backward (GPU_DEFAULT_CONFIGS, TFLOP/s)\n\n" + gqa_table(out["gqa_rows"])
    folder = out_dir("triton_flash_attention")
    atomic_write_text(report, folder / "benchmark.md")
    atomic_write_text(json.dumps({"meta": meta, **out}, indent=1, default=str), folder / "benchmark.json")
    print(f"\nwrote {folder / 'benchmark.md'}")
    out["meta"] = meta
    return out


def main(
    seq_lens: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384),
    head_dims: tuple[int, ...] = (64, 128),
    dtypes: tuple[str, ...] = ("float16", "bfloat16"),
    impls: tuple[str, ...] = ("triton", "sdpa", "part1"),
    part1_max_n: int = 2048,
    grid: str = "full",
    configs: str | None = None,
    bench: bool = True,
    tma: bool = False,
    gqa: bool = False,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    if grid not in ("full", "trimmed"):
        raise ValueError(f"--grid must be full or trimmed, got {grid!r}")
    if configs not in (None, "default"):
        raise ValueError(f"--configs must be 'default' (GPU_DEFAULT_CONFIGS) or absent (autotune), got {configs!r}")
    if grid == "trimmed":
        seq_lens, head_dims, dtypes = TRIMMED_GRID["seq_lens"], TRIMMED_GRID["head_dims"], TRIMMED_GRID["dtypes"]
        impls = ("triton", "sdpa")
    dev = resolve_kernel_device(device)
    print(f"1. correctness on {dev} ({'Triton interpreter' if INTERPRET else 'compiled Triton'}) vs SDPA")
    checks = check_correctness(dev)
    for r in checks:
        print(f"   {r['dtype']:<9} causal={r['causal']!s:<5} worst of O/dQ/dK/dV: {r['max_err']:.1e} "
              f"{'OK' if r['ok'] else 'MISMATCH'}")  # fmt: skip
    out = {"checks": checks, "rows": []}
    if bench and dev.type == "cuda":
        out.update(run_benchmark(seq_lens, head_dims, dtypes, impls, part1_max_n, configs, dev, tma=tma, gqa=gqa))
    elif bench:
        print("\n2. benchmark: timing needs a CUDA GPU (the interpreter emulates every program with NumPy on the CPU)")
    return out


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seq-lens", type=positive_int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--head-dims", type=positive_int, nargs="+", default=[64, 128])
    p.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16"])
    p.add_argument("--impls", nargs="+", default=["triton", "sdpa", "part1"], choices=["triton", "sdpa", "part1"])
    p.add_argument(
        "--part1-max-n", type=positive_int, default=2048, help="longest N for the slow part-1 PyTorch version"
    )
    p.add_argument(
        "--grid",
        choices=["full", "trimmed"],
        default="full",
        help="trimmed: N 1024/4096/16384, D 64/128, fp16/bf16, causal or not, ours vs SDPA",
    )
    p.add_argument(
        "--configs", choices=["default"], default=None, help="'default': time GPU_DEFAULT_CONFIGS instead of autotuning"
    )
    p.add_argument("--no-bench", dest="bench", action="store_false", help="only the correctness check")
    p.add_argument("--tma", action="store_true", help="also time TMA vs pointer loads (Hopper GPUs, N = 4096, bf16)")
    p.add_argument("--gqa", action="store_true", help="also time the GQA backward with and without dkdv_split")
    p.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(p)
    args = p.parse_args()
    for name in ("seq_lens", "head_dims", "dtypes", "impls"):
        setattr(args, name, tuple(getattr(args, name)))
    return args


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
