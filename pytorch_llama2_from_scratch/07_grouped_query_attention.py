"""Step 07 - grouped-query attention (Ainslie et al., 2023): MHA, GQA and MQA are one setting, n_kv_heads.

Queries keep n_heads heads; keys and values get only n_kv_heads heads, each shared by n_rep = n_heads/n_kv_heads
consecutive query heads (``repeat_kv`` expands them just before the attention product):

    n_kv_heads = n_heads      multi-head attention (Llama-2 7B, 13B)
    1 < n_kv_heads < n_heads  grouped-query attention (Llama-2 70B: 64 query heads, 8 KV heads)
    n_kv_heads = 1            multi-query attention (Shazeer, 2019)

Quality stays close to MHA, but wk, wv and above all the KV cache shrink by n_rep. The cache size is

    bytes = 2 (K, V) * n_layers * batch * context * n_kv_heads * head_dim * bytes_per_element

(``model.kv_cache_bytes``). This lesson checks ``repeat_kv`` attention against PyTorch's own
``scaled_dot_product_attention(enable_gqa=True)``, checks the formula against the buffers a tiny model really
allocates, and prints the table for the Llama-2 sizes.

Run:  python pytorch_llama2_from_scratch/07_grouped_query_attention.py [--context 4096 --batch 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.nn.functional as F

from pytorch_basis.common import positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer, kv_cache_bytes, repeat_kv

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def measured_cache_bytes(model: Transformer) -> int:
    """Bytes of the storages behind every cache buffer (what the allocator really handed out)."""
    return sum(b.untyped_storage().nbytes() for n, b in model.named_buffers() if n.endswith(("cache_k", "cache_v")))


@torch.no_grad()
def main(seed: int = 0, batch: int = 1, context: int = 4096, dtype: str = "float16") -> dict:
    seed_everything(seed)
    torch_dtype = DTYPES[dtype]

    # 1. repeat_kv + ordinary attention == PyTorch's built-in grouped attention
    B, T, H, KV, hd = 2, 12, 8, 2, 16
    q, k, v = torch.randn(B, T, H, hd), torch.randn(B, T, KV, hd), torch.randn(B, T, KV, hd)
    ours = F.scaled_dot_product_attention(
        q.transpose(1, 2), repeat_kv(k, H // KV).transpose(1, 2), repeat_kv(v, H // KV).transpose(1, 2), is_causal=True
    )  # (B, H, T, hd)
    builtin = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    )
    gqa_err = (ours - builtin).abs().max().item()
    print(f"repeat_kv attention vs F.scaled_dot_product_attention(enable_gqa=True): max diff {gqa_err:.1e}")

    # 2. the same tiny model as MHA / GQA / MQA: weights and cache, formula vs real allocation
    print(f"\ntiny model (dim 64, 8 heads of 8), cache for batch 4 x 32 tokens in {dtype}:")
    print(f"{'variant':<6} {'n_kv':>4} {'wk+wv params':>12} {'formula':>10} {'allocated':>10}")
    tiny_rows = []
    for name, n_kv in (("MHA", 8), ("GQA", 2), ("MQA", 1)):
        args = ModelArgs(
            dim=64, n_layers=2, n_heads=8, n_kv_heads=n_kv, vocab_size=128, max_batch_size=4, max_seq_len=32
        )
        model = Transformer(args).to(torch_dtype)
        kv_params = sum(m.attention.wk.weight.numel() + m.attention.wv.weight.numel() for m in model.layers)
        formula, allocated = kv_cache_bytes(args, 4, 32, torch_dtype), measured_cache_bytes(model)
        tiny_rows.append({"variant": name, "n_kv_heads": n_kv, "formula": formula, "allocated": allocated})
        print(f"{name:<6} {n_kv:>4} {kv_params:>12,} {formula:>10,} {allocated:>10,}")

    # 3. Llama-2 sizes
    print(f"\nKV cache of Llama-2 for batch {batch} x {context} tokens in {dtype}:")
    print(f"{'model':<22} {'n_kv':>4} {'per token':>10} {'total':>11}")
    table = []
    variants = [(n, ModelArgs.preset(n)) for n in ("llama2-7b", "llama2-13b", "llama2-70b")]
    variants.append(("llama2-70b if MHA", ModelArgs.preset("llama2-70b", n_kv_heads=64)))
    for name, args in variants:
        total = kv_cache_bytes(args, batch, context, torch_dtype)
        per_token = kv_cache_bytes(args, 1, 1, torch_dtype)
        table.append({"model": name, "n_kv_heads": args.n_kv_heads, "per_token": per_token, "total": total})
        print(f"{name:<22} {args.n_kv_heads:>4} {per_token / 1024:>7.0f} KiB {_gib(total):>11}")
    return {"gqa_err": gqa_err, "tiny": tiny_rows, "llama2": table, "qkv": (q, k, v), "attention": ours}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--context", type=positive_int, default=4096)
    p.add_argument("--dtype", default="float16", choices=list(DTYPES))
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
