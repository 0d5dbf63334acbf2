"""Step 28 (Section 5, rung 8): soft-cap the logits: 15 tanh(logits / 15).

The logits pass through ``s * tanh(logits / s)`` with ``s = 15`` (Gemma 2 uses 30; modded-nanogpt 30, later
15)::

    softcap(z) = s tanh(z / s)  ~  z   for |z| << s,      never beyond +-s

The model cannot push a logit to extreme values to become over-confident on the frequent tokens of the first
steps, which keeps the early gradients of the head and the embeddings well behaved.

The lesson trains rung ``softcap`` next to rung ``zero-init`` (the one before it) for the same wall-clock budget and
seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half the
seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by more
than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/28_softcap.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/28_logit_softcap.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/28_logit_softcap.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "softcap"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
