"""Step 19 — Triton autotuning: a config space keyed by sequence length, head dim and causality, pruned.

What this step adds: the best tile sizes depend on the GPU and on the problem, so the kernels are wrapped in
``triton.autotune``. On the first call with a new *key* — here ``(N_CTX_BUCKET, HEAD_DIM, CAUSAL)``, the sequence
length rounded up to a power of two so that not every new length re-tunes — Triton compiles and times every config
of the space and caches the fastest; later calls with the same key reuse it.

* the space (``config_space``): query tile BLOCK_M × key tile BLOCK_N × ``num_stages`` (software pipelining, next
  step) × ``num_warps``: 36 configs per kernel in the ``full`` space. Each config of each kernel is compiled and
  timed on the first call per key, so by default the kernels tune over a ``small`` space of 4 hand-picked
  configs each (backward included, as Triton's fused-attention tutorial fixes its backward to one config);
  ``LLM_SCRATCH_AUTOTUNE=full`` (or ``LLM_SCRATCH_FULL_AUTOTUNE=1``) opts into all 36, ``=off`` uses the fixed
  ``GPU_DEFAULT_CONFIGS``;
* pruning (``config_is_valid``, run as ``early_config_prune`` before any compilation) removes configs that are
  *illegal* — the causal two-stage split needs the streamed tile to divide the resident one, the pipelined tiles
  must fit in shared memory (counted with the real element size: fp32 needs twice fp16) — and *pointless*:
  tiles longer than the sequence only compute padding, and a 128-row resident tile with 4 warps runs out of
  registers (ptxas spills them to memory; ``compile_ahead_of_time`` reports the counts, step 20 prints them).
  Fewer candidates also means a shorter tuning pause on the first call;
* under the interpreter (no CUDA) there is a single config: timings of NumPy emulation mean nothing, and a
  multi-config ``triton.autotune`` needs a GPU to benchmark on.

On CUDA this lesson also runs forward + backward for a few shapes and prints the configs the autotuner chose.

Run:  python triton_flash_attention_scratch/19_autotuning.py
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import add_device_argument, positive_int, seed_everything, seed_int
from triton_flash_attention_scratch.triton_flash import (
    AUTOTUNE_KEY,
    AUTOTUNE_MODE,
    INTERPRET,
    INTERPRET_CONFIGS,
    best_configs,
    config_is_valid,
    config_space,
    describe_config,
    flash_attention,
    resolve_kernel_device,
)

PROBLEMS = [(128, 32), (1024, 64), (4096, 64), (4096, 128), (16384, 128), (4096, 256)]


def pruned_counts(problems=PROBLEMS, mode: str = "full") -> dict[str, dict[tuple[int, int], int]]:
    """How many configs of each kernel's ``mode`` space survive pruning (fp16), per (N, D)."""
    return {
        kernel: {(n, d): sum(config_is_valid(kernel, c, n, d) for c in config_space(kernel, mode)) for n, d in problems}
        for kernel in ("fwd", "dkdv", "dq")
    }


def tune_and_report(tune_seq_lens: tuple[int, ...], head_dim: int, dev: torch.device) -> dict:
    """GPU only: run forward + backward once per key (the first call with a key tunes), return the choices."""

    for n in tune_seq_lens:
        for causal in (False, True):
            q, k, v = (torch.randn(4, 16, n, head_dim, device=dev, dtype=torch.float16, requires_grad=True)
                       for _ in range(3))  # fmt: skip
            flash_attention(q, k, v, causal=causal).sum().backward()  # first call with this key: tunes
    chosen = best_configs()
    print("\nconfigs chosen by the autotuner (key = N_CTX_BUCKET, HEAD_DIM, CAUSAL, then dtypes):")
    for kernel, table in chosen.items():
        for key, cfg in table.items():
            print(f"  {kernel:<5} {key}: {cfg}")
    return chosen


def main(tune_seq_lens: tuple[int, ...] = (1024, 4096), head_dim: int = 64, device: str = "auto", seed: int = 0):
    seed_everything(seed)
    dev = resolve_kernel_device(device)
    print(f"autotune key: {AUTOTUNE_KEY}; autotune mode {AUTOTUNE_MODE!r} (LLM_SCRATCH_AUTOTUNE=small|full|off)")
    counts = pruned_counts()
    small = pruned_counts(mode="small")
    print(f"\nconfigs kept after pruning, fp16: full space (of {len(config_space('fwd', 'full'))} per kernel) "
          f"/ small space (of {len(config_space('fwd', 'small'))})")  # fmt: skip
    print(f"{'(N, D)':<14}" + "".join(f"{k:>9}" for k in counts))
    for problem in PROBLEMS:
        print(f"{str(problem):<14}" + "".join(f"{counts[k][problem]:>5} /{small[k][problem]:>2}" for k in counts))

    example = [c for c in config_space("fwd", "full") if config_is_valid("fwd", c, 4096, 64)][:3]
    print("\ne.g. forward configs kept for N=4096, D=64: " + "; ".join(describe_config(c) for c in example))
    out = {"counts": counts, "small_counts": small, "chosen": {}}
    if INTERPRET:
        print("\nunder the interpreter there is one config per kernel and no benchmarking:")
        for kernel, cfg in INTERPRET_CONFIGS.items():
            print(f"  {kernel:<5} {describe_config(cfg)}")
        print("autotuning itself needs a CUDA GPU")
    else:
        out["chosen"] = tune_and_report(tune_seq_lens, head_dim, dev)
    return out


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tune-seq-lens", type=positive_int, nargs="+", default=[1024, 4096], help="GPU only")
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(p)
    args = p.parse_args()
    args.tune_seq_lens = tuple(args.tune_seq_lens)
    return args


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
