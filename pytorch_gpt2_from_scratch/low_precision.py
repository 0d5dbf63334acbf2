"""Low precision made visible on a CPU: TF32 matmuls emulated bit by bit, and fp16 training with loss scaling.

**TF32** (NVIDIA Ampere and later) is not a storage format: a tensor-core matmul with
``torch.set_float32_matmul_precision("high")`` reads fp32 inputs, keeps only the top 10 of their 23 mantissa bits
(the sign and the 8 exponent bits stay, so the range is fp32's), multiplies, and accumulates in fp32. A CPU has
no such unit, so lesson 11's TF32 rung measures nothing there; :func:`round_to_tf32` performs the same rounding
on the bits of an fp32 tensor (round to nearest, ties to even), and :func:`emulated_tf32_matmul` is the matmul a
tensor core computes. With ``p`` explicit mantissa bits the unit roundoff is ``u = 2**-(p+1)``:

    fp32  p = 23   u = 2**-24 ~ 6.0e-8
    tf32  p = 10   u = 2**-11 ~ 4.9e-4
    bf16  p = 7    u = 2**-8  ~ 3.9e-3

Rounding both inputs of ``c = sum_k a_k b_k`` perturbs every product by at most ``(1 + u)**2 - 1 ~ 2u``, so

    |c_tf32 - c| <= 2u * sum_k |a_k b_k|       (plus fp32 accumulation, ~K * 2**-24, negligible here)

and for random signs the typical error is ~``2u / sqrt(3)`` times the rms product times ``sqrt(K)``: the relative
error of a TF32 matmul is ~1e-4..1e-3, that of bf16 inputs ~8x larger, both far above fp32's ~1e-7.

**fp16 + loss scaling**: fp16 has 5 exponent bits; its smallest subnormal is ``2**-24 ~ 6e-8`` and its largest
value 65504. Gradients of a language model are often smaller than that, so in fp16 they *underflow* to 0. The
fix (Micikevicius et al. 2018, "Mixed precision training") multiplies the loss by a scale ``S`` before
``backward`` (every gradient is then ``S`` times larger and representable), divides the gradients by ``S`` before
the optimizer step, and adapts ``S``: ``torch.amp.GradScaler`` starts at ``S = 2**16``; if any gradient is inf/NaN
the step is *skipped* and ``S`` is multiplied by ``backoff_factor`` (0.5); after ``growth_interval`` (2000) clean
steps in a row ``S`` is multiplied by ``growth_factor`` (2). bf16 has fp32's exponent range and needs none of this.

Run ``python pytorch_gpt2_from_scratch/low_precision.py`` for both demonstrations on the chapter's own model.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import positive_int, run_cli

UNIT_ROUNDOFF = {"fp32": 2.0**-24, "tf32": 2.0**-11, "bf16": 2.0**-8, "fp16": 2.0**-11}
TF32_DROPPED_BITS = 13  # fp32 has 23 mantissa bits, TF32 keeps 10


# --------------------------------------------------------------------------------------------- TF32
def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest value with a 10-bit mantissa (ties to even), still stored as fp32.

    On the bits ``w`` of each float: add ``0x0FFF + (bit 13 of w)`` and clear the low 13 bits. A carry out of the
    mantissa increments the exponent, which is exactly rounding up to the next power of two. inf and NaN are kept.
    """
    if x.dtype != torch.float32:
        raise ValueError(f"round_to_tf32 takes float32, got {x.dtype}")
    bits = x.contiguous().view(torch.int32)
    lsb = (bits >> TF32_DROPPED_BITS) & 1  # the lowest kept bit: ties round to make it 0
    rounded = (bits + (0x0FFF + lsb)) & ~0x1FFF  # int32 wraps like the hardware's 32-bit add
    out = rounded.view(torch.float32)
    return torch.where(torch.isfinite(x), out, x)


