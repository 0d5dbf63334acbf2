"""modern.py: every switch against its definition; GPT-2 when all are off; RoPE equals chapter 3's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.modern import (
    ModernConfig,
    ModernGPT,
    apply_rope,
    relu2,
    rms_norm,
    rope_cos_sin,
    soft_cap,
)
from tests.numerics import assert_close_scaled, assert_close_to_fp64, to_double

pytestmark = pytest.mark.usefixtures("single_thread")

SIZES = dict(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)
ALL_ON = dict(
    rope=True,
    norm="rmsnorm",
    bias=False,
    qk_norm=True,
    mlp="relu2",
    tie_weights=False,
    zero_init=True,
    softcap=15.0,
    value_embed=True,
    x0_skip=True,
)


@pytest.mark.parity
def test_all_switches_off_is_gpt2():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**SIZES))
    modern = ModernGPT(ModernConfig(**SIZES))
    modern.load_state_dict(gpt.state_dict())  # the same parameter names and shapes
    x = torch.randint(0, 50257, (2, 32))
    ref64, _ = to_double(gpt)(x)
    ref32, _ = gpt(x)
    ours, _ = modern(x)
    assert_close_to_fp64(ours, ref64, ref32, what="logits")


@pytest.mark.parity
def test_rope_equals_chapter_3():
    from pytorch_llama2_from_scratch.model import apply_rotary_emb_half
    from pytorch_llama2_from_scratch.model import rope_cos_sin as llama_cos_sin

    B, nh, T, hs = 2, 3, 12, 8
    x = torch.randn(B, nh, T, hs)
    cos, sin = rope_cos_sin(T, hs)
    ours = apply_rope(x, cos, sin)
    lcos, lsin = llama_cos_sin(torch.arange(T), hs)  # (T, hs): chapter 3's half-split convention
    theirs = apply_rotary_emb_half(x, lcos, lsin)
    assert_close_scaled(ours, theirs, ulps=16, what="rope vs chapter 3")


def test_rope_scores_depend_on_relative_position_only():
    hs = 16
    q, k = torch.randn(hs, dtype=torch.float64), torch.randn(hs, dtype=torch.float64)
    cos, sin = rope_cos_sin(40, hs)
    cos, sin = cos.double(), sin.double()

    def at(v, m):
        return apply_rope(v.view(1, 1, 1, hs).expand(1, 1, 40, hs), cos, sin)[0, 0, m]

    s1 = at(q, 7) @ at(k, 3)
    s2 = at(q, 30) @ at(k, 26)
    assert abs(float(s1 - s2)) < 1e-5 * float(q.norm() * k.norm())
    assert abs(float(at(q, 0) @ at(k, 0) - q @ k)) < 1e-12  # position 0 is not rotated


def test_qk_norm_relu2_softcap_against_definitions():
    x = torch.randn(4, 8, dtype=torch.float64) * 3
    assert_close_scaled(rms_norm(x), x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6), ulps=8)
    assert_close_scaled(relu2(x), torch.where(x > 0, x * x, torch.zeros_like(x)), ulps=1)
    big = torch.linspace(-200, 200, 101, dtype=torch.float64)
    capped = soft_cap(big, 15.0)
    assert_close_scaled(capped, 15.0 * torch.tanh(big / 15.0), ulps=1)
    assert capped.abs().max() < 15.0
    small = torch.tensor([1e-3], dtype=torch.float64)
    assert abs(float(soft_cap(small, 15.0) - small)) < 1e-9  # ~identity near 0
    # the hand-written backward: against finite differences, and against autograd through torch.tanh
    z = (torch.randn(3, 5, dtype=torch.float64) * 20).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: soft_cap(t, 15.0), (z,))
    g = torch.randn(3, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(soft_cap(z, 15.0), z, g)
    (ref,) = torch.autograd.grad(15.0 * torch.tanh(z / 15.0), z, g)
    assert_close_scaled(ours, ref, ulps=8)


def test_qk_norm_in_attention_bounds_the_scores(monkeypatch):
    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**{**SIZES, "qk_norm": True}))
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight.mul_(1000.0)  # huge weights: without QK-norm the softmax would saturate
    seen = {}
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, is_causal):
        seen["q"], seen["k"] = q, k
        return sdpa(q, k, v, is_causal=is_causal)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    attn(torch.randn(1, 8, 32))
    for t in (seen["q"], seen["k"]):  # every head vector has unit RMS: |q . k| / sqrt(hs) <= sqrt(hs)
        rms = t.pow(2).mean(-1).sqrt()
        assert_close_scaled(rms, torch.ones_like(rms), ulps=64)


def test_zero_init_makes_blocks_identity_and_init_loss_exactly_ln_v():
    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**SIZES, **ALL_ON))
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight") or name == "lm_head.weight":
            assert torch.count_nonzero(p) == 0, name
    x = torch.randn(2, 8, 32)
    block = model.transformer.h[0]
    assert torch.equal(block(x), x)  # both residual branches add exactly 0
    idx = torch.randint(0, 50257, (2, 32))
    _, loss = model(idx, idx)
    assert abs(loss.item() - math.log(50257)) < 1e-5


@pytest.mark.parametrize(
    "switches",
    [
        dict(rope=True, norm="rmsnorm", bias=False, qk_norm=True, mlp="relu2"),
        dict(tie_weights=False, softcap=15.0, value_embed=True, x0_skip=True),
    ],
)
def test_modern_init_loss_is_about_ln_v(switches):
    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**SIZES, **switches))
    idx = torch.randint(0, 50257, (4, 32))
    _, loss = model(idx, torch.roll(idx, -1, 1))
    assert abs(loss.item() - math.log(50257)) < 0.1


def test_bad_configs_name_the_option():
    with pytest.raises(ValueError, match="norm"):
        ModernConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="tie_weights"):
        ModernConfig(zero_init=True)
    with pytest.raises(ValueError, match="softcap"):
        ModernConfig(softcap=0.0)
    with pytest.raises(ValueError, match="exceeds block_size"):
        ModernGPT(ModernConfig(**SIZES))(torch.zeros(1, 33, dtype=torch.long))
