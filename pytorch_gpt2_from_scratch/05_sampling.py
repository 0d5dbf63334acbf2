"""Lesson 5 — sampling text (``pytorch_gpt2_from_scratch/sampling.py``).

The prompt is encoded with tiktoken's ``gpt2`` BPE, repeated into a batch of ``num_return_sequences`` rows, and
extended one token at a time: the logits of the last position go through a softmax, only the ``top_k`` (50,
as Hugging Face's pipeline) most likely tokens are kept, and one is drawn from a *seeded* ``torch.Generator``
so the same seed gives the same text. All rows are sampled in parallel.

With the real GPT-2 weights this prints five continuations of "Hello, I'm a language model,"; with
``--random-init`` the tokens are random (nothing was learned) but the mechanics are the same.

Run (the device is auto-detected: CUDA, then MPS, then CPU)::

    python pytorch_gpt2_from_scratch/05_sampling.py
    python pytorch_gpt2_from_scratch/05_sampling.py --random-init --max-length 20
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import add_device_argument, resolve_device, run_cli
from pytorch_gpt2_from_scratch.cli import add_model_arguments, resolve_model
from pytorch_gpt2_from_scratch.data import gpt2_encoding
from pytorch_gpt2_from_scratch.model import GPT
from pytorch_gpt2_from_scratch.sampling import generate_text


def main(
    model: str = "gpt2",
    random_init: bool = False,
    prompt: str = "Hello, I'm a language model,",
    num_return_sequences: int = 5,
    max_length: int = 30,
    top_k: int = 50,
    temperature: float = 1.0,
    seed: int = 42,
    device: str = "auto",
) -> dict:
    dev = resolve_device(device)
    print(f"device: {dev}")
    enc = gpt2_encoding()
    gpt = GPT.from_pretrained(resolve_model(model, random_init)).to(dev)
    texts = generate_text(
        gpt,
        enc,
        prompt,
        num_return_sequences=num_return_sequences,
        max_length=max_length,
        top_k=top_k,
        temperature=temperature,
        seed=seed,
        device=dev,
    )
    for text in texts:
        print(">", text.replace("\n", " "))
    return dict(texts=texts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--prompt", default="Hello, I'm a language model,")
    p.add_argument("--num-return-sequences", type=int, default=5)
    p.add_argument("--max-length", type=int, default=30, help="tokens per sequence, prompt included")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    add_device_argument(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
