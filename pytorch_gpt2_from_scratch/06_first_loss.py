"""Lesson 6 — let's train: a (B, T) batch from tiny Shakespeare, logits (B, T, C) and the cross-entropy loss.

Take ``B * T + 1`` consecutive tokens; the inputs are the first ``B * T`` viewed as ``(B, T)``, the targets the
same window shifted by one, so ``y[b, t]`` is the token that follows ``x[b, t]``::

    buf = tokens[: B * T + 1]
    x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
    loss = -mean_{b,t} log softmax(logits[b, t])[y[b, t]]

At initialization every token should be about equally likely (the GPT-2 init keeps the logits small), so the
loss should be close to ``-ln(1 / vocab_size) = ln(50257) ~= 10.82``. A much larger value would mean the
initial predictions are confidently wrong, and the first steps would be spent undoing that.

Run (needs tiny Shakespeare and the GPT-2 BPE; offline set LLM_SCRATCH_DATA and TIKTOKEN_CACHE_DIR)::

    python pytorch_gpt2_from_scratch/06_first_loss.py
"""

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import add_device_argument, positive_int, resolve_device, run_cli, seed_everything, seed_int
from pytorch_gpt2_from_scratch.data import load_tinyshakespeare_tokens
from pytorch_gpt2_from_scratch.model import GPT, PRESET_NAMES, GPTConfig


def main(preset: str = "gpt2", B: int = 4, T: int = 32, device: str = "auto", seed: int = 1337) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)
    tokens = load_tinyshakespeare_tokens()
    print(f"tiny Shakespeare: {tokens.numel():,} GPT-2 tokens")
    buf = tokens[: B * T + 1]
    x = buf[:-1].view(B, T).to(dev)  # (B*T,) -> (B, T) inputs
    y = buf[1:].view(B, T).to(dev)  # the same tokens shifted by one: the targets
    model = GPT(GPTConfig.preset(preset)).to(dev)
    logits, loss = model(x, y)
    expected = math.log(model.config.vocab_size)
    print(f"x {tuple(x.shape)} -> logits {tuple(logits.shape)} (B, T, vocab_size)")
    print(f"loss at init: {loss.item():.4f}   ln(vocab_size) = ln({model.config.vocab_size}) = {expected:.4f}")
    return dict(loss=loss.item(), expected=expected, logits_shape=tuple(logits.shape))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2", choices=PRESET_NAMES)
    p.add_argument("--B", type=positive_int, default=4)
    p.add_argument("--T", type=positive_int, default=32)
    add_device_argument(p)
    p.add_argument("--seed", type=seed_int, default=1337)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