def emulated_tf32_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What a tensor core computes for an fp32 matmul in TF32 mode: inputs rounded to TF32, fp32 accumulation."""
    return round_to_tf32(a) @ round_to_tf32(b)


def bf16_input_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same with inputs rounded to bf16 (7 mantissa bits), products accumulated in fp32."""
    return a.bfloat16().float() @ b.bfloat16().float()


@dataclass
class MatmulErrors:
    """Relative errors ``max|c - c64| / max|c64|`` of one matmul, and the a-priori bound for TF32."""

    fp32: float
    tf32: float
    bf16: float
    tf32_bound: float  # 2u * max_ij sum_k |a_ik b_kj| / max|c64|


def matmul_errors(a: torch.Tensor, b: torch.Tensor) -> MatmulErrors:
    """Errors of fp32, emulated TF32 and bf16-input matmuls against float64 on the same fp32 matrices."""
    ref = a.double() @ b.double()
    scale = ref.abs().max().item()

    def rel(c: torch.Tensor) -> float:
        return (c.double() - ref).abs().max().item() / scale

    bound = 2 * UNIT_ROUNDOFF["tf32"] * (a.double().abs() @ b.double().abs()).max().item() / scale
    return MatmulErrors(rel(a @ b), rel(emulated_tf32_matmul(a, b)), rel(bf16_input_matmul(a, b)), bound)


# --------------------------------------------------------------------------------------------- fp16 + GradScaler
def fp16_underflow_fraction(grads: torch.Tensor) -> float:
    """Fraction of nonzero fp32 gradient entries that become 0 when stored in fp16."""
    nonzero = grads != 0
    return ((grads.half() == 0) & nonzero).sum().item() / max(nonzero.sum().item(), 1)


@dataclass
class ScalerStep:
    scale_before: float
    scale_after: float
    skipped: bool  # the optimizer step was skipped (an inf/NaN gradient after scaling)


def scaler_step(model, optimizer, scaler: torch.amp.GradScaler, x, y, device_type: str = "cpu") -> ScalerStep:
    """One fp16-autocast training step with loss scaling; reports the scale and whether the step was skipped."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device_type, dtype=torch.float16):
        _, loss = model(x, y)
    before = scaler.get_scale()
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # unscales first; skips the step if any gradient is inf/NaN
    scaler.update()
    after = scaler.get_scale()
    return ScalerStep(before, after, skipped=after < before)


# --------------------------------------------------------------------------------------------- demo
def main(seed: int = 1337, n: int = 256) -> dict:
    from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset("tiny", block_size=64, vocab_size=512))
    w = model.transformer.h[0].mlp.c_fc.weight.detach()  # (4C, C), the chapter's own weights
    x = torch.randn(n, w.size(1))
    errs = matmul_errors(x, w.t().contiguous())
    print("one MLP matmul (x @ W_fc^T), relative error vs float64:")
    print(
        f"  fp32 {errs.fp32:.2e}   emulated TF32 {errs.tf32:.2e} (bound {errs.tf32_bound:.2e})   bf16 {errs.bf16:.2e}"
    )

    idx = torch.randint(0, 512, (4, 64))
    model.zero_grad()
    model(idx, idx)[1].backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    print(f"fp32 gradients that underflow to 0 in fp16: {fp16_underflow_fraction(g):.1%}; "
          f"with the loss scaled by 2**16: {fp16_underflow_fraction(g * 2**16):.1%}")  # fmt: skip

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = [scaler_step(model, opt, scaler, idx, idx) for _ in range(8)]
    for i, s in enumerate(steps):
        note = "  (skipped: inf)" if s.skipped else ""
        print(f"  step {i}: scale {s.scale_before:>8.0f} -> {s.scale_after:>8.0f}{note}")
    return {"errors": errs, "steps": steps}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1337, help="random seed (default: %(default)s)")
    p.add_argument("--n", type=positive_int, default=256, help="rows of the activation matrix (default: %(default)s)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
