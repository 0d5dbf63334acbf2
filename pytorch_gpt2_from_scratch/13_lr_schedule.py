"""Step 13: the learning-rate schedule — linear warmup, then cosine decay to 10% of the maximum (GPT-3).

    lr(s) = max_lr · (s + 1) / warmup                                       for s < warmup
    lr(s) = min_lr + ½ (1 + cos(π (s − warmup) / (max_steps − warmup))) (max_lr − min_lr)   up to max_steps
    lr(s) = min_lr = 0.1 · max_lr                                            afterwards

Warmup keeps the first, badly-informed updates small while AdamW's moment estimates settle; the cosine lowers the
step size as the model approaches a minimum. The 124M recipe uses max_lr 6e-4, 715 warmup steps (375M tokens,
as in GPT-3) and 19,073 steps (10B tokens). The schedule is :func:`training.get_lr`, a plain function of the step,
so a resumed run computes exactly the same values.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/13_lr_schedule.py          # writes out/13_lr_schedule/lr_schedule.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import finite_float, nonnegative_int, out_dir, positive_float, positive_int, run_cli
from pytorch_gpt2_from_scratch.training import get_lr


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-lr", type=positive_float, default=6e-4)
    p.add_argument("--warmup-steps", type=nonnegative_int, default=715)
    p.add_argument("--max-steps", type=positive_int, default=19073)
    p.add_argument("--min-lr-ratio", type=finite_float, default=0.1)
    return p.parse_args(argv)


def main(max_lr=6e-4, warmup_steps=715, max_steps=19073, min_lr_ratio=0.1) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def lr(s: int) -> float:
        return get_lr(s, max_lr=max_lr, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)

    steps = list(range(max_steps + max_steps // 20))
    lrs = [lr(s) for s in steps]
    mid = warmup_steps + (max_steps - warmup_steps) // 2
    print(f"{'step':>8}  learning rate")
    for s in sorted(s for s in {0, 1, warmup_steps - 1, warmup_steps, mid, max_steps - 1, max_steps} if s >= 0):
        print(f"{s:8d}  {lr(s):.6e}")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, lrs)
    ax.axvline(warmup_steps, color="gray", ls=":", label=f"end of warmup ({warmup_steps})")
    ax.axvline(max_steps, color="gray", ls="--", label=f"max_steps ({max_steps})")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"warmup + cosine to {min_lr_ratio:.0%} of {max_lr:g}")
    ax.legend()
    fig.tight_layout()
    png = out_dir("13_lr_schedule") / "lr_schedule.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    print(f"wrote {png}")
    return {"steps": steps, "lrs": lrs, "png": png}


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
