"""Step 26 (Section 5, rung 6): untie the output head from the token embedding.

GPT-2 uses one matrix for the input embedding and the output head (Section 1, lesson 9). That saves 6.4M
parameters here, but the two jobs differ: a row of ``wte`` is what a token *means* as input, a row of ``lm_head``
scores how likely it is *next*. The speedruns untie them (and, next rung, start the head at zero); the cost is a
second 50257 x 128 matrix to update, the gain two matrices free to specialise.

The lesson trains rung ``untied`` next to rung ``relu2`` (the one before it) for the same wall-clock budget and
seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half the
seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by more
than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/26_untied.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/26_untied_head.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/26_untied_head.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "untied"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
