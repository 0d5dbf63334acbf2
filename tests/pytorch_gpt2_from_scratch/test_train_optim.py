"""Optimizer, schedules and gradient accumulation of chapter 2, part 2 (training.py)."""

from __future__ import annotations

import math

import pytest
import torch

from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.training import (
    accumulate_gradients,
    configure_optimizers,
    get_lr,
    grad_accum_steps_for,
    ramped_grad_accum_steps,
    split_decay_params,
)
from tests.numerics import assert_close_to_fp64, to_double

MAX_LR, WARMUP, MAX_STEPS = 6e-4, 10, 110
MIN_LR = 0.1 * MAX_LR


def lr(step):
    return get_lr(step, max_lr=MAX_LR, warmup_steps=WARMUP, max_steps=MAX_STEPS)


def test_schedule_closed_form_points():
    assert lr(0) == pytest.approx(MAX_LR / WARMUP)  # never 0 at the first step
    assert lr(WARMUP - 1) == pytest.approx(MAX_LR)  # end of warmup
    assert lr(WARMUP) == pytest.approx(MAX_LR)  # cosine starts at the top
    mid = WARMUP + (MAX_STEPS - WARMUP) // 2
    assert lr(mid) == pytest.approx((MAX_LR + MIN_LR) / 2)  # cos(pi/2) = 0
    assert lr(MAX_STEPS) == pytest.approx(MIN_LR)
    assert lr(MAX_STEPS + 50) == pytest.approx(MIN_LR)
    quarter = WARMUP + (MAX_STEPS - WARMUP) // 4
    assert lr(quarter) == pytest.approx(MIN_LR + 0.5 * (1 + math.cos(math.pi / 4)) * (MAX_LR - MIN_LR))


def test_schedule_matches_torch_schedulers():
    """Warmup = LinearLR from 1/warmup to 1, then CosineAnnealingLR down to eta_min = 10% (torch built-ins)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=MAX_LR)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / WARMUP, end_factor=1.0, total_iters=WARMUP - 1)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=MAX_STEPS - WARMUP, eta_min=MIN_LR)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[WARMUP])
    for step in range(MAX_STEPS + 1):
        assert lr(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step
        opt.step()
        sched.step()


def test_schedule_rejects_bad_warmup():
    with pytest.raises(ValueError, match="warmup_steps"):
        get_lr(0, max_lr=1.0, warmup_steps=20, max_steps=10)


@pytest.mark.parametrize("warmup", [0, WARMUP])
def test_schedule_rejects_negative_step(warmup):
    # step -1 would give lr = 0 inside the warmup, or a cosine past its top (r < 0) without it: refuse, naming it
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        get_lr(-1, max_lr=MAX_LR, warmup_steps=warmup, max_steps=MAX_STEPS)


def test_decay_groups_are_exactly_the_2d_parameters():
    model = GPT(GPTConfig.preset("tiny", vocab_size=96))
    opt = configure_optimizers(model, weight_decay=0.1, learning_rate=1e-3, device_type="cpu")
    decay_group, plain_group = opt.param_groups
    assert decay_group["weight_decay"] == 0.1 and plain_group["weight_decay"] == 0.0
    expected_decay = {id(p) for p in model.parameters() if p.dim() >= 2}
    expected_plain = {id(p) for p in model.parameters() if p.dim() < 2}
    assert {id(p) for p in decay_group["params"]} == expected_decay
    assert {id(p) for p in plain_group["params"]} == expected_plain
    # every parameter exactly once (the tied wte/lm_head matrix too), nothing else
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params() == sum(p.numel() for p in model.parameters())
    decay, plain = split_decay_params(model)
    assert all(".ln_" in k or k.endswith(".bias") for k in plain)
    assert "lm_head.weight" in decay or "transformer.wte.weight" in decay
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_fused_flag_follows_request():
    model = GPT(GPTConfig.preset("tiny", vocab_size=32))
    assert configure_optimizers(model, device_type="cpu", fused=False).defaults["fused"] is False


@pytest.mark.parity
@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_equals_big_batch(k):
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", vocab_size=64, block_size=16)
    model = GPT(cfg)
    B, T = 2, 16
    x = torch.randint(0, 64, (k * B, T))
    y = torch.randint(0, 64, (k * B, T))
    # reference: one batch k times larger, plain backward of the mean loss, in fp32 and in float64
    refs = {}
    for name, m in (("ref32", model), ("ref64", to_double(model))):
        _, loss = m(x, y)
        loss.backward()
        refs[name] = (loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    model.zero_grad(set_to_none=True)
    batches = iter(zip(x.split(B), y.split(B)))
    acc_loss, tokens = accumulate_gradients(model, lambda: next(batches), k, device=torch.device("cpu"))
    assert tokens == k * B * T
    assert_close_to_fp64(acc_loss, refs["ref64"][0], refs["ref32"][0], what="accumulated loss")
    for n, p in model.named_parameters():
        assert_close_to_fp64(p.grad, refs["ref64"][1][n], refs["ref32"][1][n], what=n)


def test_batch_ramp_and_accum_steps():
    assert [ramped_grad_accum_steps(s, full_steps=8, ramp_steps=4) for s in range(6)] == [1, 2, 4, 6, 8, 8]
    assert ramped_grad_accum_steps(0, full_steps=8, ramp_steps=0) == 8
    assert grad_accum_steps_for(524_288, 64, 1024, 8) == 1
    assert grad_accum_steps_for(524_288, 16, 1024, 1) == 32
    with pytest.raises(ValueError, match="not divisible"):
        grad_accum_steps_for(1000, 4, 64, 1)
