"""Step 06 - self-attention with a KV cache: prefill once, then decode one token at a time.

Without a cache, generating token t+1 re-runs the whole model over all t tokens: O(t) work per layer for
the projections and O(t^2) for attention, at every step. But the keys and values of past tokens never change
(causal attention: token s only sees tokens <= s). So each ``Attention`` keeps two buffers

    cache_k, cache_v : (max_batch_size, max_seq_len, n_kv_heads, head_dim)

and a forward call with ``start_pos`` writes the new K/V into slots start_pos..start_pos+T-1 and attends over
slots 0..start_pos+T-1:

* prefill:         model(prompt, start_pos=0)                  one call, T = prompt length
* decode:          model(next_token, start_pos=t)              T = 1, one row of attention
* chunked prefill: model(chunk_i, start_pos=sum of previous)  long prompts in pieces of bounded memory

The buffers are registered (non-persistent), so ``model.to(device/dtype)`` moves them, ``state_dict`` leaves them
out, and ``model.reset_cache()`` zeroes them. This lesson checks the three modes against a cache-less full
forward and times greedy decoding with and without the cache.

Run:  python pytorch_llama2_from_scratch/06_kv_cache.py [--new-tokens 256 --device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import (
    add_device_argument,
    nonnegative_int,
    positive_int,
    resolve_device,
    run_cli,
    seed_everything,
    seed_int,
    synchronize,
)
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer


@torch.no_grad()
def greedy_tokens(model: Transformer, prompt: torch.Tensor, n_new: int, use_cache: bool) -> torch.Tensor:
    """Argmax decoding, either with the cache (prefill + one token per step) or by re-running everything."""
    seq = prompt
    if use_cache:
        model.reset_cache()
        logits = model(seq, start_pos=0)  # prefill
        for _ in range(n_new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            logits = model(nxt, start_pos=seq.shape[1])  # decode: only the new token goes through the model
            seq = torch.cat([seq, nxt], dim=1)
    else:
        for _ in range(n_new):
            nxt = model(seq, use_cache=False)[:, -1].argmax(-1, keepdim=True)  # full recompute every step
            seq = torch.cat([seq, nxt], dim=1)
    return seq


@torch.no_grad()
def main(
    seed: int = 0, prompt_len: int = 16, new_tokens: int = 64, device: str = "cpu", threads: int | None = 1
) -> dict:
    """``threads``: CPU threads for the run (default 1: these matrices are too small for threads to pay off;
    None keeps PyTorch's default). The previous setting is restored at the end."""
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    dev = resolve_device(device)
    args = ModelArgs(
        dim=128,
        n_layers=4,
        n_heads=8,
        n_kv_heads=4,
        vocab_size=512,
        multiple_of=64,
        max_seq_len=prompt_len + max(new_tokens, 24),
        max_batch_size=2,
    )
    model = Transformer(args).to(dev).eval()
    tokens = torch.randint(0, args.vocab_size, (2, prompt_len + 24), device=dev)
    full = model(tokens, use_cache=False)  # reference: no cache at all

    # prefill + decode one token at a time
    model.reset_cache()
    steps = [model(tokens[:, :prompt_len])]
    for pos in range(prompt_len, tokens.shape[1]):
        steps.append(model(tokens[:, pos : pos + 1], start_pos=pos))
    decoded = torch.cat(steps, dim=1)
    decode_err = (decoded - full).abs().max().item()
    # chunked prefill at non-zero start positions
    model.reset_cache()
    bounds = [0, 5, 17, 30, tokens.shape[1]]
    chunks = [model(tokens[:, a:b], start_pos=a) for a, b in zip(bounds[:-1], bounds[1:])]
    chunked = torch.cat(chunks, dim=1)
    chunk_err = (chunked - full).abs().max().item()
    n_dec = tokens.shape[1] - prompt_len
    print(f"prefill {prompt_len} + {n_dec} decode steps vs full forward: max diff {decode_err:.1e}")
    print(f"chunked prefill {bounds} vs full forward:   max diff {chunk_err:.1e}")

    # the cache is part of the module's buffers
    cache_mib = model.cache_nbytes() / 2**20
    in_state = any("cache" in k for k in model.state_dict())
    print(
        f"cache: {cache_mib:.2f} MiB in {2 * args.n_layers} buffers on {model.layers[0].attention.cache_k.device}, "
        f"in state_dict: {in_state}"
    )

    # timing: greedy decode of `new_tokens` tokens, batch 1
    prompt = tokens[:1, :prompt_len]
    times, outs = {}, {}
    for use_cache in (True, False):
        greedy_tokens(model, prompt, 2, use_cache)  # warm-up
        synchronize(dev)
        t0 = time.perf_counter()
        outs[use_cache] = greedy_tokens(model, prompt, new_tokens, use_cache)
        synchronize(dev)
        times[use_cache] = time.perf_counter() - t0
    same = bool(torch.equal(outs[True], outs[False]))
    speedup = times[False] / times[True]
    print(
        f"greedy, {new_tokens} new tokens on {dev}: with cache {new_tokens / times[True]:.0f} tok/s, "
        f"without {new_tokens / times[False]:.0f} tok/s -> {speedup:.1f}x; identical tokens: {same}"
    )
    torch.set_num_threads(previous_threads)
    return {
        "decode_err": decode_err,
        "chunk_err": chunk_err,
        "cache_in_state_dict": in_state,
        "cache_bytes": model.cache_nbytes(),
        "tokens_per_s_cache": new_tokens / times[True],
        "tokens_per_s_no_cache": new_tokens / times[False],
        "speedup": speedup,
        "same_tokens": same,
        "model": model,
        "tokens": tokens,
        "decoded_logits": decoded,
        "chunked_logits": chunked,
        "greedy_with_cache": outs[True],
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--prompt-len", dest="prompt_len", type=positive_int, default=16)
    p.add_argument("--new-tokens", dest="new_tokens", type=positive_int, default=64)
    p.add_argument(
        "--threads", type=nonnegative_int, default=1, help="CPU threads (default: %(default)s; 0 = PyTorch default)"
    )
    add_device_argument(p, default="cpu")
    args = p.parse_args(argv)
    args.threads = args.threads or None
    return args


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
