"""Step 03 - rotary positional embeddings (RoPE, Su et al. 2021), in both conventions, and the permutation.

Split the head dimension into hd/2 pairs and rotate pair i of a query/key at position m by the angle m*theta_i,
theta_i = rope_theta^(-2i/hd). Because rotations compose, the score of a query at m and a key at n depends only
on m - n:   <R(m) q, R(n) k> = <q, R(n - m) k>. Norms are unchanged.

Two codebases pair the features differently:

* Meta (``precompute_freqs_cis`` / ``apply_rotary_emb``): consecutive features (x0, x1), (x2, x3), ... are
  complex numbers x_{2i} + i x_{2i+1}, multiplied by e^{i m theta_i}.
* Hugging Face (``rotate_half``): feature i is paired with i + hd/2:  x * cos + rotate_half(x) * sin.

Same rotation, different feature order. HF's conversion script therefore permuted the rows of every wq and wk
(``permute_for_hf``); loading HF weights into Meta-style code undoes it (``unpermute_from_hf``). This lesson
shows the mismatch without the permutation, the agreement with it, the relative-position property, and plots
how the score of a fixed q, k pair varies with distance (``out/llama2/rope_distance.png``).

Run:  python pytorch_llama2_from_scratch/03_rotary_embeddings.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import out_dir, positive_float, positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.model import (
    apply_rotary_emb,
    apply_rotary_emb_half,
    permute_for_hf,
    precompute_freqs_cis,
    rope_cos_sin,
    unpermute_from_hf,
)


def rotate_meta(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x: (T, H, hd) rotated with the interleaved convention at ``positions`` (T,)."""
    table = precompute_freqs_cis(x.shape[-1], int(positions.max()) + 1, theta)
    out, _ = apply_rotary_emb(x[None], x[None], table[positions])  # add and drop a batch dim
    return out[0]


def rotate_hf(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x: (T, H, hd) rotated with the half-split convention."""
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta)  # (T, hd)
    return apply_rotary_emb_half(x, cos[:, None, :], sin[:, None, :])


def main(seed: int = 0, head_dim: int = 64, n_heads: int = 4, theta: float = 10000.0, plot: bool = True) -> dict:
    seed_everything(seed)
    dim, T = head_dim * n_heads, 16
    x = torch.randn(T, dim)
    w_meta = torch.randn(dim, dim) / dim**0.5  # a Meta-layout wq
    positions = torch.arange(T)

    q_meta = rotate_meta((x @ w_meta.T).view(T, n_heads, head_dim), positions, theta)  # (T, D) -> (T, H, hd)
    # Same weights, HF rotation: the pairs are different features, so the result is different.
    q_hf_same_w = rotate_hf((x @ w_meta.T).view(T, n_heads, head_dim), positions, theta)
    # HF rotation on permuted weights: equal to Meta's result up to the same feature permutation.
    w_hf = permute_for_hf(w_meta, n_heads)
    q_hf = rotate_hf((x @ w_hf.T).view(T, n_heads, head_dim), positions, theta)
    q_hf_in_meta_order = unpermute_from_hf(q_hf.reshape(T, dim).T, n_heads).T.reshape(T, n_heads, head_dim)

    err_without = (q_hf_same_w - q_meta).abs().max().item()
    err_with = (q_hf_in_meta_order - q_meta).abs().max().item()
    roundtrip = (unpermute_from_hf(w_hf, n_heads) - w_meta).abs().max().item()
    print(f"same weights, Meta vs HF rotation:        max diff {err_without:.3f}  (different pairing)")
    print(f"permuted weights, Meta vs HF rotation:    max diff {err_with:.1e}")
    print(f"unpermute(permute(w)) - w:                max diff {roundtrip:.1e}")

    # Rotation keeps norms; scores depend on m - n only.
    norm_err = (q_meta.norm(dim=-1) - (x @ w_meta.T).view(T, n_heads, head_dim).norm(dim=-1)).abs().max().item()
    q, k = torch.randn(1, 1, head_dim), torch.randn(1, 1, head_dim)

    def score(m: int, n: int) -> float:
        return (rotate_meta(q, torch.tensor([m]), theta) * rotate_meta(k, torch.tensor([n]), theta)).sum().item()

    rel_err = max(abs(score(m, n) - score(m + 100, n + 100)) for m, n in [(5, 2), (9, 9), (30, 1)])
    print(f"norm change after rotation: {norm_err:.1e};  |s(m,n) - s(m+100,n+100)| <= {rel_err:.1e}")

    # How the score of the same q, k (q = k: a token attending to a copy of itself) varies with distance.
    distances = list(range(0, 512, 4))
    scores = [score(d, 0) for d in distances]
    q_as_k = torch.randn(1, 1, head_dim)
    self_scores = [
        (rotate_meta(q_as_k, torch.tensor([d]), theta) * rotate_meta(q_as_k, torch.tensor([0]), theta)).sum().item()
        for d in distances
    ]
    path = None
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(distances, self_scores, label="q = k (same content)")
        ax.plot(distances, scores, label="random q, k", alpha=0.7)
        ax.set_xlabel("distance m - n")
        ax.set_ylabel("<R(m) q, R(n) k>")
        ax.set_title(f"RoPE score vs distance (hd={head_dim}, theta={theta:g})")
        ax.legend()
        fig.tight_layout()
        path = out_dir("llama2") / "rope_distance.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"plot: {path}")
    return {
        "err_without_permutation": err_without,
        "err_with_permutation": err_with,
        "roundtrip_err": roundtrip,
        "norm_err": norm_err,
        "relative_err": rel_err,
        "plot": path,
        "x": x,
        "w_meta": w_meta,
        "q_meta": q_meta,
        "q_hf_in_meta_order": q_hf_in_meta_order,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--head-dim", dest="head_dim", type=positive_int, default=64)
    p.add_argument("--n-heads", dest="n_heads", type=positive_int, default=4)
    p.add_argument("--theta", type=positive_float, default=10000.0)
    p.add_argument("--no-plot", dest="plot", action="store_false")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
