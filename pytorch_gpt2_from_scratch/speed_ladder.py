"""The benchmark behind lesson 11 (Section 2, making it fast): one training step, timed rung by rung.

Lesson 11 imports this module and reads as the ladder; ``.ci/gpu_report.py`` uses the same pieces for the GPU
ladder. Everything a rung can change is a field of :class:`StepSetup`, applied through an option of the one model
module (``GPTConfig.attn_impl``, ``GPTConfig.pad_vocab_to``) or of the training step (matmul precision,
autocast, ``torch.compile``), so the numbers measure the real code:

* :data:`LADDER`: (rung name, change on top of the fastest setup kept so far, the video's ms/iter on an A100);
* :func:`make_train_step`: one closure per setup doing zero_grad, forward, backward and the AdamW step;
  :func:`time_steps` times several such closures *interleaved* on the same batch (a change of the machine's
  load hits all of them alike) and reports the first step (compilation) apart;
* :func:`run_ladder`: each rung on top of the best so far, kept only when faster than it by more than the spread
  of the step times (``bench_stats.rung_verdict``);
* :func:`compare_with_hf`, :func:`profile_ours_vs_hf`: our eager fp32 step against ``GPT2LMHeadModel``'s;
* :func:`markdown`: the table lesson 11 prints and writes.

The fraction of peak of a rung is the work of a step over its time, against the device's peak::

    FLOPs per step = B * T * (6 N + 12 L C T)       # GPT.flops_per_token of the *unpadded* model
    fraction       = FLOPs per step / (median s per step) / peak

where the peak is a large matmul measured in the same run on a CPU (:func:`matmul_peak`, fp32, and bf16 for the
bf16 rungs) and the published bf16 dense peak on a known GPU (MFU, :data:`GPU_BF16_PEAK`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace

import torch

from pytorch_basis.common import cpu_model_name, synchronize
from pytorch_gpt2_from_scratch.bench_stats import rung_verdict
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

# Published dense bf16 tensor-core peaks (FLOP/s), for MFU. Unknown GPUs: a bf16 matmul measured in the run.
GPU_BF16_PEAK = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass(frozen=True)
class StepSetup:
    """Everything a rung can change."""

    attn_impl: str = "manual"
    pad_vocab_to: int | None = None
    tf32: bool = False
    amp: str | None = None  # None | "bf16" | "fp16"
    compile: bool = False
    keep_freed_memory: bool = False  # CPU + glibc only: see keep_freed_memory()


# (name, change on top of the best setup so far, the video's ms/iter on an A100 at B=16, T=1024)
LADDER = [
    ("fp32 baseline (manual attention)", {}, 1000),
    ("+ CPU: glibc keeps freed memory", {"keep_freed_memory": True}, None),  # not in the video; CPU only
    ("+ TF32 matmuls", {"tf32": True}, 333),
    ("+ bf16 autocast", {"amp": "bf16"}, 300),
    ("+ torch.compile", {"compile": True}, 130),
    ("+ flash attention (SDPA)", {"attn_impl": "sdpa"}, 96),
    ("+ vocab 50257 -> 50304", {"pad_vocab_to": 64}, 93),
]
SKIPPABLE = {
    "malloc": "+ CPU: glibc keeps freed memory",
    "tf32": "+ TF32 matmuls",
    "bf16": "+ bf16 autocast",
    "compile": "+ torch.compile",
    "fp16": "fp16",
}


@dataclass
class Result:
    """One rung's measurement: median ms/iter over its timed steps (all of them in ``all_ms``) and the verdict."""

    name: str
    setup: StepSetup
    ms: float  # median ms/iter
    tokens_per_s: float
    first_step_s: float  # includes compilation for compiled rungs
    steps: int
    ref_ms: float | None = None
    kept: bool = True
    peak_fraction: float | None = None
    note: str = ""
    all_ms: list = field(default_factory=list)
    verdict: str = "kept"  # bench_stats.rung_verdict: kept | within noise | slower


_VERDICT_TEXT = {"kept": "kept", "within noise": "NOT kept (within noise)", "slower": "NOT kept (slower)"}


