"""Step 08 - the SwiGLU feed-forward (Shazeer, 2020) and its hidden-size rule.

GPT-2's MLP is  W2 gelu(W1 x)  with a 4*D hidden layer. LLaMA uses a gated linear unit with the SiLU
(swish) activation silu(a) = a * sigmoid(a):

    FFN(x) = w2( silu(w1 x) * (w3 x) )         w1, w3: D -> F,  w2: F -> D

Three matrices instead of two, so F is taken as 2/3 of 4*D to keep the parameter count, then multiplied by
``ffn_dim_multiplier`` (70B: 1.3) and rounded **up** to ``multiple_of`` (256; 70B: 4096) for fast kernels:

    7B:  int(2 * 16384 / 3) = 10922 -> 11008       13B: 13653 -> 13824       70B: 21845 * 1.3 = 28398 -> 28672

This lesson checks ``FeedForward`` against the formula, prints the rule for every preset, compares parameter
counts with a 4*D GELU MLP and plots the activations (``out/llama2/swiglu.png``).

Run:  python pytorch_llama2_from_scratch/08_swiglu_feedforward.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.nn.functional as F

from pytorch_basis.common import out_dir, positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.model import FeedForward, ModelArgs, ffn_hidden_dim


@torch.no_grad()
def main(seed: int = 0, dim: int = 64, plot: bool = True) -> dict:
    seed_everything(seed)
    hidden = ffn_hidden_dim(dim, multiple_of=32)
    ffn = FeedForward(dim, hidden)
    x = torch.randn(3, 5, dim)
    a, b = x @ ffn.w1.weight.T, x @ ffn.w3.weight.T  # (B, T, D) -> (B, T, F)
    manual = (a * torch.sigmoid(a) * b) @ ffn.w2.weight.T  # (B, T, F) -> (B, T, D)
    err = (ffn(x) - manual).abs().max().item()
    print(f"FeedForward vs w2(silu(w1 x) * w3 x) with F={hidden}: max diff {err:.1e}")

    print(
        f"\n{'preset':<12} {'4D':>6} {'2/3*4D':>7} {'mult':>5} {'multiple_of':>11} {'F':>6} "
        f"{'SwiGLU params':>14} {'GELU 4D params':>15}"
    )
    rows = {}
    for name in ModelArgs.preset_names():
        args = ModelArgs.preset(name)
        two_thirds = int(2 * 4 * args.dim / 3)
        swiglu_params = 3 * args.dim * args.ffn_hidden
        gelu_params = 2 * args.dim * 4 * args.dim
        rows[name] = {"hidden": args.ffn_hidden, "swiglu_params": swiglu_params, "gelu_params": gelu_params}
        print(
            f"{name:<12} {4 * args.dim:>6} {two_thirds:>7} {args.ffn_dim_multiplier or 1:>5} {args.multiple_of:>11} "
            f"{args.ffn_hidden:>6} {swiglu_params:>14,} {gelu_params:>15,}"
        )

    path = None
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        z = torch.linspace(-5, 5, 201)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(z, F.relu(z), label="relu")
        ax.plot(z, F.gelu(z), label="gelu (GPT-2)")
        ax.plot(z, F.silu(z), label="silu = z * sigmoid(z) (LLaMA gate)")
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xlabel("pre-activation z")
        ax.set_ylabel("activation f(z)")
        ax.legend()
        ax.set_title("activations")
        fig.tight_layout()
        path = out_dir("llama2") / "swiglu.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"plot: {path}")
    return {"err": err, "hidden": hidden, "rows": rows, "plot": path, "ffn": ffn, "x": x, "out": ffn(x)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--dim", type=positive_int, default=64)
    p.add_argument("--no-plot", dest="plot", action="store_false")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
