"""Shared fixtures for the LLaMA-2 chapter tests: tiny Hugging Face reference models with random weights.

* ``make_hf_llama(**config)`` -> ``LlamaForCausalLM`` in eval mode, fp32, eager attention, random weights with
  ``initializer_range=0.2`` (large enough that a wrong RoPE permutation shows up far above 1e-5) and
  randomised RMSNorm weights (so swapped norms would show too).
* ``hf_llama_dir`` -> ``(directory, hf_model)``: a GQA tiny model written with ``save_pretrained``.
* ``hf_ref(hf_model, tokens, **kwargs)`` -> ``(ref64, ref32)``: the reference logits of ``hf_model`` run in
  float64 (a cached ``.double()`` copy) and in fp32, for ``tests.numerics.assert_close_to_fp64`` (the suite's
  tolerance policy, ``tests/README.md``).
* ``DEFAULT_CONFIG``: vocab 96, hidden 64, 2 layers, 4 heads (2 KV heads), intermediate 96, 64 positions.
* Every test in this folder runs single-threaded (autouse ``_one_thread``): the matrices are tiny, and on a
  shared 2-core CI box idle-spinning worker threads made the suite several times slower.
"""

from __future__ import annotations

import pytest
import torch

from tests.numerics import to_double

transformers = pytest.importorskip("transformers")

DEFAULT_CONFIG = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    initializer_range=0.2,
    rope_theta=10000.0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _make_hf_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**DEFAULT_CONFIG, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # HF initialises norms to ones; make them random so a swapped norm is visible
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def make_hf_llama():
    """Factory: ``make_hf_llama(num_key_value_heads=1, seed=3)`` -> a random tiny ``LlamaForCausalLM``."""
    return _make_hf_llama


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory):
    """``(directory, hf_model)``: a tiny GQA LLaMA saved with ``save_pretrained`` (config.json + safetensors)."""
    model = _make_hf_llama(seed=0)
    directory = tmp_path_factory.mktemp("hf_llama")
    model.save_pretrained(directory)
    return directory, model


_DOUBLES: dict[int, tuple[torch.nn.Module, torch.nn.Module]] = {}


@torch.no_grad()
def hf_logits64(hf_model, tokens: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ref64, ref32)``: the logits of ``hf_model`` in float64 (a cached double copy) and in its own fp32."""
    key = id(hf_model)
    if key not in _DOUBLES or _DOUBLES[key][0] is not hf_model:
        _DOUBLES[key] = (hf_model, to_double(hf_model))
    ref64 = _DOUBLES[key][1](tokens, **kwargs).logits
    ref32 = hf_model(tokens, **kwargs).logits
    return ref64, ref32


@pytest.fixture(scope="session")
def hf_ref():
    """``hf_ref(hf_model, tokens)`` -> ``(ref64, ref32)`` logits (see :func:`hf_logits64`)."""
    return hf_logits64


def hf_from_ours(model) -> torch.nn.Module:
    """An HF ``LlamaForCausalLM`` holding our model's weights (Meta -> HF names, q/k rows permuted for HF's RoPE)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytorch_llama2_from_scratch.loading import meta_to_hf_name
    from pytorch_llama2_from_scratch.model import permute_for_hf

    a = model.args
    config = LlamaConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.dim,
        intermediate_size=a.ffn_hidden,
        num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads,
        num_key_value_heads=a.n_kv_heads,
        max_position_embeddings=a.max_seq_len,
        rms_norm_eps=a.norm_eps,
        rope_theta=a.rope_theta,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("attention.wq.weight"):
            t = permute_for_hf(t, a.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = permute_for_hf(t, a.n_kv_heads)
        state[meta_to_hf_name(name)] = t.detach().float()
    hf = LlamaForCausalLM(config).eval()
    hf.load_state_dict(state)
    return hf
