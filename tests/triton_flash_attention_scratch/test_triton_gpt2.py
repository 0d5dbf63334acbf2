"""Chapter 4's kernel inside chapter 2's GPT-2: importing ``triton_flash`` registers ``attn_impl="triton"``, and the
model built with it computes what the SDPA model computes (logits and gradients)."""

from __future__ import annotations

import pytest
import torch

from pytorch_gpt2_from_scratch.model import GPT, GPTConfig, attention_impls
from tests.numerics import assert_close_scaled


def test_importing_the_kernel_module_registers_triton():
    import triton_flash_attention_scratch.triton_flash as tf

    assert "triton" in attention_impls()
    assert GPTConfig.preset("tiny", attn_impl="triton").attn_impl == "triton"
    assert tf.causal_flash_attention.__name__ == "causal_flash_attention"


@pytest.mark.parity
def test_gpt2_with_triton_attention_equals_sdpa():
    import triton_flash_attention_scratch.triton_flash  # noqa: F401  (registers "triton")

    torch.manual_seed(0)
    sdpa = GPT(GPTConfig.preset("tiny", block_size=16))
    triton = GPT(GPTConfig.preset("tiny", block_size=16, attn_impl="triton"))
    triton.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 50257, (1, 16))
    logits_t, loss_t = triton(idx, idx)
    logits_s, loss_s = sdpa(idx, idx)
    assert_close_scaled(logits_t, logits_s, what="logits")
    loss_t.backward()
    loss_s.backward()
    for (name, p_t), p_s in zip(triton.named_parameters(), sdpa.parameters()):
        assert_close_scaled(p_t.grad, p_s.grad, ulps=2048, what=f"grad of {name}")
