"""Step 33 (Section 5, rung 13): the lean recipe -- take back what did not pay at this budget.

A ladder is cumulative, so a change that measured *within noise* or *worse* is still inside every rung above it.
At the end it is worth asking, change by change, what each one costs in tokens/s and what it bought in loss. On a
2-core CPU with a 120-s budget three of them did not pay (the README's ladder table):

* the logit soft-cap ``15 tanh(logits / 15)`` takes more passes over the largest tensor of the step, the
  ``(B, T, 50257)`` logits, forward and backward: 28% fewer tokens/s, and the loss was not better;
* the value-embedding table adds ``V x C`` = 6.4 M parameters that the optimizer updates every step (the
  embeddings' gradient is dense), for a loss within noise;
* zero-initialised output projections measured worse at this step count (with ``lm_head`` at zero the first step
  can move only the head).

This rung switches the three off again (everything else stays: RoPE, RMSNorm, QK-norm, ReLU^2, untied head, Muon,
the x0 skips, one B 8 x T 128 micro-batch) and trains it next to rung ``batch``. Speed-runs at scale keep all three
(modded-nanogpt): what pays depends on the budget, the model size and the hardware -- which is the point of
measuring every rung.

The lesson prints the recipe fields it changes, then the table (val loss at the budget as mean +- half the seed
range, time to reach the baseline's loss, tokens/s, verdict) and writes it with a plot of val loss against training
time to ``out/speedrun/33_lean.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/33_lean_recipe.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/33_lean_recipe.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "lean"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
