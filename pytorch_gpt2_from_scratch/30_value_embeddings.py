"""Step 30 (Section 5, rung 10): value embeddings: a second token table added to every layer's values.

modded-nanogpt's value embeddings: a second table ``vte`` (V x C) whose row for the current token is mixed into
the values of every attention layer, ``v_l <- v_l + lambda_l * vte[idx]`` (``lambda_l`` learnable, 0.5 at init).
Attention can then move information about *which token* sits at a position without having to carry it through the
residual stream. It adds a 50257 x 128 table (AdamW) but almost no FLOPs: a lookup and an add per layer.

The lesson trains rung ``value-embed`` next to rung ``muon`` (the one before it) for the same wall-clock budget and
seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half the
seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by more
than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/30_value-
embed.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/30_value_embeddings.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/30_value_embeddings.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "value-embed"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
