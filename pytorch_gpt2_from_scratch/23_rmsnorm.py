"""Step 23 (Section 5, rung 3): RMSNorm instead of LayerNorm, and no biases.

LayerNorm subtracts the mean, divides by the standard deviation, multiplies by a gain and adds a bias. RMSNorm
(Zhang & Sennrich 2019; Llama) skips the mean and the bias::

    RMSNorm(x) = g * x / sqrt(mean(x^2) + eps)

It is cheaper and trains as well; with it the Linear layers drop their biases too (``bias=False``), as in Llama and
the speedruns: fewer parameters and fewer kernels per step for the same function class (the residual stream can
still carry any offset).

The lesson trains rung ``rmsnorm`` next to rung ``rope`` (the one before it) for the same wall-clock budget and
seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half the
seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by more
than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/23_rmsnorm.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/23_rmsnorm.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/23_rmsnorm.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "rmsnorm"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
