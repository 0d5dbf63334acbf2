"""Step 20 (Section 5, rung 0): the speedrun harness and its baseline: the GPT-2 recipe for a fixed wall-clock budget.

Sections 1-4 trained for a number of *steps*. A speedrun trains for a number of *seconds* and asks how low the
validation loss gets: every later change must pay for its cost per step with better steps. ``speedrun.py`` is the
harness all the rungs share:

    clock  = sum of the training steps' durations           (evaluation pauses it)
    f      = clock / budget                                  (the elapsed fraction)
    lr(f)  = max_lr * f / w                      for f < w   (warmup over the first w = 10% of the *time*)
    lr(f)  = min_lr + (1 + cos(pi (f - w)/(1 - w))) / 2 * (max_lr - min_lr)      (cosine to min_lr = max_lr / 10)
    stop   before the first step that would start at clock >= budget (so the run ends within one step of it)

The baseline is ``train_gpt2.py``'s ``cpu`` preset, i.e. the GPT-2 recipe at the size that fits a laptop's budget:
4 layers, 4 heads, 128 wide (7.2M parameters, most of them the 50257 x 128 tied embedding), 1,024 tokens per step
(B 4 x T 128 x 2 micro-steps), AdamW (0.9, 0.95), max lr 2e-3, weight decay 0.1, clipping at 1.0, fp32. The lesson
trains it with each seed (the seed sets the initial weights and where the data stream starts) and reports the val
loss at the budget, the tokens seen and the tokens/s.

The lesson trains rung ``baseline`` alone (it is the reference of every later rung) for the same wall-clock budget
and seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half
the seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by
more than the seed spread) and writes it with a plot of val loss against training time to
``out/speedrun/20_baseline.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/20_speedrun_baseline.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/20_speedrun_baseline.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import (
    DEFAULT_BUDGET,
    compare_rungs,
    ladder,
    lesson_cli,
    show_change,
    show_schedule,
)

KEY = "baseline"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)  # rung 0 alone: the reference every later rung is measured against
    show_change(*rungs)  # the whole recipe (train_gpt2.py's cpu preset)

    # the clock drives the learning rate: warmup over the first 10% of the *time*, then cosine to lr / 10
    show_schedule(rungs[0], time_budget)

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
