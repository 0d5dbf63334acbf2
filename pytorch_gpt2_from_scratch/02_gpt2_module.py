"""Lesson 2 — Section 1: the GPT-2 ``nn.Module`` from scratch (``pytorch_gpt2_from_scratch/model.py``).

The module mirrors the checkpoint of lesson 1 name for name::

    GPTConfig           block_size, vocab_size, n_layer, n_head, n_embd (+ presets gpt2 ... gpt2-xl, tiny, cpu-small)
    CausalSelfAttention c_attn: C -> 3C (q, k, v), softmax(q k^T / sqrt(hs) + causal mask) v, c_proj: C -> C
    MLP                 c_fc: C -> 4C, GELU (tanh approximation, as GPT-2), c_proj: 4C -> C
    Block               x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))      # pre-LN: a clean residual stream
    GPT                 wte + wpe -> n_layer blocks -> ln_f -> lm_head (tied to wte)

This lesson builds the model from a preset, prints its structure and parameter count (124,439,808 for
``gpt2``, the same as the checkpoint) and runs a forward pass on random tokens to show the shapes.

Run::

    python pytorch_gpt2_from_scratch/02_gpt2_module.py
    python pytorch_gpt2_from_scratch/02_gpt2_module.py --preset gpt2-medium --print-modules
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import positive_int, run_cli, seed_everything, seed_int
from pytorch_gpt2_from_scratch.model import GPT, PRESET_NAMES, GPTConfig


def main(preset: str = "gpt2", B: int = 2, T: int = 8, print_modules: bool = False, seed: int = 1337) -> dict:
    seed_everything(seed)
    config = GPTConfig.preset(preset)
    model = GPT(config)
    print(config)
    if print_modules:
        print(model)
    else:
        block = model.transformer.h[0]
        print(f"one of the {config.n_layer} blocks:\n{block}")
    n_params = model.num_params()
    print(
        f"parameters: {n_params:,} ({n_params / 1e6:.1f}M; without position embeddings: "
        f"{model.num_params(non_embedding=True):,})"
    )

    idx = torch.randint(0, config.vocab_size, (B, T))  # (B, T) token ids
    with torch.no_grad():
        logits, loss = model(idx)
    print(f"idx {tuple(idx.shape)} -> logits {tuple(logits.shape)} (B, T, vocab_size); loss without targets: {loss}")
    return dict(config=config, n_params=n_params, logits_shape=tuple(logits.shape))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2", choices=PRESET_NAMES)
    p.add_argument("--B", type=positive_int, default=2, help="batch size of the demo forward pass")
    p.add_argument("--T", type=positive_int, default=8, help="sequence length of the demo forward pass")
    p.add_argument("--print-modules", action="store_true", help="print the whole module tree")
    p.add_argument("--seed", type=seed_int, default=1337)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
