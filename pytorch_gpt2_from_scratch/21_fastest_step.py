"""Step 21 (Section 5, rung 1): the fastest step on this device (measured precision, glibc keeps memory).

Lesson 11 measured that the same step can run 2-3x faster in bf16 autocast on CPUs with bf16 instructions (AMX,
AVX-512-BF16) -- and that bf16 is *emulated*, and many times slower, on CPUs without them. So the recipe does not
guess: ``precision="auto"`` times a forward + backward of a small slice of the first batch in fp32 and in bf16
(interleaved, a few rounds, seconds) and keeps the faster one, and the log says which (on CUDA it is bf16 autocast
plus TF32 matmuls). Lesson 11's allocator setting (two ``mallopt`` calls: glibc keeps freed memory instead of
unmapping it, so a step reuses the previous step's hundreds of MB instead of page-faulting them in again) is on
too. ``torch.compile`` is not used: its first step costs 15-90 s of compilation on a CPU, more than it saves in a
two-minute budget. Nothing about the model or the optimizer changes: any gain is tokens per second.

The lesson trains rung ``fast-step`` next to rung ``baseline`` (the one before it) for the same wall-clock budget
and seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half
the seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by
more than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/21_fast-
step.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/21_fastest_step.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/21_fastest_step.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "fast-step"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
