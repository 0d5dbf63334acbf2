"""TF32 emulation against bit-level integer arithmetic written here; fp16 loss scaling with torch's GradScaler on
the CPU: underflow, the initial scale, a skipped step on inf, growth and backoff, unscaled = fp32 gradients."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from pytorch_gpt2_from_scratch.low_precision import (
    emulated_tf32_matmul,
    fp16_underflow_fraction,
    matmul_errors,
    round_to_tf32,
    scaler_step,
)
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from tests.numerics import assert_close_scaled, assert_close_to_fp64

pytestmark = pytest.mark.usefixtures("single_thread")


def tf32_by_hand(value: float) -> float:
    """Round an fp32 number to 10 mantissa bits, ties to even, with Python integers on its IEEE-754 bits."""
    (w,) = struct.unpack("<I", struct.pack("<f", value))
    sign, rest = w & 0x8000_0000, w & 0x7FFF_FFFF  # rest = exponent (8 bits) | mantissa (23 bits)
    if rest >= 0x7F80_0000:  # inf / NaN: unchanged
        return value
    kept, dropped = rest >> 13, rest & 0x1FFF  # 13 bits go
    half = 0x1000
    if dropped > half or (dropped == half and kept & 1):
        kept += 1  # a carry into the exponent is the next power of two (or inf at the very top)
    (out,) = struct.unpack("<f", struct.pack("<I", sign | (kept << 13)))
    return out


def _specials() -> list[float]:
    one = 1.0
    ulp13 = 2.0**-23  # fp32 spacing at 1
    return [
        0.0, -0.0, one, -one, one + 4096 * ulp13, one + 4097 * ulp13, one + 4095 * ulp13,  # exactly half, above, below
        one + 3 * 4096 * ulp13,  # a tie with odd kept bit: rounds up
        2.0**-149, 2.0**-126, 3.4e38, -3.4028234e38, 1.0 - 2.0**-24, float("inf"), float("-inf"), 65504.0,
    ]  # fmt: skip


def test_round_to_tf32_equals_bit_level_arithmetic():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(4000, generator=g) * torch.exp(torch.randn(4000, generator=g) * 20),  # many exponents
        torch.tensor(_specials(), dtype=torch.float32),
    ])  # fmt: skip
    ours = round_to_tf32(x)
    ref = torch.tensor([tf32_by_hand(v) for v in x.tolist()], dtype=torch.float32)
    assert torch.equal(ours, ref)  # exact: the same bits
    assert torch.isnan(round_to_tf32(torch.tensor([float("nan")]))).all()
    finite = torch.isfinite(x) & torch.isfinite(ours) & (x.abs() >= 2.0**-126)  # normal numbers
    assert torch.all((ours.view(torch.int32)[finite] & 0x1FFF) == 0)  # only 10 mantissa bits left
    rel = ((ours[finite].double() - x[finite].double()).abs() / x[finite].double().abs()).max().item()
    assert rel <= 2.0**-11  # unit roundoff of a 10-bit mantissa


def test_emulated_tf32_matmul_is_the_matmul_of_rounded_inputs_and_within_the_bound():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 96, generator=g), torch.randn(96, 48, generator=g)
    ref64 = round_to_tf32(a).double() @ round_to_tf32(b).double()  # exact products of TF32 inputs
    assert_close_to_fp64(emulated_tf32_matmul(a, b), ref64, what="fp32 accumulation of TF32 products")
    errs = matmul_errors(a, b)
    assert errs.fp32 < 1e-5 < errs.tf32 <= errs.tf32_bound  # TF32 costs precision, but never beyond 2u sum|ab|
    assert errs.bf16 > 3 * errs.tf32  # 3 fewer mantissa bits: ~8x the error
    assert math.isclose(errs.tf32_bound * (a.double() @ b.double()).abs().max().item(),
                        2 * 2.0**-11 * (a.double().abs() @ b.double().abs()).max().item(), rel_tol=1e-12)  # fmt: skip


def test_fp16_underflow_and_what_the_scale_rescues():
    grads = torch.tensor([1e-3, 1e-6, 1e-8, 3e-9, 0.0, -2e-8])  # fp16's smallest subnormal is 2**-24 ~ 6e-8
    assert grads.half().tolist()[2:] == [0.0, 0.0, 0.0, -0.0]
    assert fp16_underflow_fraction(grads) == 3 / 5  # of the 5 nonzero entries, 1e-8, 3e-9 and -2e-8 vanish
    scaled = grads * 2.0**16
    assert fp16_underflow_fraction(scaled) == 0  # all representable after scaling by 2**16
    back = scaled.half().float() / 2.0**16
    assert_close_scaled(back[:4], grads[:4], ulps=4, dtype=torch.float16)  # and recovered to fp16 precision


def _tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))


def test_grad_scaler_initial_scale_growth_and_backoff():
    model = _tiny()
    scaler = torch.amp.GradScaler("cpu", growth_interval=2)
    assert scaler.get_scale() == 2.0**16  # the default start
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (2, 16))
    steps = [scaler_step(model, opt, scaler, x, x) for _ in range(4)]
    assert [s.scale_after for s in steps] == [2.0**16, 2.0**17, 2.0**17, 2.0**18]  # x2 after 2 clean steps
    assert not any(s.skipped for s in steps)
    # An inf gradient: the step is skipped (weights untouched) and the scale halves (backoff 0.5).
    with torch.no_grad():
        model.lm_head.weight[0, 0] = 6e4  # logits near fp16's 65504: the scaled backward overflows
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    s = scaler_step(model, opt, scaler, x, x)
    assert s.skipped and s.scale_after == s.scale_before / 2
    assert any(not torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before[k]), k


def test_unscaled_fp16_gradients_equal_fp32_gradients_within_fp16_tolerance():
    model = _tiny(1)
    x = torch.randint(0, 64, (2, 16))
    model(x, x)[1].backward()
    fp32 = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        _, loss = model(x, x)
    scaler.scale(loss).backward()
    scaled = model.transformer.wte.weight.grad.clone()  # S times the gradient, before unscaling
    assert_close_scaled(scaled, fp32["transformer.wte.weight"] * scaler.get_scale(), ulps=32, dtype=torch.float16)
    scaler.unscale_(opt)  # divides by the scale in fp32
    for k, p in model.named_parameters():
        # fp16 products carry u = 2**-11 relative error each; a few dozen roundings per gradient entry
        assert_close_scaled(p.grad, fp32[k], ulps=32, dtype=torch.float16, what=k)
