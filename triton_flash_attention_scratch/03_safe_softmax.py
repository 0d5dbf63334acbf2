"""Step 3: safe softmax — why e^x overflows and how subtracting the row max fixes it.

    naive:  softmax(x)_i = e^(x_i) / Σ_j e^(x_j)
    safe:   softmax(x)_i = e^(x_i - m) / Σ_j e^(x_j - m),   m = max_j x_j

The two are equal (multiply numerator and denominator by e^(-m)), but in floating point e^x overflows to inf
once x > ln(max float): 88.72 in fp32, 11.09 in fp16 — and inf / inf = nan. After subtracting m every exponent
is ≤ 0, so every e^(x_i - m) is in (0, 1] and the sum is in [1, n]: nothing can overflow. Attention scores
reach these values easily (large activations, fp16 kernels), so every real softmax kernel is the safe one.
The price: three passes over each row (max, sum, normalize). Step 4 removes one.

Run:  python triton_flash_attention_scratch/03_safe_softmax.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse
import math

import torch

from pytorch_basis.common import finite_float
from triton_flash_attention_scratch.attention_torch import naive_softmax, safe_softmax


def main(scale: float = 1.0) -> dict:
    results = {}
    for dtype in (torch.float32, torch.float16):
        limit = math.log(torch.finfo(dtype).max)
        print(f"{str(dtype):14s} largest finite value {torch.finfo(dtype).max:.4g}, e^x overflows for x > {limit:.2f}")
    cases = {
        "small logits fp32": torch.tensor([1.0, 2.0, 3.0]) * scale,
        "large logits fp32": torch.tensor([1000.0, 999.0, 998.0]) * scale,
        "fp16 logits > 11.1": torch.tensor([12.0, 11.0, 10.0], dtype=torch.float16) * scale,
        "very negative fp32": torch.tensor([-1000.0, -1001.0, -1002.0]) * scale,
    }
    print(f"\n{'case':20s} {'naive':28s} {'safe':28s} torch.softmax")
    fmt = lambda t: "[" + ", ".join(f"{v:.4f}" for v in t.float().tolist()) + "]"
    for name, x in cases.items():
        naive, safe, ref = naive_softmax(x), safe_softmax(x), torch.softmax(x.float(), dim=-1)
        results[name] = {"x": x, "naive": naive, "safe": safe, "reference": ref}
        print(f"{name:20s} {fmt(naive):28s} {fmt(safe):28s} {fmt(ref)}")
    print(
        "\nnaive: e^1000 = inf in fp32 and e^12 = 162755 > 65504 in fp16 -> inf/inf = nan;"
        " e^-1000 = 0 -> 0/0 = nan. safe: the largest term is always e^0 = 1."
    )
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=finite_float, default=1.0, help="multiply every example's logits by this")
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
