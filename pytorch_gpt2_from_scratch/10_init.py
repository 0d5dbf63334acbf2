"""Lesson 10 — initialization: std 0.02, residual projections scaled by ``(2 * n_layer) ** -0.5``.

GPT-2's scheme (``GPTConfig(init="gpt2")``): every Linear and Embedding weight ~ N(0, 0.02^2), biases 0,
LayerNorm gain 1 and bias 0; the two projections that *write into the residual stream* in each block
(``attn.c_proj`` and ``mlp.c_proj``) get ``std = 0.02 / sqrt(2 * n_layer)``. The residual stream is a sum::

    x_L = x_0 + sum_{l=1..L} (attn_l + mlp_l)          # 2L terms

and a sum of ``n`` independent terms of std ``s`` has std ``s * sqrt(n)``; scaling each by ``n ** -0.5``
keeps the stream's std flat as the network gets deeper. The lesson shows this on random vectors, then compares
three inits of the same model: PyTorch's defaults (``init="default"``: Kaiming-uniform Linears, std
``1 / sqrt(3 * fan_in)``; the tied embedding takes the head's init), GPT-2's without the residual scaling, and
GPT-2's: the loss at init (ln(50257) ~= 10.82 is the "knows nothing" value) and the std of the residual
stream after each block — the blocks' additions to the stream grow more slowly with the scaling.

Run::

    python pytorch_gpt2_from_scratch/10_init.py
"""

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import positive_int, run_cli, seed_everything, seed_int
from pytorch_gpt2_from_scratch.model import GPT, PRESET_NAMES, GPTConfig


def residual_sum_std(n: int, scaled: bool, dim: int = 768) -> float:
    """Std of ``sum_{i<n} z_i`` (z_i ~ N(0, 1)), each term multiplied by ``n ** -0.5`` when ``scaled``."""
    x = torch.zeros(dim)
    for _ in range(n):
        x += (n**-0.5 if scaled else 1.0) * torch.randn(dim)
    return x.std().item()


@torch.no_grad()
def residual_stream_stds(model: GPT, idx: torch.Tensor) -> list[float]:
    """Std of the residual stream after the embeddings and after each block."""
    T = idx.size(1)
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
    stds = [x.std().item()]
    for block in model.transformer.h:
        x = block(x)
        stds.append(x.std().item())
    return stds


def main(preset: str = "cpu-small", B: int = 4, T: int = 64, seed: int = 1337) -> dict:
    g = seed_everything(seed)
    n = 100
    print(
        f"sum of {n} N(0,1) terms: std {residual_sum_std(n, False):.2f} (~sqrt({n}) = {math.sqrt(n):.0f}); "
        f"with each term scaled by {n}^-0.5: std {residual_sum_std(n, True):.2f}"
    )
    idx = torch.randint(0, 50257, (B, T), generator=g)
    targets = torch.randint(0, 50257, (B, T), generator=g)
    results = {}
    for variant in ("default", "gpt2-unscaled", "gpt2"):
        seed_everything(seed)
        model = GPT(GPTConfig.preset(preset, init="default" if variant == "default" else "gpt2"))
        if variant == "gpt2-unscaled":  # GPT-2 init but *without* the (2 n_layer)^-0.5 residual scaling
            for block in model.transformer.h:
                for proj in (block.attn.c_proj, block.mlp.c_proj):
                    torch.nn.init.normal_(proj.weight, mean=0.0, std=0.02)
        with torch.no_grad():
            _, loss = model(idx, targets)
        proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.transformer.h])
        fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
        stds = residual_stream_stds(model, idx)
        results[variant] = dict(loss=loss.item(), c_proj_std=proj.std().item(), c_fc_std=fc.std().item(), stream=stds)
        print(
            f"{variant:14s} loss at init {loss.item():7.3f} (ln V = {math.log(50257):.3f}) | "
            f"std c_fc {fc.std().item():.4f}, c_proj {proj.std().item():.4f}"
        )
        growth = stds[-1] - stds[0]
        print(
            f"  residual stream std after embeddings, block 1..{len(stds) - 1}: "
            + " ".join(f"{s:.3f}" for s in stds)
            + f"  (growth {growth:+.3f})"
        )
    L = GPTConfig.preset(preset).n_layer
    print(f"expected GPT-2 c_proj std: 0.02 / sqrt(2 * {L}) = {0.02 / math.sqrt(2 * L):.4f}")
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-small", choices=PRESET_NAMES)
    p.add_argument("--B", type=positive_int, default=4)
    p.add_argument("--T", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_int, default=1337)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
