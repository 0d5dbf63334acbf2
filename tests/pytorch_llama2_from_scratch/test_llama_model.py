"""The model against independent references: HF LlamaForCausalLM logits, HF's RoPE, analytic sizes and counts."""

from __future__ import annotations

import pytest
import torch

from pytorch_llama2_from_scratch.loading import args_from_hf_config, hf_to_meta_state_dict
from pytorch_llama2_from_scratch.model import (
    ModelArgs,
    Transformer,
    apply_rotary_emb,
    apply_rotary_emb_half,
    ffn_hidden_dim,
    kv_cache_bytes,
    permute_for_hf,
    precompute_freqs_cis,
    repeat_kv,
    rope_cos_sin,
    unpermute_from_hf,
)

HEADS = {"mha": 4, "gqa": 2, "mqa": 1}


def _ours_from_hf(hf, max_batch_size: int = 4, max_seq_len: int = 64) -> Transformer:
    args = args_from_hf_config(hf.config.to_dict(), max_batch_size=max_batch_size, max_seq_len=max_seq_len)
    model = Transformer(args).eval()
    model.load_state_dict(hf_to_meta_state_dict(hf.state_dict(), args))
    return model


@pytest.fixture(scope="module", params=list(HEADS))
def pair(request, make_hf_llama):
    hf = make_hf_llama(num_key_value_heads=HEADS[request.param], seed=5)
    return hf, _ours_from_hf(hf)


