"""Step 02 - token embeddings: a lookup table, and no positional table (positions enter later, through RoPE).

``tok_embeddings`` is a (V, D) matrix; row i is the vector of token i. A lookup equals a one-hot matrix
product, ``E[tokens] == one_hot(tokens) @ E``, just without the V-wide multiply. GPT-2 then *adds* a learned
position vector wpe[t]; LLaMA does not: the residual stream starts as pure token identity and positions are
injected by rotating q and k inside each attention layer (lesson 03), so nothing caps the context at the size
of a learned table. LLaMA also keeps a separate output matrix instead of reusing E for the logits.

Run:  python pytorch_llama2_from_scratch/02_embeddings.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.nn.functional as F

from pytorch_basis.common import positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer


def main(seed: int = 0, seq_len: int = 8) -> dict:
    seed_everything(seed)
    args = ModelArgs.preset("tiny")
    model = Transformer(args)
    E = model.tok_embeddings.weight  # (V, D)
    tokens = torch.randint(0, args.vocab_size, (2, seq_len))

    looked_up = model.tok_embeddings(tokens)  # (B, T) -> (B, T, D)
    one_hot = F.one_hot(tokens, args.vocab_size).float()  # (B, T) -> (B, T, V)
    as_matmul = one_hot @ E  # (B, T, V) @ (V, D) -> (B, T, D)
    err = (looked_up - as_matmul).abs().max().item()
    print(f"embedding lookup {tuple(tokens.shape)} -> {tuple(looked_up.shape)}; max |E[x] - onehot(x) @ E| = {err:.1e}")

    # The same token gets the same vector at every position: no position information yet.
    same = torch.full((1, seq_len), 5)
    h = model.tok_embeddings(same)
    spread = (h - h[:, :1]).abs().max().item()
    print(f"token 5 repeated {seq_len} times -> identical rows (max difference {spread})")

    tied = model.output.weight.data_ptr() == E.data_ptr()
    big = ModelArgs.preset("llama2-7b")
    table = big.vocab_size * big.dim
    print(f"output matrix tied to the embedding: {tied}")
    print(
        f"Llama-2 7B: embedding {big.vocab_size} x {big.dim} = {table / 1e6:.1f} M parameters "
        f"({table * 2 / 2**20:.0f} MiB in fp16), and the same again for the output matrix"
    )
    return {
        "lookup_vs_onehot_err": err,
        "position_spread": spread,
        "tied": tied,
        "embed_params_7b": table,
        "tokens": tokens,
        "looked_up": looked_up.detach(),
        "table": E.detach(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--seq-len", dest="seq_len", type=positive_int, default=8)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
