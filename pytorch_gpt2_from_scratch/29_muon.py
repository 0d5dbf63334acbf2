"""Step 29 (Section 5, rung 9): Muon for the hidden matrices, AdamW for the rest.

The largest change of the speedruns (Keller Jordan, 2024: the "Muon" blog post and modded-nanogpt). For every 2-D
weight inside the blocks, the momentum ``U`` is replaced by its orthogonalisation ``~ P Q^T`` (``U = P S Q^T``),
computed by 5 Newton-Schulz steps ``X <- a X + b (X X^T) X + c (X X^T)^2 X`` with Keller Jordan's quintic
coefficients ``(3.4445, -4.7750, 2.0315)``: each step applies ``p(s) = a s + b s^3 + c s^5`` to every singular
value, and 5 steps take every singular value above 1.5e-3 (of the normalised momentum) into ``[0.68, 1.21]``
(``muon.py`` explains why). Every direction of the
update then has the same size, so the rare directions learn as fast as the dominant ones. Embeddings, head and
gains stay with AdamW. The learning rates are retuned (Muon 0.05, embeddings 0.01, head and gains 4e-3, no weight
decay, no clipping: the orthogonalised update has a fixed size anyway), and the schedule becomes the speedruns'
warmup-stable-decay trapezoid: full learning rate at once, linear decay over the last 60% of the budget.

The lesson trains rung ``muon`` next to rung ``softcap`` (the one before it) for the same wall-clock budget and
seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half the
seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by more
than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/29_muon.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/29_muon.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/29_muon.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "muon"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
