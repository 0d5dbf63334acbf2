"""Step 1: multi-head attention, the naive way — scores, causal mask, softmax, weighted values.

Attention lets every query position i mix the value vectors of all key positions j, weighted by how well the
query matches each key:

    S = Q Kᵀ · sm_scale              (B, H, N, N)   sm_scale = 1/sqrt(D) keeps the scores' variance ≈ 1
    S_ij = -inf  for j > i           (causal: a token may not look at later tokens)
    P = softmax(S) along each row    (B, H, N, N)   every row sums to 1
    O = P V                          (B, H, N, D)

This step builds it from a (B, T, C) activation split into H heads of size D = C / H, prints every
intermediate's shape, and checks the result against ``F.scaled_dot_product_attention`` — including
grouped-query attention, where H query heads share H_kv < H key/value heads. The whole N × N matrix P sits in
memory; the rest of the chapter is about not doing that.

Run:  python triton_flash_attention_scratch/01_naive_attention.py [--seq-len 8 --n-embd 32 --n-head 4]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch
import torch.nn.functional as F

from pytorch_basis.common import add_device_argument, positive_int, resolve_device, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import naive_attention


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, D) with D = C // H: each head sees its own slice of the channels."""
    B, T, C = x.shape
    if C % n_head != 0:
        raise ValueError(f"n_embd ({C}) must be divisible by n_head ({n_head})")
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)


def main(
    batch: int = 2,
    seq_len: int = 8,
    n_embd: int = 32,
    n_head: int = 4,
    n_kv_head: int = 2,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    dev = resolve_device(device)
    seed_everything(seed)
    x = torch.randn(batch, seq_len, n_embd, device=dev)
    w_q, w_k, w_v = (torch.randn(n_embd, n_embd, device=dev) / n_embd**0.5 for _ in range(3))
    q, k, v = (split_heads(x @ w, n_head) for w in (w_q, w_k, w_v))  # (B, H, T, D) each
    D = q.shape[-1]
    print(f"x {tuple(x.shape)} -> q, k, v {tuple(q.shape)}  (B, H, T, D), D = {n_embd} / {n_head} = {D}")

    # --- the four steps, spelled out
    s = q @ k.transpose(-2, -1) / D**0.5  # (B, H, T, D) @ (B, H, D, T) -> (B, H, T, T)
    mask = torch.ones(seq_len, seq_len, dtype=torch.bool, device=dev).triu(1)  # True above the diagonal: j > i
    s = s.masked_fill(mask, float("-inf"))
    p = torch.softmax(s, dim=-1)  # (B, H, T, T), rows sum to 1
    o = p @ v  # (B, H, T, T) @ (B, H, T, D) -> (B, H, T, D)
    rows_sum_to_one = torch.allclose(p.sum(-1), torch.ones_like(p[..., 0]))
    print(f"S {tuple(s.shape)}, P {tuple(p.shape)} (rows sum to 1: {rows_sum_to_one}), O {tuple(o.shape)}")
    print("P[0, 0] (causal: zeros above the diagonal):")
    print(p[0, 0, :5, :5].cpu().numpy().round(3))

    errors = {}
    for causal in (False, True):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        errors[f"mha_causal={causal}"] = (naive_attention(q, k, v, causal=causal) - ref).abs().max().item()
    errors["spelled_out"] = (o - F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max().item()

    # --- grouped-query attention: n_kv_head key/value heads, each shared by n_head / n_kv_head query heads
    if n_head % n_kv_head != 0:
        raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
    k_g, v_g = k[:, :n_kv_head], v[:, :n_kv_head]  # (B, H_kv, T, D)
    rep = n_head // n_kv_head
    ref = F.scaled_dot_product_attention(
        q, k_g.repeat_interleave(rep, 1), v_g.repeat_interleave(rep, 1), is_causal=True
    )
    errors["gqa"] = (naive_attention(q, k_g, v_g, causal=True) - ref).abs().max().item()
    for name, err in errors.items():
        print(f"max |naive - F.scaled_dot_product_attention| {name:18s} {err:.2e}")
    print(
        f"memory of P alone: B·H·N² floats = {batch * n_head * seq_len**2} "
        f"({batch * n_head * seq_len**2 * 4} bytes in fp32) — quadratic in the sequence length"
    )
    return {"errors": errors, "out": o, "q": q, "k": k, "v": v}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--seq-len", type=positive_int, default=8)
    parser.add_argument("--n-embd", type=positive_int, default=32)
    parser.add_argument("--n-head", type=positive_int, default=4)
    parser.add_argument("--n-kv-head", type=positive_int, default=2)
    parser.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(parser)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
