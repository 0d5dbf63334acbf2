"""Step 05 - the decoder layer ("encoder layer" in the original lecture) and the full transformer.

One ``TransformerBlock`` is two pre-norm residual sub-layers:

    h   = x + Attention(RMSNorm_attn(x))        # tokens exchange information (causal)
    out = h + FeedForward(RMSNorm_ffn(h))       # each token is transformed on its own

and ``Transformer`` stacks ``n_layers`` of them between the embedding and a final RMSNorm + output matrix:

    tokens (B, T) -> tok_embeddings -> (B, T, D) -> [block] x n_layers -> norm -> output -> logits (B, T, V)

Pre-norm keeps an un-normalised residual path from the embedding to the output, which is what lets deep stacks
train without warm-up tricks. This lesson traces the shapes through every sub-module with forward hooks,
rebuilds one block from its parts, and checks causality (changing a later token never changes earlier logits).

Run:  python pytorch_llama2_from_scratch/05_decoder_layer_and_transformer.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer


@torch.no_grad()
def main(seed: int = 0, batch: int = 2, seq_len: int = 10) -> dict:
    seed_everything(seed)
    args = ModelArgs.preset("tiny")
    model = Transformer(args).eval()
    tokens = torch.randint(0, args.vocab_size, (batch, seq_len))

    # 1. shapes through every sub-module of the first block and the ends of the model
    shapes: dict[str, tuple] = {}
    hooks = []
    watch = ["tok_embeddings", "layers.0.attention_norm", "layers.0.attention.wq", "layers.0.attention.wk"]
    watch += ["layers.0.attention", "layers.0.ffn_norm", "layers.0.feed_forward.w1", "layers.0.feed_forward"]
    watch += ["layers.0", f"layers.{args.n_layers - 1}", "norm", "output"]
    modules = dict(model.named_modules())
    for name in watch:
        record = lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape))
        hooks.append(modules[name].register_forward_hook(record))
    logits = model(tokens, use_cache=False)
    for h in hooks:
        h.remove()
    print(
        f"tokens {tuple(tokens.shape)} -> logits {tuple(logits.shape)}   (B={batch}, T={seq_len}, D={args.dim}, "
        f"H={args.n_heads}, KV={args.n_kv_heads}, hd={args.head_dim}, F={args.ffn_hidden}, V={args.vocab_size})"
    )
    for name in watch:
        print(f"  {name:<28} -> {shapes[name]}")

    # 2. one block, rebuilt from its parts
    block = model.layers[0]
    x = model.tok_embeddings(tokens)
    freqs = model.freqs_cis(x.device)[:seq_len]
    h = x + block.attention(block.attention_norm(x), freqs, _causal(seq_len), use_cache=False)
    manual = h + block.feed_forward(block.ffn_norm(h))
    block_err = (manual - block(x, freqs, _causal(seq_len), use_cache=False)).abs().max().item()
    print(f"block(x) vs x + attn(norm(x)), then + ffn(norm(.)): max diff {block_err:.1e}")

    # 3. causality: change the last token, earlier logits must not move
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % args.vocab_size
    other = model(changed, use_cache=False)
    past_change = (other[:, :-1] - logits[:, :-1]).abs().max().item()
    last_change = (other[:, -1] - logits[:, -1]).abs().max().item()
    print(f"edit the last token: earlier logits change by {past_change:.1e}, the last by {last_change:.2f}")

    per_block = sum(p.numel() for p in block.parameters())
    print(f"parameters: {per_block:,} per block x {args.n_layers} + embeddings/output/norm = {model.num_params():,}")
    return {
        "shapes": shapes,
        "logits_shape": tuple(logits.shape),
        "block_err": block_err,
        "past_change": past_change,
        "last_change": last_change,
        "model": model,
        "tokens": tokens,
        "logits": logits,
    }


def _causal(t: int) -> torch.Tensor:
    """Boolean (1, 1, T, T) mask, True where query i may attend to key j (j <= i)."""
    return torch.ones(t, t, dtype=torch.bool).tril()[None, None]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch", type=positive_int, default=2)
    p.add_argument("--seq-len", dest="seq_len", type=positive_int, default=10)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
