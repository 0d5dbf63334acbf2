"""Lesson 9 — sharing one matrix between ``wte`` and ``lm_head`` (weight tying, Press & Wolf 2017).

The token embedding maps a token id to a row of ``wte`` (V, C); the head scores every token by a dot product
with a row of ``lm_head.weight`` (V, C). GPT-2 (like "Attention is all you need") uses *one* matrix for both:
tokens that are similar in meaning should be close both as inputs and as outputs. With ``tie_weights=True``
(the default of ``GPTConfig``) ``wte.weight`` *is* ``lm_head.weight``: one storage, and

    d loss / d W = (gradient through the embedding lookup) + (gradient through the head)

autograd sums the two uses on its own. For GPT-2 small this removes 50257 * 768 = 38,597,376 parameters, 31% of
the tied 124M model. This lesson shows the count, the shared storage and the summed gradient.

Run::

    python pytorch_gpt2_from_scratch/09_weight_tying.py
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import run_cli, seed_everything, seed_int
from pytorch_gpt2_from_scratch.model import GPT, PRESET_NAMES, GPTConfig


def shared_gradient_check(preset: str = "tiny", B: int = 2, T: int = 16) -> float:
    """Max |grad(tied W) - (grad wte + grad lm_head of an untied copy with the same values)|."""
    tied = GPT(GPTConfig.preset(preset))
    untied = GPT(GPTConfig.preset(preset, tie_weights=False))
    untied.load_state_dict(tied.state_dict())  # wte and lm_head of the copy both get the shared values
    idx = torch.randint(0, tied.config.vocab_size, (B, T))
    targets = torch.randint(0, tied.config.vocab_size, (B, T))
    for m in (tied, untied):
        m(idx, targets)[1].backward()
    summed = untied.transformer.wte.weight.grad + untied.lm_head.weight.grad
    return (tied.lm_head.weight.grad - summed).abs().max().item()


def main(preset: str = "gpt2", seed: int = 1337) -> dict:
    seed_everything(seed)
    untied = GPT(GPTConfig.preset(preset, tie_weights=False))
    tied = GPT(GPTConfig.preset(preset, tie_weights=True))
    n_untied, n_tied = untied.num_params(), tied.num_params()
    wte, head = tied.transformer.wte.weight, tied.lm_head.weight
    same_storage = wte.data_ptr() == head.data_ptr() and wte is head
    print(
        f"{preset}: untied {n_untied:,} parameters, tied {n_tied:,}: {n_untied - n_tied:,} fewer "
        f"({(n_untied - n_tied) / n_untied:.1%}; V * C = {tied.config.vocab_size} * {tied.config.n_embd})"
    )
    print(f"wte.weight is lm_head.weight: {wte is head}; same storage (data_ptr): {same_storage}")
    diff = shared_gradient_check()
    print(f"gradient of the tied matrix vs sum of the two untied gradients: max |diff| = {diff:.2e}")
    return dict(n_untied=n_untied, n_tied=n_tied, same_storage=same_storage, grad_diff=diff)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2", choices=PRESET_NAMES)
    p.add_argument("--seed", type=seed_int, default=1337)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
