"""The model against independent references: HF LlamaForCausalLM logits, HF's RoPE, analytic sizes and counts.

Logits are compared with ``tests.numerics.assert_close_to_fp64``: against HF's model run in float64, allowing a
multiple of HF's own fp32 error on the same tokens (the suite's tolerance policy, ``tests/README.md``).
"""

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
from tests.numerics import assert_close_scaled, assert_close_to_fp64, to_double

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
@pytest.mark.parity
@torch.no_grad()
def test_full_forward_matches_hf(pair, hf_ref):
    hf, ours = pair
    tokens = _tokens(3, 40)
    ref64, ref32 = hf_ref(hf, tokens)
    assert_close_to_fp64(ours(tokens, use_cache=False), ref64, ref32, what="no cache")
    assert_close_to_fp64(ours(tokens), ref64, ref32, what="with cache")


# ------------------------------------------------------------------------------------------------ KV cache
@pytest.mark.parity
@torch.no_grad()
def test_decode_with_cache_matches_full_forward_at_every_position(pair, hf_ref):
    hf, ours = pair
    tokens = _tokens(2, 30)
    ref64, ref32 = hf_ref(hf, tokens)
    ours.reset_cache()
    prefill = 6
    assert_close_to_fp64(ours(tokens[:, :prefill]), ref64[:, :prefill], ref32[:, :prefill], what="prefill")
    for pos in range(prefill, tokens.shape[1]):
        step = ours(tokens[:, pos : pos + 1], start_pos=pos)  # (B, 1, V)
        assert_close_to_fp64(step[:, 0], ref64[:, pos], ref32[:, pos], what=f"decode at position {pos}")


@pytest.mark.parity
@torch.no_grad()
def test_chunked_prefill_equals_one_prefill(pair, hf_ref):
    hf, ours = pair
    tokens = _tokens(2, 33)
    nxt = _tokens(2, 1, seed=3)
    ref64, ref32 = hf_ref(hf, torch.cat([tokens, nxt], dim=1))
    ours.reset_cache()
    whole = ours(tokens)
    ours.reset_cache()
    chunks, start = [], 0
    for size in (7, 1, 12, 13):
        chunks.append(ours(tokens[:, start : start + size], start_pos=start))
        start += size
    assert_close_to_fp64(whole, ref64[:, :-1], ref32[:, :-1], what="one prefill")
    assert_close_to_fp64(torch.cat(chunks, dim=1), ref64[:, :-1], ref32[:, :-1], what="chunked prefill")
    # and the cache it leaves behind continues exactly like HF
    assert_close_to_fp64(ours(nxt, start_pos=start)[:, 0], ref64[:, -1], ref32[:, -1], what="next token")


@pytest.mark.parity
@torch.no_grad()
def test_padded_batch_equals_each_prompt_alone(pair, hf_ref):
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
        r64, r32 = (r[0] for r in hf_ref(hf, full))
        assert_close_to_fp64(logits[i, width - len(p) :], r64[: len(p)], r32[: len(p)], what=f"prompt {i}")
        for s in range(steps + 1):
            j = len(p) - 1 + s
            assert_close_to_fp64(outs[s][i], r64[j], r32[j], what=f"row {i} step {s}")


@pytest.mark.parity
@torch.no_grad()
def test_padded_batch_chunked_prefill(pair, hf_ref):
    """Left-padded prompts prefilled in chunks give the logits of a single padded prefill (= each row alone)."""
    hf, ours = pair
    batch = _tokens(2, 14, seed=4)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :9] = 0
    ours.reset_cache()
    whole = ours(batch, attention_mask=mask)
    ours.reset_cache()
    parts = [ours(batch[:, a:b], start_pos=a, attention_mask=mask) for a, b in ((0, 4), (4, 11), (11, 14))]
    chunked = torch.cat(parts, dim=1)
    for row, first in ((0, 0), (1, 9)):  # row 1 is padded: its real tokens start at column 9
        r64, r32 = (r[0] for r in hf_ref(hf, batch[row : row + 1, first:]))
        assert_close_to_fp64(whole[row, first:], r64, r32, what=f"one prefill, row {row}")
        assert_close_to_fp64(chunked[row, first:], r64, r32, what=f"chunked prefill, row {row}")


@pytest.mark.parity
@torch.no_grad()
def test_padded_batch_without_cache_and_explicit_positions(pair, hf_ref):
    hf, ours = pair
    a, b = _tokens(1, 10, seed=1)[0], _tokens(1, 4, seed=2)[0]
    batch = torch.stack([a, torch.cat([torch.zeros(6, dtype=torch.long), b])])
    mask = torch.tensor([[1] * 10, [0] * 6 + [1] * 4])
    out = ours(batch, use_cache=False, attention_mask=mask)
    b64, b32 = (r[0] for r in hf_ref(hf, b[None]))
    a64, a32 = (r[0] for r in hf_ref(hf, a[None]))
    assert_close_to_fp64(out[1, 6:], b64, b32, what="padded row")
    assert_close_to_fp64(out[0], a64, a32, what="full row")
    # the positions the model derives from the mask are exactly these: same computation, bit-identical result
    positions = torch.tensor([list(range(10)), [0] * 6 + list(range(4))])
    assert torch.equal(ours(batch, use_cache=False, attention_mask=mask, positions=positions), out)


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


