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
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_llama2_from_scratch.decode_eval import add_accuracy_arguments, format_accuracy, print_accuracy
from pytorch_llama2_from_scratch.fast_decode import (
    decode_parser,
    describe,
    gemv_bandwidth,
    lesson_model,
    parse_decode_args,
    print_speed_rows,
    random_prompt,
    static_methods,
    warm_and_measure,
    weight_bytes,
)
from pytorch_llama2_from_scratch.quantize import with_weights

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def speed(model, dtypes, prompt_len, new_tokens, repeats, device, clock) -> dict:
    """Static-cache greedy decoding of the same model in each dtype, interleaved; fp32 GEMV probe."""
    prompt = random_prompt(model.args.vocab_size, prompt_len)
    models = {f"{name} weights": with_weights(model, name) for name in dtypes}
    methods = static_methods(models, prompt, new_tokens, prompt_len + new_tokens)
    return warm_and_measure(methods, new_tokens, repeats, device, model, clock, "fp32 weights")


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
    model, _, dev = lesson_model(hidden, layers, heads, kv_heads, intermediate, vocab, prompt_len + new_tokens,
                                 threads, device, seed)  # fmt: skip
    nbytes = weight_bytes(model)
    print(f"model: {describe(model, dev)}")
    print("\n1) GEMV bandwidth per weight dtype (a matrix as large as the fp32 model's weights)")
    gemv = {}
    for name, dt in DTYPES.items():
        gemv[name] = gemv_bandwidth(nbytes // DTYPES["fp32"].itemsize * dt.itemsize, dt, dev, repeats=5)
        print(f"   {name}: {max(gemv[name]) / 1e9:6.2f} GB/s (best of 5)")

    print(f"\n2) static-cache greedy decoding, {repeats} interleaved rounds ({clock} clock), limit = fp32 GEMV")
    res = speed(model, DTYPES, prompt_len, new_tokens, repeats, dev, clock)
    print_speed_rows(res, "fp32 weights")

    print("\n3) accuracy cost on the trained tiny LLaMA (held-out tiny Shakespeare)")
    acc, info = format_accuracy(("bf16", "fp16"), checkpoint, train_steps, windows)
    print_accuracy(acc, info)
    return {"gemv": gemv, "speed": res, "accuracy": acc, "model_info": info,
            "bandwidth_GBs": statistics.median(res["bandwidth_GBs"])}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = decode_parser(__doc__, new_tokens=64, repeats=5)
    add_accuracy_arguments(p)
    return parse_decode_args(p, argv)


if __name__ == "__main__":
    from pytorch_basis.common import run_cli
    from pytorch_llama2_from_scratch.generate import CLI_ERRORS

    run_cli(lambda: main(**vars(parse_args())), CLI_ERRORS, join_lines=True)
