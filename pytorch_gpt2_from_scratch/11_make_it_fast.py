"""Lesson 11 — Section 2, making it fast: one benchmark that measures the whole ladder on *this* device.

Each rung changes one thing on top of the fastest configuration so far, always through an option of the one
model module (``GPTConfig.attn_impl``, ``GPTConfig.pad_vocab_to``) or of the training step (matmul precision,
autocast, ``torch.compile``), so the numbers measure the real code:

    fp32 baseline (manual attention) -> [CPU only: glibc keeps freed memory] -> TF32 matmuls -> bf16 autocast
    (fp16 + GradScaler shown beside it on CUDA) -> torch.compile -> flash attention
    (F.scaled_dot_product_attention) -> vocab 50257 -> 50304

The CPU-only rung is not in the video: a CPU step allocates and frees hundreds of MB (the logits and their
gradient), and glibc's malloc hands such blocks back to the OS on every ``free``, so each step page-faults fresh
memory in; two ``mallopt`` calls make it reuse the memory instead (``speed_ladder.keep_freed_memory``).

Beside our numbers stands the video's column (one A100, B=16, T=1024: 1000, 333, 300, 130, 96, 93 ms).
A rung that does *not* help on this device (TF32 does not exist on CPUs; bf16 depends on the CPU's bf16
support) is shown honestly and not kept: a rung is kept only when its median step is faster than the best so far
by more than the measured spread of the step times (``bench_stats.rung_verdict``), else it prints "within noise"
or "slower"; the next rung builds on the fastest configuration kept so far (``--keep-all`` forces the video's
strictly cumulative ladder).

The same run also measures, interleaved step by step on the same batch and optimizer, our eager fp32 training
step against ``transformers.GPT2LMHeadModel``'s (with dropout 0, i.e. the same computation, and with
GPT2Config's default dropout 0.1), and the fraction of the device's peak: on CPU the peak is a large matmul
measured in the same run (fp32, and bf16 for bf16 rungs); on CUDA it is MFU against the bf16 dense peak.
The table is printed and written as markdown to ``out/gpt2_from_scratch/11_make_it_fast.md``.

The machinery (the setups, the timed training step, the peaks, the Hugging Face twin, the profiler, the table)
lives in ``speed_ladder.py``; this file is the ladder itself: the batch and the peaks, every rung, the table.

Run::

    python pytorch_gpt2_from_scratch/11_make_it_fast.py                          # CPU: cpu-small, B=8, T=256
    python pytorch_gpt2_from_scratch/11_make_it_fast.py --skip compile bf16      # skip slow rungs
    python pytorch_gpt2_from_scratch/11_make_it_fast.py --device cuda            # GPU: 124M, B=16, T=1024
"""

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import (
    add_device_argument,
    atomic_write_text,
    nonnegative_int,
    out_dir,
    positive_float,
    positive_int,
    resolve_device,
    run_cli,
    seed_int,
)
from pytorch_gpt2_from_scratch.model import PRESET_NAMES, GPTConfig
from pytorch_gpt2_from_scratch.speed_ladder import (
    SKIPPABLE,
    compare_with_hf,
    device_peaks,
    keep_freed_memory,
    load_average,
    markdown,
    profile_ours_vs_hf,
    remeasure_cpu_peak,
    run_ladder,
    run_metadata,
    train_flops,
)


