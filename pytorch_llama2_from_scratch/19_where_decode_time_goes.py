"""Step 19: where decode time goes - bytes per token, the bandwidth limit, and a profile of one decode step.

At batch 1 each new token multiplies one vector by every weight matrix once. A matrix-vector product (GEMV)
does 2 flops per weight it reads, far below what a CPU or GPU can compute per byte it can load, so the step is
**memory-bound**: its best possible time is the bytes it must read divided by the memory bandwidth::

    bytes/token = sum over linears of out*in*bytes  +  one embedding row  +  K/V cache (2 * L * S * KV * hd * bytes)
    limit tok/s = GEMV bandwidth / bytes/token

The bandwidth is *measured*, in the same run, by timing one row through every weight matrix of the model (its own
shapes, dtype and threads) -- the practical limit of this machine, not a datasheet number. On CPU with fp32
weights two GEMVs are timed, PyTorch's ``F.linear`` and the chapter's panel kernel (``cpu_kernels.py``, used
from lesson 23 on), and the faster one sets the limit (``fast_decode.model_gemv_probe``).

This lesson prints (1) the bytes per token of a ~125M-parameter random LLaMA by part, (2) the GEMV bandwidth,
the limit and the measured decode speed of the chapter's KV-cache ``generate``, interleaved, (3) a
``torch.profiler`` view of one decode step: time in the matmuls vs everything else (norms, RoPE, attention,
Python and dispatch), and (4) the % of the limit at smaller sizes, where the per-step overhead of ~200 small
operations no longer hides behind the bytes.

Run::

    python pytorch_llama2_from_scratch/19_where_decode_time_goes.py                  # ~1-2 min on one CPU thread
    python pytorch_llama2_from_scratch/19_where_decode_time_goes.py --layers 4 --vocab 8000   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_llama2_from_scratch.fast_decode import (
    bytes_per_token,
    decode_parser,
    describe,
    lesson_model,
    parse_decode_args,
    random_prompt,
    spread,
    warm_and_measure,
    weight_bytes,
)
from pytorch_llama2_from_scratch.generate import generate
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::bmm", "aten::mv")


def bytes_by_part(model: Transformer, context: int) -> dict[str, int]:
    """Bytes one decode step reads, split into attention / feed-forward / output head / embedding row / KV."""
    el = model.tok_embeddings.weight.element_size()
    args = model.args
    parts = {"attention (wq wk wv wo)": 0, "feed-forward (w1 w2 w3)": 0, "norms": 0}
    for layer in model.layers:
        parts["attention (wq wk wv wo)"] += weight_bytes(layer.attention)
        parts["feed-forward (w1 w2 w3)"] += weight_bytes(layer.feed_forward)
        parts["norms"] += weight_bytes(layer.attention_norm) + weight_bytes(layer.ffn_norm)
    parts["norms"] += weight_bytes(model.norm)
    parts["output head"] = weight_bytes(model.output)
    parts["embedding (one row)"] = args.dim * el
    parts[f"KV cache ({context} slots)"] = 2 * args.n_layers * context * args.n_kv_heads * args.head_dim * el
    return parts


def profile_step(model: Transformer, prompt: list[int], device) -> dict:
    """Profile one decode step (T=1 at start_pos=len(prompt)) after a prefill: matmul vs other self time."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(torch.tensor([prompt], device=device))
        tok = torch.tensor([[prompt[-1]]], device=device)
        model(tok, start_pos=len(prompt))  # warm-up of the exact step
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            model(tok, start_pos=len(prompt))
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(((e.key, getattr(e, attr), e.count) for e in events), key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    matmul = sum(r[1] for r in rows if r[0] in MATMUL_OPS)
    n_ops = sum(r[2] for r in rows if r[0].startswith("aten::"))
    return {"total_us": total, "matmul_us": matmul, "matmul_share": matmul / total, "ops": n_ops, "top": rows[:8]}


def percent_of_limit(model: Transformer, prompt_len: int, new_tokens: int, repeats: int, device, clock) -> dict:
    prompt = random_prompt(model.args.vocab_size, prompt_len)
    bpt = bytes_per_token(model, prompt_len + new_tokens // 2)
    methods = {"KV-cache generate": (lambda: generate(model, [prompt], new_tokens)[0], bpt)}
    return warm_and_measure(methods, new_tokens, repeats, device, model, clock)


def main(
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    kv_heads: int = 4,
    intermediate: int = 2048,
    vocab: int = 32000,
    prompt_len: int = 16,
    new_tokens: int = 64,
    repeats: int = 5,
    threads: int | None = 1,
    clock: str = "wall",
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    model, _, dev = lesson_model(hidden, layers, heads, kv_heads, intermediate, vocab, 256, threads, device, seed)
    context = prompt_len + new_tokens // 2
    parts = bytes_by_part(model, context)
    total = sum(parts.values())
    assert total == bytes_per_token(model, context)
    print(f"model: {describe(model, dev)}")
    print("\n1) bytes read per decode step (batch 1)")
    for name, b in parts.items():
        print(f"   {name:28s} {b / 1e6:9.2f} MB  {100 * b / total:5.1f} %")
    print(f"   {'total':28s} {total / 1e6:9.2f} MB")

    print(f"\n2) GEMV bandwidth vs decode speed, {repeats} interleaved rounds ({clock} clock)")
    big = percent_of_limit(model, prompt_len, new_tokens, repeats, dev, clock)
    bw = big["bandwidth_GBs"]
    row = big["methods"]["KV-cache generate"]
    limit = statistics.median(bw) * 1e9 / total
    print(f"   GEMV bandwidth {spread(bw, '.2f')} GB/s  ->  limit {limit:.1f} tok/s")
    print(f"   measured: {spread(row['tok_s'])} tok/s = {spread(row['pct_of_limit'])} % of the limit")

    print("\n3) profile of one decode step (self time per op)")
    prof = profile_step(model, random_prompt(vocab, prompt_len), dev)
    for key, us, count in prof["top"]:
        print(f"   {key:40s} {us / 1e3:8.2f} ms  x{count}")
    print(
        f"   matmuls {prof['matmul_us'] / 1e3:.2f} ms of {prof['total_us'] / 1e3:.2f} ms "
        f"({100 * prof['matmul_share']:.0f} %), {prof['ops']} aten ops in one step"
    )

    print("\n4) the same decode at smaller sizes: fixed per-op overhead vs bytes")
    sizes = {"tiny (dim 64, 2 layers)": ModelArgs.preset("tiny", max_seq_len=256, max_batch_size=1)}
    sizes["small (dim 256, 4 layers)"] = ModelArgs.preset(
        "tiny", dim=256, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=4096, max_seq_len=256, max_batch_size=1
    )
    small = {}
    for name, args in sizes.items():
        m = Transformer(args).eval().to(dev)
        res = percent_of_limit(m, prompt_len, new_tokens, repeats, dev, clock)["methods"]["KV-cache generate"]
        small[name] = res
        print(
            f"   {name:28s} {m.num_params() / 1e6:7.2f} M params: {spread(res['tok_s'], '.0f')} tok/s, "
            f"{spread(res['pct_of_limit'])} % of its limit"
        )
    print(f"   {'this model':28s} {model.num_params() / 1e6:7.2f} M params: {spread(row['pct_of_limit'])} %")
    return {"parts": parts, "bytes_per_token": total, "large": big, "profile": prof, "small": small}


def parse_args(argv=None) -> argparse.Namespace:
    p = decode_parser(__doc__, new_tokens=64, repeats=5)
    return parse_decode_args(p, argv)


if __name__ == "__main__":
    from pytorch_basis.common import run_cli
    from pytorch_llama2_from_scratch.generate import CLI_ERRORS

    run_cli(lambda: main(**vars(parse_args())), CLI_ERRORS, join_lines=True)
