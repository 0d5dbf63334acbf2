"""Lesson 7 — the optimization loop: overfit a single batch.

The smallest possible training run: one fixed ``(B, T)`` batch, AdamW, and the usual four lines per step::

    optimizer.zero_grad()
    logits, loss = model(x, y)
    loss.backward()
    optimizer.step()

A model with millions of parameters can memorise ``B * T`` tokens, so the loss must fall towards zero. If it
does not, something in the model or the loop is broken — a cheap check before training for real. The loss
curve goes to ``out/gpt2_from_scratch/07_overfit_batch.png``.

Run (needs tiny Shakespeare and the GPT-2 BPE; offline set LLM_SCRATCH_DATA and TIKTOKEN_CACHE_DIR)::

    python pytorch_gpt2_from_scratch/07_overfit_batch.py                 # 6-layer model, ~1 minute on CPU
    python pytorch_gpt2_from_scratch/07_overfit_batch.py --preset gpt2   # the 124M model of the video
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from pytorch_basis.common import (
    add_device_argument,
    out_dir,
    positive_float,
    positive_int,
    resolve_device,
    run_cli,
    seed_everything,
    seed_int,
)
from pytorch_gpt2_from_scratch.basic_training import train_steps
from pytorch_gpt2_from_scratch.data import load_tinyshakespeare_tokens
from pytorch_gpt2_from_scratch.model import GPT, PRESET_NAMES, GPTConfig


def plot_losses(losses: list[float], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(
    preset: str = "cpu-small",
    B: int = 4,
    T: int = 32,
    steps: int = 50,
    lr: float = 1e-3,
    device: str = "auto",
    seed: int = 1337,
) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)
    buf = load_tinyshakespeare_tokens()[: B * T + 1]
    x, y = buf[:-1].view(B, T), buf[1:].view(B, T)  # the one batch we memorise
    model = GPT(GPTConfig.preset(preset)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = train_steps(model, optimizer, lambda: (x, y), steps, dev, desc="overfit one batch")
    png = plot_losses(losses, out_dir("gpt2_from_scratch") / "07_overfit_batch.png", f"{preset}: one batch")
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.4f} in {steps} steps; curve: {png}")
    return dict(losses=losses, png=png)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-small", choices=PRESET_NAMES)
    p.add_argument("--B", type=positive_int, default=4)
    p.add_argument("--T", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    add_device_argument(p)
    p.add_argument("--seed", type=seed_int, default=1337)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
