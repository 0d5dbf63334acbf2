"""Step 16 - sliding-window attention (Mistral): each token attends to the last W tokens only.

Mistral 7B (Jiang et al. 2023) sets ``sliding_window`` W = 4096 in its config: the query at position s may attend
to key j only if

    s - W < j <= s          (causal, and at most W - 1 tokens back)

``ModelArgs(sliding_window=W)`` adds that condition to the model's one boolean mask, in the full forward and in
every decode step with the KV cache (cache slot distance = position distance, since padding is on the left only).
Information still travels further than W: layer l sees W - 1 tokens back into layer l - 1, which itself saw W - 1
further, so after n_layers layers a token can depend on up to n_layers * (W - 1) tokens back (the receptive field
of a stack of windows, like a CNN's). Attention cost per token is bounded by W instead of growing with the
context. (This model still keeps every slot in its cache; a rolling buffer of W slots would bound the memory too.)

The lesson prints the mask for a short sequence, checks that with W the logits at positions < W equal full
attention's and differ after, and measures the receptive field of a random model layer by layer.

Run:  python pytorch_llama2_from_scratch/16_sliding_window_attention.py [--window 4 --layers 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import int_at_least, positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer


def window_mask(t: int, window: int) -> torch.Tensor:
    """(T, T) bool, True where query s may attend to key j: s - W < j <= s (the definition, spelled out)."""
    s = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    return (j <= s) & (j > s - window)


@torch.no_grad()
def receptive_field(model: Transformer, t: int) -> int:
    """How many tokens back the last position's logits depend on: change token j, see if the last logit moves."""
    tokens = torch.arange(t)[None] % model.args.vocab_size
    base = model(tokens, use_cache=False)[0, -1]
    farthest = 0
    for j in range(t - 1):
        changed = tokens.clone()
        changed[0, j] = (changed[0, j] + 1) % model.args.vocab_size
        if not torch.equal(model(changed, use_cache=False)[0, -1], base):
            farthest = max(farthest, t - 1 - j)
    return farthest


@torch.no_grad()
def main(seed: int = 0, window: int = 4, layers: int = 3, seq_len: int = 16) -> dict:
    seed_everything(seed)
    mask = window_mask(8, window)
    print(f"mask for T = 8, W = {window} (row = query s, column = key j):")
    for row in mask.int().tolist():
        print("   " + " ".join("x" if v else "." for v in row))

    common = dict(dim=32, n_layers=layers, n_heads=2, vocab_size=64, max_seq_len=seq_len, max_batch_size=1)
    full = Transformer(ModelArgs(**common)).eval()
    sliding = Transformer(ModelArgs(**common, sliding_window=window)).eval()
    sliding.load_state_dict(full.state_dict())  # the same weights
    tokens = torch.randint(0, 64, (1, seq_len))
    a, b = full(tokens, use_cache=False)[0], sliding(tokens, use_cache=False)[0]
    same_before = torch.equal(a[:window], b[:window])
    diff_after = (a[window:] - b[window:]).abs().amax(-1)
    print(f"\npositions < W: logits with the window equal full attention: {same_before}")
    print(f"positions >= W: max |difference| {diff_after.min():.3f} .. {diff_after.max():.3f}")

    sliding.reset_cache()
    steps = [sliding(tokens[:, :1])[0, -1]] + [
        sliding(tokens[:, i : i + 1], start_pos=i)[0, -1] for i in range(1, seq_len)
    ]
    cache_err = (torch.stack(steps) - b).abs().max().item()
    print(f"decode one token at a time with the KV cache vs the full forward: max diff {cache_err:.1e}")

    fields = []
    for n in range(1, layers + 1):
        m = Transformer(ModelArgs(**{**common, "n_layers": n}, sliding_window=window)).eval()
        fields.append(receptive_field(m, seq_len))
        print(
            f"{n} layer(s): the last token depends on {fields[-1]} tokens back (n_layers * (W-1) = {n * (window - 1)})"
        )
    return {"mask": mask, "same_before": same_before, "diff_after": diff_after, "fields": fields,
            "sliding": sliding, "tokens": tokens, "logits": b, "decoded": torch.stack(steps)}  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--window", type=positive_int, default=4)
    p.add_argument("--layers", type=positive_int, default=3)
    p.add_argument("--seq-len", dest="seq_len", type=int_at_least(2), default=16)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
