"""Step 22 (Section 5, rung 2): rotary position embeddings instead of the learned position table.

GPT-2 adds a learned vector ``wpe[m]`` to the token at position ``m``. RoPE (Su et al. 2021) instead rotates each
query and key: the pair ``(x_i, x_{i+hs/2})`` of a head vector at position ``m`` turns by the angle ``m theta_i``,
``theta_i = 10000^(-2i/hs)``::

    rope(x)_i        = x_i cos(m theta_i) - x_{i+hs/2} sin(m theta_i)
    rope(x)_{i+hs/2} = x_{i+hs/2} cos(m theta_i) + x_i sin(m theta_i)

A rotation keeps lengths and rotations compose, so ``rope(q_m) . rope(k_n)`` depends only on ``m - n``: attention
scores see *relative* positions, nothing has to be learned for them and the ``block_size x C`` table disappears.
Chapter 3 (Llama 2) builds RoPE too; a chapter only imports earlier chapters, so ``modern.py`` has its own
few-line ``apply_rope`` and a test checks it equals chapter 3's ``apply_rotary_emb_half``. From this rung on the
model is ``modern.ModernGPT`` (with every switch off it is exactly ``model.GPT``: tested).

The lesson trains rung ``rope`` next to rung ``fast-step`` (the one before it) for the same wall-clock budget and
seeds, interleaved (seed 0 of every rung, then seed 1), prints the table (val loss at the budget as mean +- half the
seed range, time to reach the baseline's loss, tokens/s, verdict: "kept" only if it beats the previous rung by more
than the seed spread) and writes it with a plot of val loss against training time to ``out/speedrun/22_rope.*``.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/22_rotary_embeddings.py                                 # 2 seeds x 120 s per rung
    python pytorch_gpt2_from_scratch/22_rotary_embeddings.py --time-budget 30 --seeds 0      # a quick look
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_gpt2_from_scratch.speedrun import DEFAULT_BUDGET, compare_rungs, ladder, lesson_cli, show_change

KEY = "rope"


def main(time_budget=DEFAULT_BUDGET, seeds=(0, 1), eval_points=8, val_tokens=4096, threads=None, tiny=False,
         out=None, progress=True, device="auto", clock="wall") -> dict:  # fmt: skip
    rungs = ladder(KEY)[-2:]  # the rung before and this one, each with every change up to it
    show_change(*rungs)  # the recipe fields this rung changes

    return compare_rungs(rungs, time_budget, seeds, eval_points, val_tokens, threads, tiny, out, progress, device,
                         clock)  # fmt: skip


if __name__ == "__main__":
    run_cli(lambda: lesson_cli(main, __doc__))
