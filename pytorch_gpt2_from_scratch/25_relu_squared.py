"""Step 25 (Section 5, rung 5): the ReLU^2 MLP instead of tanh-GELU.

The MLP's non-linearity becomes ``relu(x)^2`` (So et al. 2021, "Primer: searching for efficient transformers";
used in modded-nanogpt)::

    mlp(x) = c_proj(relu(c_fc(x))^2)

Squared ReLU is exactly zero for negative inputs (sparse activations) and grows quadratically for positive ones;
Primer found it the single most useful change of their search, and it is cheaper than tanh-GELU.

The lesson trains rung ``relu2`` next to rung ``qk-norm`` (the one before it) for the same wall-clock budget and
seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half the
seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by more
than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/25_relu2.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/25_relu_squared.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/25_relu_squared.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "relu2"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