@pytest.mark.parity
def test_gradients_flow_with_and_without_cache(make_hf_llama):
    """d(sum logsumexp logits)/d wk of layer 0 equals HF's k_proj gradient (un-permuted), with and without cache."""
    hf = make_hf_llama(seed=7)
    ours = _ours_from_hf(hf)
    tokens = _tokens(2, 8)
    ref = {}
    for name, model in (("64", to_double(hf)), ("32", hf)):
        model.zero_grad()
        model(tokens).logits.logsumexp(-1).sum().backward()
        ref[name] = unpermute_from_hf(model.model.layers[0].self_attn.k_proj.weight.grad, 2)
    hf.zero_grad()
    for use_cache in (False, True):
        ours.zero_grad()
        ours(tokens, use_cache=use_cache).logsumexp(-1).sum().backward()
        grad = ours.layers[0].attention.wk.weight.grad
        assert_close_to_fp64(grad, ref["64"], ref["32"], what=f"wk gradient, use_cache={use_cache}")


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
def _half_split_rope64(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Independent float64 reference of HF's convention: pairs (x_i, x_{i+hd/2}) rotated by m * theta^(-2i/hd).
    x: (B, H, T, hd), positions: (B, T)."""
    hd = x.shape[-1]
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = positions[:, None, :, None].double() * inv  # (B, 1, T, hd/2)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat((x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()), dim=-1)


@pytest.mark.parity
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
    x64 = x.double()
    q64 = _half_split_rope64((x64 @ wq_hf.double().T).view(2, 11, n_heads, hd).transpose(1, 2), position_ids, 500)
    k64 = _half_split_rope64((x64 @ wk_hf.double().T).view(2, 11, n_kv, hd).transpose(1, 2), position_ids, 500)

    freqs = precompute_freqs_cis(hd, 64, theta=500.0)[position_ids]  # (B, T, hd/2)
    q = (x @ unpermute_from_hf(wq_hf, n_heads).T).view(2, 11, n_heads, hd)
    k = (x @ unpermute_from_hf(wk_hf, n_kv).T).view(2, 11, n_kv, hd)
    q_rot, k_rot = apply_rotary_emb(q, k, freqs)
    # bring our interleaved features into HF's half-split order (the same row permutation as the weights)
    q_as_hf = permute_for_hf(q_rot.reshape(2 * 11, -1).T, n_heads).T.reshape(2, 11, n_heads, hd).transpose(1, 2)
    k_as_hf = permute_for_hf(k_rot.reshape(2 * 11, -1).T, n_kv).T.reshape(2, 11, n_kv, hd).transpose(1, 2)
    assert_close_to_fp64(q_as_hf, q64, q_hf_rot, what="rotated q")
    assert_close_to_fp64(k_as_hf, k64, k_hf_rot, what="rotated k")
    # attention scores are invariant to the feature order: q.k equal without any re-ordering
    scores64 = q64 @ k64.repeat_interleave(2, dim=1).transpose(-1, -2)
    scores_hf = q_hf_rot @ k_hf_rot.repeat_interleave(2, dim=1).transpose(-1, -2)
    ours_scores = q_rot.transpose(1, 2) @ repeat_kv(k_rot, 2).transpose(1, 2).transpose(-1, -2)
    assert_close_to_fp64(ours_scores, scores64, scores_hf, what="scores")
    # our half-split helpers are HF's formulas
    c, s = rope_cos_sin(position_ids, hd, theta=500.0)
    assert_close_to_fp64(apply_rotary_emb_half(q_hf, c[:, None], s[:, None]), q64, q_hf_rot, what="half-split")


def test_rope_preserves_norms_and_depends_on_relative_position():
    hd = 32
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)
    table = precompute_freqs_cis(hd, 64)

    def score(m, n):
        qr, _ = apply_rotary_emb(q, q, table[m : m + 1])
        kr, _ = apply_rotary_emb(k, k, table[n : n + 1])
        return (qr * kr).sum()

    # a rotation keeps the norm; the angles of position 40 carry ~40 ulp of rounding, hence the scaled bounds
    assert_close_scaled(apply_rotary_emb(q, k, table[7:8])[0].norm(), q.norm(), ulps=64)
    assert_close_scaled(score(10, 4), score(40, 34), ulps=2048, dtype=torch.float32)  # only m - n matters
    assert abs(float(score(10, 4) - score(10, 5))) > 1e-2  # ... and m - n does matter


def test_permutation_is_the_literal_reordering_and_invertible():
    n_heads, hd, cols = 3, 8, 5
    w = torch.randn(n_heads * hd, cols)
    # literal definition: within each head, HF row j < hd/2 is Meta row 2j and HF row hd/2 + j is Meta row 2j + 1
    index = [h * hd + 2 * j + half for h in range(n_heads) for half in (0, 1) for j in range(hd // 2)]
    assert torch.equal(permute_for_hf(w, n_heads), w[index])  # a reordering: exact
    assert torch.equal(unpermute_from_hf(permute_for_hf(w, n_heads), n_heads), w)
    assert torch.equal(permute_for_hf(unpermute_from_hf(w, n_heads), n_heads), w)
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
