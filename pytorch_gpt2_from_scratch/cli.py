"""Command-line plumbing shared by the chapter's lessons: which GPT-2 checkpoint to load.

``--model`` takes a Hugging Face hub name (``gpt2``, ``gpt2-medium``, ...; needs the network once) or a local
directory written by ``GPT2LMHeadModel.save_pretrained``. ``--random-init`` works offline: it writes a randomly
initialised GPT-2 (124M shape, the exact layout of the published checkpoint) once into
``out/gpt2_from_scratch/random_gpt2_124M`` with ``save_pretrained`` and loads that instead, so every lesson runs
without network (the weights are random, so the text they produce is gibberish).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pytorch_basis.common import out_dir
from pytorch_gpt2_from_scratch.model import save_random_hf_checkpoint


def add_model_arguments(parser: argparse.ArgumentParser, default: str = "gpt2") -> None:
    parser.add_argument(
        "--model",
        default=default,
        help="Hugging Face hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a local directory written by "
        "save_pretrained (default: %(default)s)",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="offline: use a randomly initialised 124M GPT-2 checkpoint written by save_pretrained instead of --model",
    )


def resolve_model(model: str, random_init: bool = False) -> str:
    """The hub name or directory to load: ``model``, or the random 124M checkpoint (written on first use)."""
    if not random_init:
        return model
    folder = out_dir("gpt2_from_scratch", "random_gpt2_124M")
    if not (Path(folder) / "config.json").exists():
        print(f"writing a randomly initialised GPT-2 (124M) checkpoint to {folder} ...")
        save_random_hf_checkpoint(folder)
    return str(folder)
