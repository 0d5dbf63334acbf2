"""Step 22: weight-only int8 - one byte per weight, scales per output channel, activations in floating point.

``quantize.quantize_int8_(model)`` replaces every ``nn.Linear`` in place by an ``Int8Linear``::

    s_o = max_i |W[o, i]| / 127,   Q[o, i] = round(W[o, i] / s_o)  (int8),   y_o = s_o * sum_i x_i Q[o, i]

so a decode step reads ~1 byte per weight (+ one scale per row) instead of 4 (fp32) or 2 (bf16) -- if the
kernel streams those bytes as fast as the fp32 GEMV streams its own. PyTorch's CPU kernel
``aten._weight_int8pack_mm`` does not (and it is vectorised for 16-bit activations only, so each linear would
round its input to bf16). On the CPU the default kernel is therefore the chapter's own ``cpu_kernels.cpp``
(``kernel="gemv"``): each int8 row is loaded once, widened to fp32 in registers and multiplied into the fp32
activations; it is built with the machine's C++ compiler on first use, and without one ``int8pack`` is used.
Part 2 times both kernels in the full model, part 4 on one matrix. The quantised model is saved and loaded as a
checkpoint of int8 tensors + scales (``save_quantized`` writes atomically, ``load_quantized`` reads it with
``weights_only=True``); the embedding table stays floating point because a step reads only one of its rows.

Group-wise int4 (16 scales per row instead of 1, half the bytes again) pays only if its kernel reads at full
speed; part 4 times PyTorch's CPU int4 kernel (``aten._weight_int4pack_mm_for_cpu``, group 128) against the int8
one on one matrix, which decides whether this chapter goes further.

Run::

    python pytorch_llama2_from_scratch/22_int8_weights.py            # ~2-4 min on one CPU thread
    python pytorch_llama2_from_scratch/22_int8_weights.py --layers 2 --vocab 4000 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.nn.functional as F

from pytorch_llama2_from_scratch import cpu_kernels
from pytorch_llama2_from_scratch.decode_eval import add_accuracy_arguments, format_accuracy, print_accuracy
from pytorch_llama2_from_scratch.fast_decode import (
    decode_parser,
    describe,
    lesson_model,
    parse_decode_args,
    print_speed_rows,
    random_prompt,
    static_methods,
    warm_and_measure,
    weight_bytes,
)
from pytorch_llama2_from_scratch.quantize import load_quantized, quantize_int8_, save_quantized, with_weights


def kernel_times(rows: int = 4096, cols: int = 4096, repeats: int = 20) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds of one (1, cols) x (cols, rows) product per weight format (CPU)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(1, cols, generator=g)
    q = torch.randint(-127, 128, (rows, cols), dtype=torch.int8, generator=g)
    s = torch.rand(rows, generator=g)
    calls = {
        "fp32 F.linear": lambda: F.linear(x, w),
        "bf16 F.linear": lambda: F.linear(x.bfloat16(), w.bfloat16()),
        "int8 _weight_int8pack_mm (bf16 act)": lambda: torch.ops.aten._weight_int8pack_mm(
            x.bfloat16(), q, s.bfloat16()
        ),
    }
    try:  # speed only: packed random 4-bit values, 128-wide groups (scales and zeros per group and row)
        q4 = torch.randint(0, 16, (rows, cols), dtype=torch.int32, generator=g)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
        sz = torch.rand(cols // 128, rows, 2, generator=g).bfloat16()
        calls["int4 _weight_int4pack_mm_for_cpu (bf16 act, g128)"] = lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.bfloat16(), packed, 128, sz
        )
    except (RuntimeError, AttributeError) as e:
        print(f"   (int4 kernel unavailable in this build: {type(e).__name__})")
    wb, xb = w.bfloat16(), x.bfloat16()
    calls["bf16 F.linear"] = lambda: F.linear(xb, wb)
    if cpu_kernels.available():
        calls["int8 cpu_kernels gemv (fp32 act)"] = lambda: cpu_kernels.linear(x, q, s)
    out = {}
    for name, fn in calls.items():
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = 1e3 * best
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
    model, _, dev = lesson_model(hidden, layers, heads, kv_heads, intermediate, vocab, prompt_len + new_tokens,
                                 threads, device, seed)  # fmt: skip
    total = prompt_len + new_tokens
    bf16 = with_weights(model, "bf16")
    t0 = time.perf_counter()
    int8 = with_weights(model, "int8")
    print(
        f"model: {describe(model, dev)}; quantised in {time.perf_counter() - t0:.1f} s: "
        f"{weight_bytes(model) / 1e6:.0f} MB fp32 -> {weight_bytes(int8) / 1e6:.0f} MB int8 (+ fp32 embedding table)"
    )

    print("\n1) save and load the quantised checkpoint")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "llama-int8.pt"
        save_quantized(int8, path)
        size = path.stat().st_size
        loaded = load_quantized(path, device=dev)
    probe = torch.tensor([random_prompt(vocab, 8)], device=dev)
    with torch.inference_mode():
        same = torch.equal(int8(probe, use_cache=False), loaded(probe, use_cache=False))
    print(f"   {size / 1e6:.0f} MB on disk; loaded model gives identical logits: {same}")
    del loaded

    print(f"\n2) static-cache greedy decoding, {repeats} interleaved rounds ({clock} clock), limit = fp32 GEMV")
    prompt = random_prompt(vocab, prompt_len)
    models = {"fp32 weights": model, "bf16 weights": bf16, "int8 weights": int8}
    if int8.output.kernel != "int8pack":  # the default kernel is the chapter's own: show PyTorch's next to it
        models["int8, int8pack"] = quantize_int8_(copy.deepcopy(model), kernel="int8pack")
    print(f"   int8 kernel: {int8.output.kernel}" + ("" if cpu_kernels.available() else
          f" (the C++ kernel is not available: {cpu_kernels.unavailable_reason()})"))  # fmt: skip
    methods = static_methods(models, prompt, new_tokens, total)
    res = warm_and_measure(methods, new_tokens, repeats, dev, model, clock, "fp32 weights")
    print_speed_rows(res, "fp32 weights")

    print("\n3) accuracy cost on the trained tiny LLaMA (held-out tiny Shakespeare)")
    acc, info = format_accuracy(("bf16", "int8"), checkpoint, train_steps, windows)
    print_accuracy(acc, info)

    kernels = {}
    if dev.type == "cpu":
        print("\n4) one 4096 x 4096 GEMV per weight format (best of 20)")
        kernels = kernel_times()
        for name, ms in kernels.items():
            print(f"   {name:52s} {ms:7.3f} ms")
    return {"speed": res, "accuracy": acc, "kernels_ms": kernels, "checkpoint_bytes": size, "roundtrip_equal": same,
            "bandwidth_GBs": statistics.median(res["bandwidth_GBs"])}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = decode_parser(__doc__, new_tokens=64, repeats=5)
    add_accuracy_arguments(p)
    return parse_decode_args(p, argv)


if __name__ == "__main__":
    from pytorch_basis.common import run_cli
    from pytorch_llama2_from_scratch.generate import CLI_ERRORS

    run_cli(lambda: main(**vars(parse_args())), CLI_ERRORS, join_lines=True)
