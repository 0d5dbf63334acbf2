"""Step 04 - RMSNorm (Zhang & Sennrich, 2019): LayerNorm without the mean and without the bias.

    LayerNorm:  y = (x - mean(x)) / sqrt(var(x) + eps) * g + b
    RMSNorm:    y = x / sqrt(mean(x^2) + eps) * g

Re-centring turned out not to matter for training; dropping it saves a reduction and the bias. RMSNorm is
invariant to rescaling the input (RMSNorm(a x) = RMSNorm(x) for a > 0) but, unlike LayerNorm, not to shifting
it. Meta computes it in float32 and casts back, so half-precision activations do not overflow in x^2.
This lesson checks ``model.RMSNorm`` against the formula and ``torch.nn.functional.rms_norm``, shows the two
invariances, and times it against ``nn.LayerNorm``.

Run:  python pytorch_llama2_from_scratch/04_rmsnorm.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.nn.functional as F
from torch import nn

from pytorch_basis.common import positive_float, positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.model import RMSNorm


def _time(fn, x, repeats: int) -> float:
    fn(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - t0) / repeats * 1e6


@torch.no_grad()
def main(seed: int = 0, dim: int = 512, eps: float = 1e-5, repeats: int = 50) -> dict:
    seed_everything(seed)
    norm = RMSNorm(dim, eps)
    norm.weight.copy_(torch.randn(dim))  # a trained gain, not ones
    x = torch.randn(4, 16, dim) * 3 + 1

    by_formula = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight
    by_torch = F.rms_norm(x, (dim,), norm.weight, eps)
    err_formula = (norm(x) - by_formula).abs().max().item()
    err_torch = (norm(x) - by_torch).abs().max().item()
    print(f"RMSNorm vs formula: {err_formula:.1e};  vs F.rms_norm: {err_torch:.1e}")

    scale_err = (norm(7.0 * x) - norm(x)).abs().max().item()
    shift_change = (norm(x + 5.0) - norm(x)).abs().max().item()
    ln = nn.LayerNorm(dim, eps=eps)
    ln_shift = (ln(x + 5.0) - ln(x)).abs().max().item()
    print(f"scale x by 7: RMSNorm changes by {scale_err:.1e} (invariant)")
    print(f"shift x by 5: RMSNorm changes by {shift_change:.2f}, LayerNorm by {ln_shift:.1e}")

    half = (x * 300).half()  # x^2 reaches ~1e7 > fp16 max 65504
    reference = norm(x * 300)  # float32 all the way
    naive = half / torch.sqrt(half.pow(2).mean(-1, keepdim=True) + eps) * norm.weight.half()  # x^2 -> inf
    stable = norm.half()(half).float()  # float32 inside, fp16 weights and output
    norm.float()
    naive_err = (naive.float() - reference).abs().max().item()
    stable_err = (stable - reference).abs().max().item()
    print(
        f"fp16 input of magnitude ~1e3: naive fp16 RMSNorm max error {naive_err:.2f} (x^2 overflowed), "
        f"float32-inside RMSNorm max error {stable_err:.3f}"
    )

    big = torch.randn(64, 128, dim)
    t_rms, t_ln = _time(norm, big, repeats), _time(ln, big, repeats)
    print(
        f"CPU time on {tuple(big.shape)}: RMSNorm {t_rms:.0f} us, LayerNorm {t_ln:.0f} us "
        f"(python RMSNorm vs fused LayerNorm kernel)"
    )
    return {
        "err_formula": err_formula,
        "err_torch": err_torch,
        "scale_err": scale_err,
        "shift_change": shift_change,
        "layernorm_shift_change": ln_shift,
        "fp16_naive_err": naive_err,
        "fp16_stable_err": stable_err,
        "x": x,
        "weight": norm.weight.detach().clone(),
        "y": norm(x),
        "fp16_input": half,
        "fp16_stable": stable,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--dim", type=positive_int, default=512)
    p.add_argument("--eps", type=positive_float, default=1e-5)
    p.add_argument("--repeats", type=positive_int, default=50)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
