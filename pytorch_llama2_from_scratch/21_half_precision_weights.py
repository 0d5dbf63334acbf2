"""Step 21: bf16 / fp16 weights - half the bytes per token, and what they cost in accuracy.

A decode step reads every weight once, so storing them in 16 bits instead of 32 halves the bytes per token and,
on a device whose matmul kernels keep up, halves the time. The two 16-bit formats trade range for precision:

    fp16:  5 exponent bits, 10 mantissa bits  -> relative spacing 2^-10 ~ 1e-3, largest value 65504
    bf16:  8 exponent bits,  7 mantissa bits  -> relative spacing 2^-7  ~ 8e-3, fp32's range

``model.to(torch.bfloat16)`` converts every weight and the KV cache; RMSNorm and RoPE still compute in float32
inside (model.py), and the logits come back as float32. Whether 16 bits are *faster* depends on the kernels: a
CPU without native bf16 arithmetic (AVX2 only) converts every element back to fp32 inside the GEMV, so the
bytes halve but the instructions per byte grow, and the GEMV bandwidth of each dtype is printed next to the
decode speed to show it. GPUs and CPUs with AVX-512-BF16 or AMX run 16-bit GEMVs at full bandwidth.

Accuracy is measured on the tiny LLaMA trained in lesson 12 (trained here for fewer steps if its checkpoint is
missing): top-1 agreement with fp32 and perplexity on held-out tiny Shakespeare (``decode_eval.py``).

Run::

    python pytorch_llama2_from_scratch/21_half_precision_weights.py            # ~2-4 min on one CPU thread
    python pytorch_llama2_from_scratch/21_half_precision_weights.py --layers 2 --vocab 4000 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import resolve_device, seed_everything
from pytorch_llama2_from_scratch.decode_eval import accuracy_cost, heldout_windows, trained_tiny_llama
from pytorch_llama2_from_scratch.fast_decode import (
    FastDecoder,
    bytes_per_token,
    decode_parser,
    gemv_bandwidth,
    measure,
    model_gemv_probe,
    parse_decode_args,
    random_llama_pair,
    random_prompt,
    spread,
    weight_bytes,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def speed(model, dtypes, prompt_len, new_tokens, repeats, device, clock) -> dict:
    """Static-cache greedy decoding of the same model in each dtype, interleaved; fp32 GEMV probe."""
    prompt = random_prompt(model.args.vocab_size, prompt_len)
    total = prompt_len + new_tokens
    methods, decoders = {}, {}
    for name in dtypes:
        m = model if name == "fp32" else copy.deepcopy(model).to(DTYPES[name])
        decoders[name] = FastDecoder(m, max_seq_len=total)
        methods[f"{name} weights"] = (
            lambda d=decoders[name]: d.generate(prompt, new_tokens),
            bytes_per_token(m, total),
        )
    for fn, _ in methods.values():
        fn()  # warm-up
    return measure(methods, new_tokens, repeats, device, model_gemv_probe(model), clock, "fp32 weights")


def accuracy(dtypes, windows_n: int, train_steps: int, checkpoint: str | None = None) -> dict:
    ref, tok = trained_tiny_llama(checkpoint, train_steps=train_steps)
    windows = heldout_windows(tok, seq_len=ref.args.max_seq_len - 1, n=windows_n)
    out = {name: accuracy_cost(ref, copy.deepcopy(ref).to(DTYPES[name]), windows) for name in dtypes if name != "fp32"}
    out["_model"] = {"params": ref.num_params(), "steps": ref.trained_steps, "trained_now": ref.trained_now,
                     "tokens": windows[:, 1:].numel()}  # fmt: skip
    return out


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
    windows: int = 16,
    train_steps: int = 150,
    checkpoint: str | None = None,
    threads: int | None = 1,
    clock: str = "wall",
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    model, _ = random_llama_pair(hidden, layers, heads, kv_heads, intermediate, vocab, prompt_len + new_tokens, seed,
                                 with_hf=False)  # fmt: skip
    model.to(dev)
    nbytes = weight_bytes(model)
    print(f"model: {model.num_params() / 1e6:.1f} M parameters, {dev}, {torch.get_num_threads()} thread(s)")
    print("\n1) GEMV bandwidth per weight dtype (a matrix as large as the fp32 model's weights)")
    gemv = {}
    for name, dt in DTYPES.items():
        gemv[name] = gemv_bandwidth(nbytes // DTYPES["fp32"].itemsize * dt.itemsize, dt, dev, repeats=5)
        print(f"   {name}: {max(gemv[name]) / 1e9:6.2f} GB/s (best of 5)")

    print(f"\n2) static-cache greedy decoding, {repeats} interleaved rounds ({clock} clock), limit = fp32 GEMV")
    res = speed(model, DTYPES, prompt_len, new_tokens, repeats, dev, clock)
    base = res["methods"]["fp32 weights"]["median_tok_s"]
    for name, row in res["methods"].items():
        print(
            f"   {name:14s} {row['bytes_per_token'] / 1e6:7.1f} MB/token  {spread(row['tok_s']):>20s} tok/s  "
            f"{spread(row['pct_of_limit']):>20s} % of limit  {row['median_tok_s'] / base:.2f}x fp32  "
            f"same tokens as fp32 {row['same_tokens']:.0%}"
        )

    print("\n3) accuracy cost on the trained tiny LLaMA (held-out tiny Shakespeare)")
    acc = accuracy(DTYPES, windows, train_steps, checkpoint)
    info = acc.pop("_model")
    how = f"trained here for {info['steps']} steps" if info["trained_now"] else f"lesson 12, {info['steps']} steps"
    print(f"   {info['params'] / 1e6:.2f} M parameters ({how}), {info['tokens']} held-out tokens")
    for name, a in acc.items():
        print(
            f"   {name}: top-1 agreement {100 * a['top1_agreement']:.2f} %, perplexity {a['ppl_reference']:.3f} -> "
            f"{a['ppl']:.3f} ({a['ppl_delta_pct']:+.3f} %), max |logit diff| {a['max_abs_logit_diff']:.3f}"
        )
    return {"gemv": gemv, "speed": res, "accuracy": acc, "model_info": info,
            "bandwidth_GBs": statistics.median(res["bandwidth_GBs"])}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = decode_parser(__doc__, new_tokens=64)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median and range are printed)")
    p.add_argument("--windows", type=int, default=16, help="held-out windows for the accuracy measurement")
    p.add_argument("--train-steps", type=int, default=150, help="steps if lesson 12's checkpoint is missing")
    p.add_argument("--checkpoint", default=None, help="tiny LLaMA folder (default: lesson 12's out/llama2/...)")
    return parse_decode_args(p, argv)


if __name__ == "__main__":
    from pytorch_llama2_from_scratch.generate import run_with_clear_errors

    run_with_clear_errors(lambda: main(**vars(parse_args())))
