"""Static KV cache + fixed-shape decode step (fast_decode.py) against HF transformers and the chapter's decoding."""

from __future__ import annotations

import pytest
import torch

from pytorch_llama2_from_scratch.fast_decode import (
    FastDecoder,
    _attention_by_reduction,
    _rotate,
    bytes_per_token,
    gemv_bandwidth,
    weight_bytes,
)
from pytorch_llama2_from_scratch.generate import generate
from pytorch_llama2_from_scratch.loading import load_hf_checkpoint
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer, apply_rotary_emb
from tests.numerics import assert_close_scaled, assert_close_to_fp64


@pytest.fixture(scope="module")
def pair(hf_llama_dir):
    directory, hf = hf_llama_dir
    model, _ = load_hf_checkpoint(directory, max_batch_size=2)
    return model.eval(), hf


def _hf_logits(hf, tokens, dtype):
    ref = hf.to(dtype)
    try:
        with torch.no_grad():
            return ref(tokens).logits
    finally:
        hf.float()


@pytest.mark.parity
def test_static_prefill_and_steps_equal_hf_full_forward(pair):
    model, hf = pair
    tokens = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    ref64, ref32 = _hf_logits(hf, tokens, torch.float64), _hf_logits(hf, tokens, torch.float32)
    dec = FastDecoder(model, batch=2, max_seq_len=40)
    with torch.inference_mode():
        chunks = [dec.prefill(tokens[:, :10], last_only=False)]  # prefill 10, then one token at a time
        chunks += [dec.step(tokens[:, i : i + 1], i) for i in range(10, 24)]
        static = torch.cat(chunks, dim=1)
        dynamic = [model(tokens[:, :10])] + [model(tokens[:, i : i + 1], start_pos=i) for i in range(10, 24)]
        dynamic = torch.cat(dynamic, dim=1)
    assert_close_to_fp64(static, ref64.double(), ref32, what="static cache vs HF full forward")
    assert_close_to_fp64(dynamic, ref64.double(), ref32, what="dynamic cache vs HF full forward")


@pytest.mark.parity
def test_real_rope_equals_complex_rope():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 5, 4, 16, generator=g), torch.randn(2, 5, 2, 16, generator=g)
    model = Transformer(ModelArgs.preset("tiny", dim=64, n_heads=4))
    table = model.freqs_cis(torch.device("cpu"))[3:8]  # positions 3..7
    ref_q, ref_k = apply_rotary_emb(q.double(), k.double(), table.to(torch.complex128))
    assert_close_to_fp64(_rotate(q, table.real, table.imag), ref_q, what="q")
    assert_close_to_fp64(_rotate(k, table.real, table.imag), ref_k, what="k")


