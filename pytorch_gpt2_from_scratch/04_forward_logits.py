"""Lesson 4 — the forward pass: token ids (B, T) -> logits (B, T, vocab_size).

``GPT.forward`` adds token and position embeddings, runs the blocks, the final LayerNorm and the head. The
logits at position ``t`` score every possible *next* token after ``idx[:, :t+1]``; the last position is what
sampling (lesson 5) uses. The model only knows ``block_size`` positions, so a longer input is a clear
``ValueError`` ("sequence length 1025 exceeds block_size 1024"), not an index error deep in an embedding.

Run (the prompt is encoded with tiktoken's ``gpt2`` BPE; offline set ``TIKTOKEN_CACHE_DIR``)::

    python pytorch_gpt2_from_scratch/04_forward_logits.py
    python pytorch_gpt2_from_scratch/04_forward_logits.py --random-init
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import add_device_argument, resolve_device, run_cli
from pytorch_gpt2_from_scratch.cli import add_model_arguments, resolve_model
from pytorch_gpt2_from_scratch.data import gpt2_encoding
from pytorch_gpt2_from_scratch.model import GPT


def main(
    model: str = "gpt2", random_init: bool = False, prompt: str = "Hello, I'm a language model,", device: str = "auto"
) -> dict:
    dev = resolve_device(device)
    enc = gpt2_encoding()
    gpt = GPT.from_pretrained(resolve_model(model, random_init)).to(dev).eval()
    ids = enc.encode(prompt)
    idx = torch.tensor([ids], dtype=torch.long, device=dev)  # (1, T)
    with torch.no_grad():
        logits, _ = gpt(idx)  # (1, T, V)
    print(f"prompt {prompt!r} -> {len(ids)} tokens {ids}")
    print(f"logits {tuple(logits.shape)} = (B, T, vocab_size)")
    probs = torch.softmax(logits[0, -1], dim=-1)  # next-token distribution after the whole prompt
    top_p, top_i = torch.topk(probs, 5)
    top = [(enc.decode([i]), p) for i, p in zip(top_i.tolist(), top_p.tolist())]
    print("most likely next tokens: " + ", ".join(f"{tok!r} {p:.4f}" for tok, p in top))

    too_long = torch.zeros(1, gpt.config.block_size + 1, dtype=torch.long, device=dev)
    try:
        gpt(too_long)
        error = None
    except ValueError as e:
        error = str(e)
    print(f"a sequence of {too_long.size(1)} tokens: ValueError: {error}")
    return dict(logits_shape=tuple(logits.shape), top=top, error=error)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--prompt", default="Hello, I'm a language model,")
    add_device_argument(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