def _tokens(b, t, vocab=96, seed=11):
    return torch.randint(3, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ full forward
@torch.no_grad()
def test_full_forward_matches_hf(pair):
    hf, ours = pair
    tokens = _tokens(3, 40)
    ref = hf(tokens).logits
    torch.testing.assert_close(ours(tokens, use_cache=False), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(tokens), ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ KV cache
@torch.no_grad()
def test_decode_with_cache_matches_full_forward_at_every_position(pair):
    hf, ours = pair
    tokens = _tokens(2, 30)
    ref = hf(tokens).logits
    ours.reset_cache()
    prefill = 6
    torch.testing.assert_close(ours(tokens[:, :prefill]), ref[:, :prefill], atol=1e-5, rtol=1e-5)
    for pos in range(prefill, tokens.shape[1]):
        step = ours(tokens[:, pos : pos + 1], start_pos=pos)  # (B, 1, V)
        torch.testing.assert_close(step[:, 0], ref[:, pos], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_chunked_prefill_equals_one_prefill(pair):
    hf, ours = pair
    tokens = _tokens(2, 33)
    ours.reset_cache()
    whole = ours(tokens)
    ours.reset_cache()
    chunks, start = [], 0
    for size in (7, 1, 12, 13):
        chunks.append(ours(tokens[:, start : start + size], start_pos=start))
        start += size
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-5, rtol=1e-5)
    # and the cache it leaves behind continues exactly like HF
    nxt = _tokens(2, 1, seed=3)
    ref = hf(torch.cat([tokens, nxt], dim=1)).logits[:, -1]
    torch.testing.assert_close(ours(nxt, start_pos=start)[:, 0], ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padded_batch_equals_each_prompt_alone(pair):
    """Left-padded prompts of lengths 12, 5, 9 + three decode steps = each prompt (+ its tokens) run alone in HF."""
    hf, ours = pair
    lengths, steps = [12, 5, 9], 3
    prompts = [_tokens(1, n, seed=20 + i)[0] for i, n in enumerate(lengths)]
    extra = _tokens(len(lengths), steps, seed=99)  # tokens "generated" for every row
    width = max(lengths)
    batch = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width + steps, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    ours.reset_cache()
    logits = ours(batch, attention_mask=mask)  # mask longer than the prompt: extra columns are ignored
    outs = [logits[:, -1]]
    for s in range(steps):
        outs.append(ours(extra[:, s : s + 1], start_pos=width + s, attention_mask=mask)[:, 0])
    for i, p in enumerate(prompts):
        full = torch.cat([p, extra[i]])[None]
        ref = hf(full).logits[0]
        torch.testing.assert_close(logits[i, width - len(p) :], ref[: len(p)], atol=1e-5, rtol=1e-5)
        for s in range(steps + 1):
            torch.testing.assert_close(outs[s][i], ref[len(p) - 1 + s], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padded_batch_chunked_prefill(pair):
    """Left-padded prompts prefilled in chunks give the logits of a single padded prefill."""
    _, ours = pair
    batch = _tokens(2, 14, seed=4)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :9] = 0
    ours.reset_cache()
    whole = ours(batch, attention_mask=mask)
    ours.reset_cache()
    parts = [ours(batch[:, a:b], start_pos=a, attention_mask=mask) for a, b in ((0, 4), (4, 11), (11, 14))]
    real = mask.bool()
    torch.testing.assert_close(torch.cat(parts, dim=1)[real], whole[real], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padded_batch_without_cache_and_explicit_positions(pair):
    hf, ours = pair
    a, b = _tokens(1, 10, seed=1)[0], _tokens(1, 4, seed=2)[0]
    batch = torch.stack([a, torch.cat([torch.zeros(6, dtype=torch.long), b])])
    mask = torch.tensor([[1] * 10, [0] * 6 + [1] * 4])
    out = ours(batch, use_cache=False, attention_mask=mask)
    torch.testing.assert_close(out[1, 6:], hf(b[None]).logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], hf(a[None]).logits[0], atol=1e-5, rtol=1e-5)
    positions = torch.tensor([list(range(10)), [0] * 6 + list(range(4))])
    torch.testing.assert_close(ours(batch, use_cache=False, attention_mask=mask, positions=positions), out)


def test_cache_buffers_follow_the_module(make_hf_llama):
    ours = _ours_from_hf(make_hf_llama(seed=6), max_batch_size=3, max_seq_len=16)
    attn = ours.layers[0].attention
    assert attn.cache_k.shape == (3, 16, 2, 16) and attn.cache_v.shape == (3, 16, 2, 16)
    assert not any("cache" in k for k in ours.state_dict())  # non-persistent: never saved in checkpoints
    with torch.no_grad():
        ours(_tokens(2, 5))
    assert attn.cache_k[:2, :5].abs().sum() > 0 and attn.cache_k[:, 5:].abs().sum() == 0
    ours.reset_cache()
    assert all(layer.attention.cache_v.abs().sum() == 0 for layer in ours.layers)
    ours.to(torch.float64)
    assert attn.cache_k.dtype == torch.float64 and attn.wq.weight.dtype == torch.float64
    assert ours(_tokens(1, 4)).dtype == torch.float32  # logits are always float32


def test_gradients_flow_with_and_without_cache(make_hf_llama):
    ours = _ours_from_hf(make_hf_llama(seed=7))
    tokens = _tokens(2, 8)
    g = {}
    for use_cache in (False, True):
        ours.zero_grad()
        ours(tokens, use_cache=use_cache).logsumexp(-1).sum().backward()
        g[use_cache] = ours.layers[0].attention.wk.weight.grad.clone()
    torch.testing.assert_close(g[True], g[False], atol=1e-5, rtol=1e-5)


def test_forward_errors(make_hf_llama):
    ours = _ours_from_hf(make_hf_llama(seed=8), max_batch_size=2, max_seq_len=16)
    with pytest.raises(ValueError, match="start_pos 10 \\+ sequence length 8 = 18 exceeds max_seq_len 16"):
        ours(_tokens(1, 8), start_pos=10)
    with pytest.raises(ValueError, match="batch size 3 exceeds max_batch_size 2"):
        ours(_tokens(3, 4))
    ours(_tokens(3, 4), use_cache=False)  # no cache, no batch limit
    with pytest.raises(ValueError, match="must cover every cached slot"):
        ours(_tokens(1, 4), start_pos=2, attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="shape \\(batch, seq_len\\)"):
        ours(torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ RoPE
def test_rope_matches_hf_apply_rotary_pos_emb_after_permutation(make_hf_llama):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    hf = make_hf_llama(rope_theta=500.0, seed=9)
    n_heads, n_kv, hd, dim = 4, 2, 16, 64
    x = torch.randn(2, 11, dim)
    wq_hf, wk_hf = torch.randn(n_heads * hd, dim), torch.randn(n_kv * hd, dim)
    position_ids = torch.tensor([list(range(3, 14)), list(range(20, 31))])
    cos, sin = LlamaRotaryEmbedding(hf.config)(x, position_ids)
    q_hf = (x @ wq_hf.T).view(2, 11, n_heads, hd).transpose(1, 2)  # (B, H, T, hd)
    k_hf = (x @ wk_hf.T).view(2, 11, n_kv, hd).transpose(1, 2)
    q_hf_rot, k_hf_rot = apply_rotary_pos_emb(q_hf, k_hf, cos, sin)

    freqs = precompute_freqs_cis(hd, 64, theta=500.0)[position_ids]  # (B, T, hd/2)
    q = (x @ unpermute_from_hf(wq_hf, n_heads).T).view(2, 11, n_heads, hd)
    k = (x @ unpermute_from_hf(wk_hf, n_kv).T).view(2, 11, n_kv, hd)
    q_rot, k_rot = apply_rotary_emb(q, k, freqs)
    # bring our interleaved features into HF's half-split order (the same row permutation as the weights)
    q_as_hf = permute_for_hf(q_rot.reshape(2 * 11, -1).T, n_heads).T.reshape(2, 11, n_heads, hd).transpose(1, 2)
    k_as_hf = permute_for_hf(k_rot.reshape(2 * 11, -1).T, n_kv).T.reshape(2, 11, n_kv, hd).transpose(1, 2)
    torch.testing.assert_close(q_as_hf, q_hf_rot, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_as_hf, k_hf_rot, atol=1e-5, rtol=1e-5)
    # attention scores are invariant to the feature order: q.k equal without any re-ordering
    scores_hf = q_hf_rot @ k_hf_rot.repeat_interleave(2, dim=1).transpose(-1, -2)
    ours_scores = q_rot.transpose(1, 2) @ repeat_kv(k_rot, 2).transpose(1, 2).transpose(-1, -2)
    torch.testing.assert_close(ours_scores, scores_hf, atol=1e-4, rtol=1e-5)
    # our half-split helpers are HF's formulas
    c, s = rope_cos_sin(position_ids, hd, theta=500.0)
    torch.testing.assert_close(apply_rotary_emb_half(q_hf, c[:, None], s[:, None]), q_hf_rot, atol=1e-5, rtol=1e-5)


def test_rope_preserves_norms_and_depends_on_relative_position():
    hd = 32
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)
    table = precompute_freqs_cis(hd, 64)

    def score(m, n):
        qr, _ = apply_rotary_emb(q, q, table[m : m + 1])
        kr, _ = apply_rotary_emb(k, k, table[n : n + 1])
        return (qr * kr).sum()

    torch.testing.assert_close(apply_rotary_emb(q, k, table[7:8])[0].norm(), q.norm())
    torch.testing.assert_close(score(10, 4), score(40, 34), atol=1e-5, rtol=1e-5)  # only m - n matters


def test_permutation_is_the_literal_reordering_and_invertible():
    n_heads, hd, cols = 3, 8, 5
    w = torch.randn(n_heads * hd, cols)
    # literal definition: within each head, HF row j < hd/2 is Meta row 2j and HF row hd/2 + j is Meta row 2j + 1
    index = [h * hd + 2 * j + half for h in range(n_heads) for half in (0, 1) for j in range(hd // 2)]
    torch.testing.assert_close(permute_for_hf(w, n_heads), w[index])
    torch.testing.assert_close(unpermute_from_hf(permute_for_hf(w, n_heads), n_heads), w)
    torch.testing.assert_close(permute_for_hf(unpermute_from_hf(w, n_heads), n_heads), w)
    with pytest.raises(ValueError, match="cannot permute"):
        permute_for_hf(torch.randn(10, 4), 3)


# ------------------------------------------------------------------------------------------------ sizes
def test_kv_cache_bytes_formula_and_measured_allocation():
    # Llama-2 7B, one 4096-token sequence in fp16: 2 * 32 layers * 4096 * 4096 features * 2 bytes = 2 GiB
    assert kv_cache_bytes(ModelArgs.preset("llama2-7b"), 1, 4096, torch.float16) == 2 * 2**30
    # 70B: 80 layers, 8 KV heads of 128 -> 2 * 80 * 1024 * 2 bytes = 320 KiB per token
    assert kv_cache_bytes(ModelArgs.preset("llama2-70b"), 1, 1, torch.float16) == 327_680
    args = ModelArgs.preset("tiny", max_batch_size=3, max_seq_len=40)
    model = Transformer(args)
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        measured = sum(
            b.untyped_storage().nbytes() for n, b in model.named_buffers() if n.endswith(("cache_k", "cache_v"))
        )
        assert measured == kv_cache_bytes(args, 3, 40, dtype) == model.cache_nbytes()
    with pytest.raises(ValueError, match="batch and context"):
        kv_cache_bytes(args, 0, 10)


def _hf_param_count(**config) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_hf_configs():
    args7 = ModelArgs.preset("llama2-7b")
    assert args7.num_params() == _hf_param_count()  # LlamaConfig() defaults are Llama-2 7B
    assert abs(args7.num_params() / 1e9 - 6.74) < 0.005
    args70 = ModelArgs.preset("llama2-70b")
    hf70 = _hf_param_count(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8
    )
    assert args70.num_params() == hf70
    tiny = ModelArgs.preset("tiny")
    assert Transformer(tiny).num_params() == tiny.num_params()


def test_swiglu_hidden_size_rule():
    # intermediate_size of the published Llama-2 HF configs
    assert ffn_hidden_dim(4096, 256) == 11008
    assert ffn_hidden_dim(5120, 256) == 13824
    assert ffn_hidden_dim(8192, 4096, 1.3) == 28672
    assert ModelArgs.preset("llama2-13b").ffn_hidden == 13824
    assert ModelArgs(dim=64, n_heads=4, n_layers=1, hidden_dim=100).ffn_hidden == 100


def test_model_args_validation():
    assert ModelArgs(n_heads=8, dim=64).n_kv_heads == 8
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        ModelArgs(dim=100, n_heads=3)
    with pytest.raises(ValueError, match="not divisible by n_kv_heads 3"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="must be even"):
        ModelArgs(dim=12, n_heads=4)
    with pytest.raises(ValueError, match="n_layers must be a positive integer"):
        ModelArgs(n_layers=0)
    with pytest.raises(ValueError, match="unknown preset 'llama3'"):
        ModelArgs.preset("llama3")
    with pytest.raises(ValueError, match="unknown ModelArgs field"):
        ModelArgs.preset("tiny", n_layer=3)