# --------------------------------------------------------------------------------------------- timing helpers
def _optimizer(params, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as in the video (lr 6e-4, betas 0.9/0.95): the fused kernel on CUDA, the foreach one elsewhere."""
    cuda = device.type == "cuda"
    return torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=cuda, foreach=not cuda)


def keep_freed_memory(enable: bool = True) -> bool:
    """Tell glibc's malloc to serve big blocks from its heap and never give freed memory back to the OS.

    A CPU training step allocates and frees hundreds of MB (the (B*T, V) logits and their gradients alone are
    400 MB each here). By default glibc maps blocks above a (dynamic) threshold with ``mmap`` and unmaps them on
    ``free``, so every step page-faults fresh zeroed pages in; with these two ``mallopt`` settings the memory of
    step n is reused by step n+1. ``enable=False`` restores glibc's default thresholds. Returns whether the
    setting was applied (Linux with glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    size = 1 << 30 if enable else 128 * 1024  # 1 GiB, or glibc's default 128 KiB
    return mallopt(m_trim_threshold, size) == 1 and mallopt(m_mmap_threshold, size) == 1


@contextlib.contextmanager
def matmul_precision(tf32: bool):
    """fp32 matmuls in TF32 (``"high"``) or in full fp32 (``"highest"``) inside the block; restored afterwards."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def make_train_step(model: torch.nn.Module, setup: StepSetup, device: torch.device, hf: bool = False):
    """A closure doing one full training step (zero_grad, forward, backward, optimizer step) on (x, y)."""
    optimizer = _optimizer(model.parameters(), device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.amp)
    scaler = torch.amp.GradScaler(device.type) if setup.amp == "fp16" else None
    forward = torch.compile(model) if setup.compile else model

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = forward(input_ids=x, labels=y, shift_labels=y).loss if hf else forward(x, y)[1]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss

    return step


def time_steps(steps_fns, x, y, device, warmup: int, steps: int, budget_s: float):
    """Interleave the given step functions; return per function (first step s, list of ms of timed steps)."""
    firsts, times = [], [[] for _ in steps_fns]
    for fn in steps_fns:
        synchronize(device)
        t0 = time.perf_counter()
        fn(x, y)
        synchronize(device)
        firsts.append(time.perf_counter() - t0)
    start = time.perf_counter()
    for i in range(max(warmup - 1, 0) + steps):
        for fn, ts in zip(steps_fns, times):
            synchronize(device)
            t0 = time.perf_counter()
            fn(x, y)
            synchronize(device)
            if i >= max(warmup - 1, 0):
                ts.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s and all(times):
            break  # slow rung: stop after at least one timed step each
    return firsts, [ts or [f * 1e3] for ts, f in zip(times, firsts)]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 3) -> float:
    """Best FLOP/s of an n x n x n matmul: the practical peak of this device at this precision."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def gpu_bf16_peak(device: torch.device) -> tuple[float, str]:
    """(FLOP/s, description): the published bf16 dense peak of a known GPU, else a measured bf16 matmul."""
    name = torch.cuda.get_device_name(device)
    for key, peak in GPU_BF16_PEAK.items():
        if key in name:
            return peak, f"published bf16 dense peak of {name}"
    return matmul_peak(device, torch.bfloat16), f"measured bf16 matmul on {name}"


def device_peaks(device: torch.device, n: int | None = None) -> dict:
    """The peaks the fractions are measured against: ``{"fp32", "bf16"}`` FLOP/s (and ``"desc"`` on CUDA).

    CUDA: MFU against :func:`gpu_bf16_peak` for every rung. CPU: an ``n``^3 matmul in fp32 and in bf16 (a smaller
    ``n`` keeps this cheap where bf16 is emulated: ~50x slower than fp32 on AVX2-only CPUs).
    """
    if device.type == "cuda":
        peak, desc = gpu_bf16_peak(device)
        return dict(fp32=peak, bf16=peak, desc=f"MFU against the {desc} ({peak / 1e12:.0f} TFLOP/s)")
    return dict(fp32=matmul_peak(device, torch.float32, n=n), bf16=matmul_peak(device, torch.bfloat16, n=n))


def remeasure_cpu_peak(peaks: dict, results: list[Result], hf: dict | None, flops_per_step: float, device) -> None:
    """CPU: measure the fp32 peak again after the ladder, keep the better one, and redo every fraction with it."""
    peaks["fp32"] = max(peaks["fp32"], matmul_peak(device, torch.float32))
    peaks["desc"] = (
        f"best 2048^3 matmul in this run: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} "
        "GFLOP/s (bf16 rungs are measured against the bf16 peak); FLOPs per token = 6N + 12LCT"
    )
    for r in results:
        if not math.isnan(r.ms):
            r.peak_fraction = flops_per_step / (r.ms / 1e3) / (peaks["bf16"] if r.setup.amp else peaks["fp32"])
    if hf:
        hf["ours_peak_fraction"] = flops_per_step / (hf["ours_ms"] / 1e3) / peaks["fp32"]
        hf["hf_peak_fraction"] = flops_per_step / (hf["hf_ms"] / 1e3) / peaks["fp32"]


# --------------------------------------------------------------------------------------------- the benchmark
def train_flops(config: GPTConfig, B: int, T: int) -> float:
    """FLOPs of one training step of the *unpadded* model (``GPT.flops_per_token``), built on the meta device."""
    with torch.device("meta"):
        model = GPT(replace(config, pad_vocab_to=None))
    return model.flops_per_token(T) * B * T


def build_model(config: GPTConfig, setup: StepSetup, device: torch.device, seed: int) -> GPT:
    """A freshly seeded model with the setup's attention and vocabulary padding (same weights for every rung)."""
    torch.manual_seed(seed)
    return GPT(replace(config, attn_impl=setup.attn_impl, pad_vocab_to=setup.pad_vocab_to)).to(device)


def run_ladder(config, x, y, device, args, peaks) -> list[Result]:
    """Every rung of :data:`LADDER` on the batch ``(x, y)``, each on top of the fastest setup kept so far.

    ``args``: ``steps``, ``warmup``, ``rung_budget_s``, ``seed``, ``keep_all`` and ``skip_names`` (rung names to
    leave out). A rung that raises (e.g. no C++ compiler for ``torch.compile``) is reported as failed. On return the
    allocator setting of the fastest kept setup is in force.
    """
    results: list[Result] = []
    best: Result | None = None
    tokens = x.numel()
    flops_per_step = train_flops(config, x.size(0), x.size(1))
    if args.warmup > 0:
        # Process warm-up, discarded: on the CPU the first model trained in a fresh process ran ~1.5x slower for
        # many steps (allocator and page-fault warm-up), which would flatter every later rung.
        model = build_model(config, StepSetup(), device, args.seed)
        time_steps([make_train_step(model, StepSetup(), device)], x, y, device, 0, args.warmup, args.rung_budget_s)
        del model
    for name, change, ref_ms in LADDER:
        if name in args.skip_names:
            print(f"{name:36s} skipped (--skip)")
            continue
        if "keep_freed_memory" in change and device.type != "cpu":
            continue  # CUDA and MPS have their own caching allocators
        setup = replace(best.setup if best else StepSetup(), **change)
        if setup.keep_freed_memory and not keep_freed_memory(True):
            print(f"{name:36s} skipped (needs Linux with glibc)")
            continue
        keep_freed_memory(setup.keep_freed_memory)
        model = build_model(config, setup, device, args.seed)
        with matmul_precision(setup.tf32):
            step = make_train_step(model, setup, device)
            try:
                firsts, times = time_steps([step], x, y, device, args.warmup, args.steps, args.rung_budget_s)
            except Exception as e:  # e.g. no C++ compiler for torch.compile: report it and go on
                print(f"{name:36s} failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
                results.append(Result(name, setup, math.nan, math.nan, math.nan, 0, ref_ms, False, note="failed"))
                continue
        ms = statistics.median(times[0])
        r = Result(name, setup, ms, tokens / ms * 1e3, firsts[0], len(times[0]), ref_ms, all_ms=times[0])
        peak = peaks["bf16"] if setup.amp in ("bf16", "fp16") else peaks["fp32"]
        r.peak_fraction = flops_per_step / (ms / 1e3) / peak
        r.verdict = rung_verdict(times[0], best.all_ms if best else None)
        r.kept = args.keep_all or r.verdict == "kept"
        if setup.compile:
            r.note = f"first step {r.first_step_s:.1f} s (compilation)"
        print(
            f"{name:36s} {ms:9.1f} ms/iter {r.tokens_per_s:9.0f} tok/s  peak {r.peak_fraction:6.1%}  "
            f"{_VERDICT_TEXT[r.verdict] if not args.keep_all else 'kept (--keep-all)'}  {r.note}"
        )
        results.append(r)
        if r.kept:
            best = r
        if name == "+ TF32 matmuls" and device.type == "cuda" and "fp16" not in args.skip_names:
            results.append(
                fp16_side_rung(config, replace(setup, amp="fp16"), x, y, device, args, peaks, flops_per_step)
            )
        del model, step
    keep_freed_memory(bool(best and best.setup.keep_freed_memory))  # the fastest setup's allocator for what follows
    return results


def fp16_side_rung(config, setup, x, y, device, args, peaks, flops_per_step) -> Result:
    """fp16 autocast + GradScaler (CUDA only): shown beside bf16, never kept (bf16 needs no loss scaling)."""
    model = build_model(config, setup, device, args.seed)
    with matmul_precision(setup.tf32):
        firsts, times = time_steps([make_train_step(model, setup, device)], x, y, device, args.warmup, args.steps, 1e9)
    ms = statistics.median(times[0])
    r = Result("  (beside: fp16 autocast + GradScaler)", setup, ms, x.numel() / ms * 1e3, firsts[0], len(times[0]))
    r.kept, r.note, r.verdict = False, "side measurement", "side measurement"
    r.peak_fraction = flops_per_step / (ms / 1e3) / peaks["bf16"]
    print(f"{r.name:36s} {ms:9.1f} ms/iter {r.tokens_per_s:9.0f} tok/s  peak {r.peak_fraction:6.1%}")
    return r


def hf_twin(config: GPTConfig, device: torch.device, seed: int, dropout: bool = False):
    """``transformers.GPT2LMHeadModel`` of the same shape; dropout 0 (our computation) or GPT2Config's 0.1."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    kwargs = {} if dropout else dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        **kwargs,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(hf_config).to(device)


def compare_with_hf(config, x, y, device, args, peaks) -> dict:
    """Our eager fp32 step vs GPT2LMHeadModel's, interleaved on the same batch with the same optimizer."""
    ours = build_model(config, StepSetup(attn_impl="sdpa"), device, args.seed)
    hf_same = hf_twin(config, device, args.seed)
    hf_dropout = hf_twin(config, device, args.seed, dropout=True)
    fns = [
        make_train_step(m, StepSetup(), device, hf=h) for m, h in ((ours, False), (hf_same, True), (hf_dropout, True))
    ]
    _, times = time_steps(fns, x, y, device, args.warmup, args.hf_steps, 1e9)
    ms = [statistics.median(t) for t in times]
    tok = [x.numel() / m * 1e3 for m in ms]
    flops = train_flops(config, x.size(0), x.size(1))
    out = dict(
        ours_ms=ms[0],
        hf_ms=ms[1],
        hf_dropout_ms=ms[2],
        ours_tokens_per_s=tok[0],
        hf_tokens_per_s=tok[1],
        hf_dropout_tokens_per_s=tok[2],
        ratio=ms[1] / ms[0],
        ratio_vs_dropout=ms[2] / ms[0],
        ours_peak_fraction=flops / (ms[0] / 1e3) / peaks["fp32"],
        hf_peak_fraction=flops / (ms[1] / 1e3) / peaks["fp32"],
        all_ms=times,
    )
    print(
        f"eager fp32, interleaved: ours {ms[0]:.1f} ms ({tok[0]:.0f} tok/s) | "
        f"GPT2LMHeadModel dropout 0: {ms[1]:.1f} ms "
        f"({tok[1]:.0f} tok/s) -> ours x{out['ratio']:.2f} | with default dropout 0.1: {ms[2]:.1f} ms "
        f"-> ours x{out['ratio_vs_dropout']:.2f}"
    )
    return out


# op name fragments -> category, first match wins (aten op names of torch.profiler)
OP_CATEGORIES = [
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention kernel", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("layernorm", ("layer_norm",)),
    ("optimizer (AdamW)", ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt")),
    ("memory (copy/fill/cat/zero)", ("copy_", "fill_", "zero_", "cat", "clone", "contiguous", "to_copy", "empty")),
    ("elementwise (gelu, add, mul, tanh, ...)", ("gelu", "add", "mul", "tanh", "pow", "div", "sub", "where", "sum")),
]


def profile_step(step, x, y) -> dict[str, float]:
    """Self CPU time (ms) of one training step, grouped by :data:`OP_CATEGORIES` (CPU only)."""
    from torch.profiler import ProfilerActivity, profile

    step(x, y)  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x, y)
    groups: dict[str, float] = {name: 0.0 for name, _ in OP_CATEGORIES}
    groups["other"] = 0.0
    for evt in prof.key_averages():
        if not evt.key.startswith("aten::"):
            continue
        us = evt.self_cpu_time_total
        cat = next((name for name, keys in OP_CATEGORIES if any(k in evt.key for k in keys)), "other")
        groups[cat] += us / 1e3
    return groups


def profile_ours_vs_hf(config, x, y, device, seed) -> str:
    """Markdown table: where one eager fp32 training step spends its time, ours vs GPT2LMHeadModel (dropout 0)."""
    ours = build_model(config, StepSetup(attn_impl="sdpa"), device, seed)
    hf = hf_twin(config, device, seed)
    a = profile_step(make_train_step(ours, StepSetup(), device), x, y)
    b = profile_step(make_train_step(hf, StepSetup(), device, hf=True), x, y)
    lines = ["| op category (self CPU time) | ours ms | GPT2LMHeadModel ms |", "|---|---:|---:|"]
    for cat in a:
        lines.append(f"| {cat} | {a[cat]:.0f} | {b[cat]:.0f} |")
    lines.append(f"| **total** | {sum(a.values()):.0f} | {sum(b.values()):.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    return table


def load_average() -> float:
    """The 1-minute load average (NaN where the OS has none): whether other work shared the machine."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def run_metadata(device, preset, config, B, T, steps, warmup, load_before, malloc_on) -> dict:
    """What :func:`markdown` prints above the table: device, torch, date, model, batch, load, allocator setting."""
    load_after = load_average()
    is_cuda = device.type == "cuda"
    return dict(
        device=(
            torch.cuda.get_device_name(device)
            if is_cuda
            else f"CPU ({os.cpu_count()} cores, {cpu_model_name()}), torch threads: {torch.get_num_threads()}"
        ),
        device_type=device.type,
        torch=torch.__version__,
        date=datetime.date.today().isoformat(),
        model=f"{preset} ({config.n_layer} layers, {config.n_embd} wide)",
        B=B,
        T=T,
        steps=steps,
        warmup=warmup,
        load_before=f"{load_before:.1f}",
        load_after=f"{load_after:.1f}",
        loaded=max(load_before, load_after) > 0.5 * (os.cpu_count() or 1) + 0.5,
        malloc="on" if malloc_on else "off",
    )


def markdown(results, hf, peaks, meta) -> str:
    """The ladder (and the ours-vs-HF comparison when ``hf``) as a markdown table, below a line of conditions."""
    is_cuda = meta["device_type"] == "cuda"
    frac_name = "MFU" if is_cuda else "% of matmul peak"
    lines = [
        f"Device: {meta['device']}; torch {meta['torch']}; {meta['date']}; model {meta['model']}, "
        f"B={meta['B']}, T={meta['T']}, AdamW; median of {meta['steps']} timed steps after {meta['warmup']} warm-up.",
        f"Load average before/after: {meta['load_before']} / {meta['load_after']} (the machine was "
        f"{'shared with other jobs' if meta['loaded'] else 'quiet'}).",
        f"Peak: {peaks['desc']}.",
        "",
        f"| step | ms/iter | tokens/s | speed-up | {frac_name} | kept | video: ms/iter (A100, B=16, T=1024) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    base = next((r.ms for r in results if not math.isnan(r.ms)), math.nan)
    for r in results:
        if math.isnan(r.ms):
            lines.append(f"| {r.name} | failed | | | | no | {r.ref_ms or ''} |")
            continue
        note = f" ({r.note})" if r.note else ""
        lines.append(
            f"| {r.name.strip()}{note} | {r.ms:.0f} | {r.tokens_per_s:,.0f} | {base / r.ms:.2f}x | "
            f"{r.peak_fraction:.0%} | {'yes' if r.kept else 'no: ' + r.verdict} | {r.ref_ms or ''} |"
        )
    if hf:
        lines += [
            "",
            f"Same config, batch and optimizer, eager fp32, steps interleaved (glibc keeps freed memory: "
            f"{meta.get('malloc', 'off')}):",
            "",
            f"| training step | ms/iter | tokens/s | ours is faster by | {frac_name} (fp32) |",
            "|---|---:|---:|---:|---:|",
            f"| ours (SDPA, no compile) | {hf['ours_ms']:.0f} | {hf['ours_tokens_per_s']:,.0f} | | "
            f"{hf['ours_peak_fraction']:.0%} |",
            f"| GPT2LMHeadModel, dropout 0 (same computation) | {hf['hf_ms']:.0f} | {hf['hf_tokens_per_s']:,.0f} | "
            f"{hf['ratio']:.2f}x | {hf['hf_peak_fraction']:.0%} |",
            f"| GPT2LMHeadModel, GPT2Config default dropout 0.1 | {hf['hf_dropout_ms']:.0f} | "
            f"{hf['hf_dropout_tokens_per_s']:,.0f} | {hf['ratio_vs_dropout']:.2f}x | |",
        ]
        kept = [r for r in results if r.kept and not math.isnan(r.ms)]
        if kept:
            fastest = min(kept, key=lambda r: r.ms)
            lines.append(
                f"| fastest rung: {fastest.name.strip()} | {fastest.ms:.0f} | {fastest.tokens_per_s:,.0f} | "
                f"{hf['hf_ms'] / fastest.ms:.2f}x | {fastest.peak_fraction:.0%} |"
            )
    return "\n".join(lines) + "\n"
