"""Lesson 8 — ``DataLoaderLite``: walk through the whole corpus in contiguous (B, T) batches.

Lesson 7 memorised one batch; now every step takes the *next* ``B * T + 1`` tokens of tiny Shakespeare
(inputs and targets shifted by one), so the model sees new text each step and the loss falls because it
learns the statistics of the language, not one batch. ``DataLoaderLite`` (``data.py``) reads the stream as a
ring: a batch that runs past the end continues at token 0, so no token is ever skipped and one epoch is
exactly ``N / (B * T)`` steps. ``state_dict()`` saves the cursor for an exact resume.

Run (needs tiny Shakespeare and the GPT-2 BPE; offline set LLM_SCRATCH_DATA and TIKTOKEN_CACHE_DIR)::

    python pytorch_gpt2_from_scratch/08_dataloader_lite.py
    python pytorch_gpt2_from_scratch/08_dataloader_lite.py --preset gpt2 --B 4 --T 32 --steps 50
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import (
    add_device_argument,
    positive_float,
    positive_int,
    resolve_device,
    run_cli,
    seed_everything,
    seed_int,
)
from pytorch_gpt2_from_scratch.basic_training import train_steps
from pytorch_gpt2_from_scratch.data import DataLoaderLite, gpt2_encoding, load_tinyshakespeare_tokens
from pytorch_gpt2_from_scratch.model import GPT, PRESET_NAMES, GPTConfig


def main(
    preset: str = "cpu-small",
    B: int = 4,
    T: int = 32,
    steps: int = 30,
    lr: float = 3e-4,
    device: str = "auto",
    seed: int = 1337,
) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)
    loader = DataLoaderLite(B, T, load_tinyshakespeare_tokens())
    print(f"{loader.num_tokens:,} tokens; 1 epoch = {loader.num_tokens // (B * T)} batches of B*T = {B * T} tokens")
    x, y = loader.next_batch()
    enc = gpt2_encoding()
    print(f"first input row : {enc.decode(x[0].tolist())!r}")
    print(f"its target row  : {enc.decode(y[0].tolist())!r}  (the same text, one token later)")
    loader.reset()

    model = GPT(GPTConfig.preset(preset)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = train_steps(model, optimizer, loader.next_batch, steps, dev, desc="train on tiny Shakespeare")
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; loader state {loader.state_dict()}")
    return dict(losses=losses, loader_state=loader.state_dict(), batches_per_epoch=loader.num_tokens // (B * T))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-small", choices=PRESET_NAMES)
    p.add_argument("--B", type=positive_int, default=4)
    p.add_argument("--T", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=30)
    p.add_argument("--lr", type=positive_float, default=3e-4)
    add_device_argument(p)
    p.add_argument("--seed", type=seed_int, default=1337)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
