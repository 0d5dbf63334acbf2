"""Step 15 - the Qwen3 block: RMSNorm on every query and key head, and a head size of its own.

Qwen3 (Yang et al. 2025, "Qwen3 technical report") keeps the Llama block -- pre-norm RMSNorm, RoPE, GQA, SwiGLU --
and changes two things in attention (``ModelArgs(qk_norm=True, explicit_head_dim=...)``):

* **q/k norm**: after the projections and *before* RoPE, each head's query and key vector is RMS-normalised with
  a learned gain of hd entries (shared by the heads)::

      q_h = g_q * q_h / rms(q_h),   k_h = g_k * k_h / rms(k_h),   rms(v) = sqrt(mean(v^2) + eps)

  so a score q_h . k_h / sqrt(hd) is bounded by sqrt(hd) * max|g_q| * max|g_k| whatever the size of the
  activations: large pre-activations can no longer blow the softmax into a one-hot (the training instability
  Qwen2 and others met; Dehghani et al. 2023 used the same normalisation for ViT-22B).
* **head_dim independent of dim / n_heads**: Qwen3-0.6B has dim 1024 and 16 heads but head_dim 128, so wq maps
  1024 -> 16 * 128 = 2048 features and wo maps 2048 back to 1024.

Qwen2/2.5 instead put biases on wq, wk, wv (``qkv_bias=True``). The lesson builds a tiny Qwen3-style block,
shows the shapes, and measures the largest attention score as the input grows, with and without q/k norm.

Run:  python pytorch_llama2_from_scratch/15_qwen3_block.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.families import args_for
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer


@torch.no_grad()
def max_scores(model: Transformer, x: torch.Tensor) -> float:
    """Largest |q . k| / sqrt(hd) of layer 0's attention for the input x (B, T, D) (RoPE keeps norms)."""
    attn = model.layers[0].attention
    h = model.layers[0].attention_norm(x)
    b, t, _ = h.shape
    q = attn.wq(h).view(b, t, attn.n_heads, attn.head_dim)  # (B, T, D) -> (B, T, H, hd)
    k = attn.wk(h).view(b, t, attn.n_kv_heads, attn.head_dim)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    k = k.repeat_interleave(attn.n_rep, dim=2)  # (B, T, KV, hd) -> (B, T, H, hd)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / attn.head_dim**0.5
    return scores.abs().max().item()


@torch.no_grad()
def main(seed: int = 0, dim: int = 64, n_heads: int = 4, head_dim: int = 32) -> dict:
    seed_everything(seed)
    common = dict(dim=dim, n_layers=1, n_heads=n_heads, n_kv_heads=2, vocab_size=128, max_seq_len=32)
    qwen3 = Transformer(ModelArgs(**common, qk_norm=True, explicit_head_dim=head_dim)).eval()
    plain = Transformer(ModelArgs(**common, explicit_head_dim=head_dim)).eval()
    shared = {k: v for k, v in qwen3.state_dict().items() if not k.endswith(("q_norm.weight", "k_norm.weight"))}
    plain.load_state_dict(shared)  # the same weights, without the two norms
    a = qwen3.layers[0].attention
    print(f"tiny Qwen3-style block: dim {dim}, {n_heads} heads of head_dim {head_dim} (not {dim // n_heads}):")
    print(f"  wq {tuple(a.wq.weight.shape[::-1])}, wk {tuple(a.wk.weight.shape[::-1])}, "
          f"wo {tuple(a.wo.weight.shape[::-1])}, q_norm gain {tuple(a.q_norm.weight.shape)}")  # fmt: skip
    big = args_for("Qwen3")
    print(f"Qwen3-0.6B: dim {big.dim}, {big.n_heads} heads x head_dim {big.head_dim} = {big.n_heads * big.head_dim} "
          f"query features, {big.num_params() / 1e6:.0f} M parameters")  # fmt: skip

    x = torch.randn(1, 16, dim)
    print("\nlargest |q.k|/sqrt(hd) as the block's input grows (its own RMSNorm undone by a gain g):")
    print(f"{'g':>6} {'with q/k norm':>14} {'without':>10}")
    rows = []
    for g in (1.0, 4.0, 16.0):
        for m in (qwen3, plain):
            m.layers[0].attention_norm.weight.fill_(g)  # scale what enters the projections
        row = (g, max_scores(qwen3, x), max_scores(plain, x))
        rows.append(row)
        print(f"{row[0]:6.0f} {row[1]:14.2f} {row[2]:10.2f}")
    bound = head_dim**0.5
    print(f"with q/k norm (unit gains) the bound sqrt(hd) = {bound:.2f} holds at every scale; without, scores grow "
          f"as g^2")  # fmt: skip
    return {"rows": rows, "bound": bound, "qwen3_params": big.num_params(), "model": qwen3}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--dim", type=positive_int, default=64)
    p.add_argument("--n-heads", dest="n_heads", type=positive_int, default=4)
    p.add_argument("--head-dim", dest="head_dim", type=positive_int, default=32)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
