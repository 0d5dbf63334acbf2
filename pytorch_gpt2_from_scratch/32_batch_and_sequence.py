"""Step 32 (Section 5, rung 12): batch size and sequence length for the budget.

With a fixed number of seconds, the batch is a trade-off: more tokens per step give a less noisy gradient but
fewer steps. The baseline's 1,024 tokens (B 4 x T 128 x 2 micro-steps) came from the GPT-2 recipe, not from the
budget. This rung keeps 1,024 tokens per step but computes them as one B 8 x T 128 micro-batch instead of two
accumulated ones (fewer, larger matmuls; no second pass over the weights) -- on a CPU the step is then purely a
question of kernel efficiency, which the lesson measures.

The lesson trains rung ``batch`` next to rung ``x0-skip`` (the one before it) for the same wall-clock budget and
seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half the
seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by more
than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/32_batch.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/32_batch_and_sequence.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/32_batch_and_sequence.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "batch"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