def main(
    preset: str | None = None,
    B: int | None = None,
    T: int | None = None,
    steps: int = 3,
    warmup: int = 1,
    hf_steps: int = 3,
    device: str = "auto",
    skip: tuple = (),
    keep_all: bool = False,
    no_hf: bool = False,
    rung_budget_s: float = 120.0,
    seed: int = 1337,
    out: str | None = None,
    profile: bool = False,
    threads: int | None = None,
    peak_n: int | None = None,
) -> dict:
    if threads:
        torch.set_num_threads(threads)  # on a busy machine 1 thread avoids OpenMP threads spin-waiting on each other
    dev = resolve_device(device)
    is_cuda = dev.type == "cuda"
    preset = preset or ("gpt2" if is_cuda else "cpu-small")
    B = B or (16 if is_cuda else 8)
    T = T or (1024 if is_cuda else 256)
    unknown = set(skip) - set(SKIPPABLE)
    if unknown:
        raise ValueError(f"--skip accepts {sorted(SKIPPABLE)}, got {sorted(unknown)}")
    config = GPTConfig.preset(preset)
    if T > config.block_size:
        raise ValueError(f"T={T} exceeds block_size {config.block_size} of preset {preset!r}")
    args = argparse.Namespace(
        steps=steps,
        warmup=warmup,
        hf_steps=hf_steps,
        keep_all=keep_all,
        rung_budget_s=rung_budget_s,
        seed=seed,
        skip_names={SKIPPABLE[s] for s in skip},
    )
    load_before = load_average()

    # one random batch for every rung, and the peaks the fractions are measured against
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config.vocab_size, (B, T), generator=g).to(dev)
    y = torch.randint(0, config.vocab_size, (B, T), generator=g).to(dev)
    print(
        f"device {dev}, torch {torch.__version__}, {preset}: {config.n_layer} layers, {config.n_embd} wide, "
        f"B={B}, T={T}"
    )
    peaks = device_peaks(dev, n=peak_n)

    # every rung on top of the fastest kept so far; then ours vs GPT2LMHeadModel, and (--profile) where the time goes
    try:
        results = run_ladder(config, x, y, dev, args, peaks)
        kept = [r for r in results if r.kept and not math.isnan(r.ms)]
        malloc_on = bool(kept) and kept[-1].setup.keep_freed_memory
        hf = None if no_hf else compare_with_hf(config, x, y, dev, args, peaks)
        prof = profile_ours_vs_hf(config, x, y, dev, seed) if profile and dev.type == "cpu" else None
    finally:
        keep_freed_memory(False)  # glibc's defaults again for whatever runs next in this process
    if not is_cuda:  # the peak again after the ladder; keep the better measurement
        remeasure_cpu_peak(peaks, results, hf, train_flops(config, B, T), dev)

    # the table
    meta = run_metadata(dev, preset, config, B, T, steps, warmup, load_before, malloc_on)
    table = markdown(results, hf, peaks, meta)
    if prof:
        table += "\nWhere one eager fp32 training step spends its time (torch.profiler, self CPU time):\n\n" + prof
    path = Path(out) if out else out_dir("gpt2_from_scratch") / "11_make_it_fast.md"
    atomic_write_text(table, path)
    print()
    print(table)
    print(f"markdown table written to {path}")
    return dict(results=results, hf=hf, peaks=peaks, table=table, path=path, profile=prof)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, choices=PRESET_NAMES, help="default: gpt2 on CUDA, cpu-small on CPU")
    p.add_argument("--B", type=positive_int, default=None, help="batch size (default: 16 on CUDA, 8 on CPU)")
    p.add_argument("--T", type=positive_int, default=None, help="sequence length (default: 1024 on CUDA, 256 on CPU)")
    p.add_argument("--steps", type=positive_int, default=3, help="timed steps per rung (median reported)")
    p.add_argument(
        "--warmup", type=nonnegative_int, default=1, help="untimed steps per rung (compilation happens here)"
    )
    p.add_argument(
        "--hf-steps", type=positive_int, default=3, help="timed steps of the ours-vs-Hugging-Face comparison"
    )
    add_device_argument(p)
    p.add_argument("--skip", nargs="*", default=[], choices=sorted(SKIPPABLE), help="rungs to leave out")
    p.add_argument("--keep-all", action="store_true", help="strictly cumulative ladder, even through slower rungs")
    p.add_argument("--no-hf", action="store_true", help="skip the comparison with transformers.GPT2LMHeadModel")
    p.add_argument(
        "--rung-budget-s", type=positive_float, default=120.0, help="stop timing a rung after this many seconds"
    )
    p.add_argument("--seed", type=seed_int, default=1337)
    p.add_argument("--profile", action="store_true", help="CPU: also profile one step of ours and of HF by op type")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--peak-n", type=positive_int, default=None, help="size n of the n^3 peak-probe matmul (default: 2048 on CPU)"
    )
    p.add_argument("--out", default=None, help="markdown file (default: out/gpt2_from_scratch/11_make_it_fast.md)")
    args = p.parse_args(argv)
    args.skip = tuple(args.skip)
    return args


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