@pytest.mark.parity
@pytest.mark.parametrize("window", [None, 3])
def test_attention_by_reduction_equals_float64_sdpa(window):
    """The compiled step's attention (broadcast-multiply-sum) against PyTorch's SDPA in float64: GQA (6 query
    heads over 2 kv heads), 3 queries at positions 4..6 over 9 slots, causal and sliding-window masks."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 6, 8, generator=g)  # (B, T, H, hd)
    keys, values = torch.randn(2, 2, 9, 8, generator=g), torch.randn(2, 2, 9, 8, generator=g)  # (B, KV, S, hd)
    pos, slots = torch.arange(4, 7), torch.arange(9)
    mask = slots[None, :] <= pos[:, None]
    if window is not None:
        mask = mask & (slots[None, :] > pos[:, None] - window)

    def sdpa(q, k, v):
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=True)
        return out.transpose(1, 2).reshape(2, 3, 48)

    ref64 = sdpa(q.double(), keys.double(), values.double())
    assert_close_to_fp64(_attention_by_reduction(q, keys, values, mask), ref64, sdpa(q, keys, values), what="reduce")


def test_static_greedy_equals_chapter_greedy_over_prompts(pair):
    model, _ = pair
    dec = FastDecoder(model, max_seq_len=48)
    g = torch.Generator().manual_seed(3)
    for n_prompt in (1, 2, 5, 11):
        prompt = torch.randint(3, 96, (n_prompt,), generator=g).tolist()
        assert dec.generate(prompt, 30) == generate(model, [prompt], 30)[0]  # token for token


def test_cache_is_written_in_place_and_fixed_shape(pair):
    model, _ = pair
    dec = FastDecoder(model, max_seq_len=16)
    before = [(b.data_ptr(), tuple(b.shape)) for b in dec.cache.buffers()]
    dec.generate([5, 6, 7], 10)
    after = [(b.data_ptr(), tuple(b.shape)) for b in dec.cache.buffers()]
    assert before == after
    assert dec.cache.nbytes() == 2 * 2 * 1 * 2 * 16 * 16 * 4  # K,V x layers x B x KV x S_max x hd x fp32


def test_bytes_per_token_is_the_weights_plus_the_cache():
    args = ModelArgs.preset("tiny")
    model = Transformer(args)
    expected = 4 * (args.num_params() - args.vocab_size * args.dim + args.dim)  # embedding: one row read
    assert weight_bytes(model) == 4 * args.num_params()
    kv = 2 * args.n_layers * 20 * args.n_kv_heads * args.head_dim * 4
    assert bytes_per_token(model, 20) == expected + kv
    assert all(b > 0 for b in gemv_bandwidth(1 << 20, repeats=2))


def test_bad_input_gives_one_clear_line(pair):
    model, _ = pair
    dec = FastDecoder(model, max_seq_len=8)
    with pytest.raises(ValueError, match="exceeds the static cache's max_seq_len 8"):
        dec.generate([1, 2, 3], 10)
    with pytest.raises(ValueError, match=r"max_seq_len must be in \[1, 64\]"):
        FastDecoder(model, max_seq_len=65)
    with pytest.raises(TypeError, match="needs a model.Transformer"):
        FastDecoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="do not fit the static cache"):
        dec.step(torch.tensor([[1]]), 8)
    with pytest.raises(ValueError, match="step_attention must be 'auto', 'sdpa' or 'reduce', got 'flash'"):
        FastDecoder(model, step_attention="flash")
    with pytest.raises(ValueError, match="attention must be 'sdpa' or 'reduce'"):
        dec.forward(torch.tensor([[1]]), torch.tensor([0]), attention="math")


@pytest.mark.slow
def test_compiled_step_equals_eager():
    """torch.compile (inductor, CPU) of the decode step: same logits up to fp rounding, same greedy tokens."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs.preset("tiny", n_layers=1, dim=32, n_heads=2, n_kv_heads=1, vocab_size=64)).eval()
    eager = FastDecoder(model, max_seq_len=24)
    compiled = FastDecoder(model, max_seq_len=24, compile=True)
    prompt = [3, 9, 4]
    assert compiled.step_attention == "reduce" and eager.step_attention == "sdpa"  # "auto" on CPU
    assert compiled.generate(prompt, 16) == eager.generate(prompt, 16)
    assert compiled.compile_seconds is not None and compiled.compile_seconds > 0
    with torch.inference_mode():
        eager.prefill(torch.tensor([prompt]))
        compiled.prefill(torch.tensor([prompt]))
        a = eager.step(torch.tensor([[7]]), 3)
        b = compiled.step(torch.tensor([[7]]), 3)
    assert_close_scaled(b, a, ulps=64, what="compiled vs eager logits")


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}  # fmt: skip
FAMILY_OPTIONS = {
    "llama3 rope + tied": dict(rope_scaling=LLAMA3_ROPE, tie_embeddings=True),
    "qwen2 qkv bias": dict(qkv_bias=True, tie_embeddings=True),
    "qwen3 qk norm + head_dim": dict(qk_norm=True, explicit_head_dim=24),
    "mistral sliding window": dict(sliding_window=5),
}


def _family_model(options, seed=0):
    torch.manual_seed(seed)
    args = ModelArgs.preset("tiny", vocab_size=96, max_seq_len=32, max_batch_size=2, **options)
    model = Transformer(args).eval()
    with torch.no_grad():  # random norms and biases, so a dropped one is visible
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.3 * torch.randn_like(p))
    return model


@pytest.mark.parity
@pytest.mark.parametrize("attention", ["sdpa", "reduce"])
@pytest.mark.parametrize("family", list(FAMILY_OPTIONS))
def test_static_decoder_follows_the_model_families(family, attention):
    """The families' options (checked against transformers in test_llama_families.py) hold in the static path,
    with either attention of the one-token step."""
    from tests.numerics import to_double

    model = _family_model(FAMILY_OPTIONS[family])
    tokens = torch.randint(0, 96, (2, 14), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref32 = model(tokens, use_cache=False)
        ref64 = to_double(model)(tokens, use_cache=False).double()
        dec = FastDecoder(model, batch=2, max_seq_len=20, step_attention=attention)
        chunks = [dec.prefill(tokens[:, :6], last_only=False)] + [
            dec.step(tokens[:, i : i + 1], i) for i in range(6, 14)
        ]
    assert_close_to_fp64(torch.cat(chunks, dim=1), ref64, ref32, what=family)
    dec1 = FastDecoder(model, max_seq_len=30)
    assert dec1.generate([3, 4, 5], 20) == generate(model, [[3, 4, 5]], 20)[0]
