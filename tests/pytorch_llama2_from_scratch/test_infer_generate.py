"""generate / beam_search against Hugging Face ``LlamaForCausalLM.generate`` on a tiny random model.

The reference model comes from the chapter conftest (random weights, ``initializer_range=0.2``), is saved with
``save_pretrained`` and loaded with our HF loader, so both sides hold the same weights.
"""

import pytest
import torch

from pytorch_llama2_from_scratch.generate import beam_search, generate, left_pad, stream_generate
from pytorch_llama2_from_scratch.loading import load_hf_checkpoint
from pytorch_llama2_from_scratch.sampling import SamplingConfig
from tests.numerics import assert_close_to_fp64, to_double

PAD = 0
PROMPTS = [[1, 17, 42, 5], [1, 8], [1, 60, 33, 21, 9, 70, 11], [1, 3, 90]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, make_hf_llama):
    """(ours, hf) with identical weights; our cache holds 8 rows of 64 slots."""
    hf = make_hf_llama(seed=11)
    directory = tmp_path_factory.mktemp("hf_gen")
    hf.save_pretrained(directory)
    ours, _ = load_hf_checkpoint(directory, max_batch_size=8)
    return ours, hf


def hf_generate(hf, prompt, n, eos=None, **kwargs):
    """``LlamaForCausalLM.generate`` for one unpadded prompt, deterministic (no sampling)."""
    ids = torch.tensor([prompt])
    return hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=PAD,
        **kwargs,
    )


def hf_greedy(hf, prompt, n, eos=None):
    return hf_generate(hf, prompt, n, eos)[0, len(prompt) :].tolist()


def test_greedy_matches_hf(pair):
    ours, hf = pair
    got = generate(ours, PROMPTS, max_new_tokens=12)  # one padded batch
    for prompt, row in zip(PROMPTS, got):
        assert row == hf_greedy(hf, prompt, 12)


def test_padded_batch_equals_each_prompt_alone(pair):
    ours, _ = pair
    cfg = SamplingConfig(repetition_penalty=1.3)  # greedy + a penalty that reads the (padded) history
    batch = generate(ours, PROMPTS, max_new_tokens=10, sampling=cfg)
    alone = [generate(ours, [p], max_new_tokens=10, sampling=cfg)[0] for p in PROMPTS]
    assert batch == alone
    # and the slow path (no KV cache, full re-forward every step) picks the same tokens
    assert generate(ours, PROMPTS, max_new_tokens=10, sampling=cfg, use_cache=False) == batch


@pytest.mark.parity
def test_padded_batch_logits_equal_hf_padded_batch(pair):
    """Our prefill on a left-padded batch gives HF's padded-batch logits at every real token.

    Reference: HF in float64 on each prompt alone (HF's eager attention turns fully masked padding rows into NaN
    in float64, which its zero attention weights then spread), its fp32 padded batch giving the rounding scale."""
    ours, hf = pair
    tokens, mask, positions = left_pad(PROMPTS, PAD)
    hf64 = to_double(hf)
    with torch.no_grad():
        got = ours(tokens, attention_mask=mask, positions=positions)
        ref32 = hf(tokens, attention_mask=mask).logits
        ref64 = torch.zeros_like(ref32, dtype=torch.float64)
        for i, p in enumerate(PROMPTS):
            ref64[i, tokens.shape[1] - len(p) :] = hf64(torch.tensor([p])).logits[0]
    real = mask.bool()
    assert_close_to_fp64(got[real], ref64[real], ref32[real])


def test_sampling_is_reproducible_and_batch_independent_of_cache(pair):
    ours, _ = pair
    cfg = SamplingConfig.from_strategy("top_p", temperature=0.9, top_p=0.8)
    a = generate(ours, PROMPTS, 8, cfg, generator=torch.Generator().manual_seed(5))
    b = generate(ours, PROMPTS, 8, cfg, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert a == b and all(len(r) == 8 for r in a)


def test_each_sequence_stops_at_its_own_eos(pair):
    ours, hf = pair
    free = generate(ours, PROMPTS, max_new_tokens=12)
    # an EOS that one row emits early and the others later or never
    eos = free[0][2]
    got = generate(ours, PROMPTS, max_new_tokens=12, eos_id=eos)
    for row_free, row in zip(free, got):
        if eos in row_free:
            cut = row_free.index(eos) + 1
            assert row == row_free[:cut]  # stops right after its own EOS, EOS included
        else:
            assert row == row_free
    assert len(got[0]) == 3 and len({len(r) for r in got}) > 1
    for prompt, row in zip(PROMPTS, got):
        assert row == hf_greedy(hf, prompt, 12, eos=eos)[: len(row)]


def test_streaming_yields_tokens_as_they_come(pair):
    ours, _ = pair
    seen = []
    out = generate(ours, PROMPTS[:2], 5, on_token=lambda row, tok: seen.append((row, tok)))
    assert [t for r, t in seen if r == 0] == out[0] and [t for r, t in seen if r == 1] == out[1]
    steps = list(stream_generate(ours, PROMPTS[:2], 5))
    assert len(steps) == 5 and torch.stack(steps).T.tolist() == out


def _liked_token(hf, prompt, n):
    """A token the model produces after a few steps: as EOS it makes beams actually finish early."""
    free = hf_greedy(hf, prompt, n)
    return free[min(3, n - 1)]


@pytest.mark.parametrize(
    "num_beams, length_penalty, early_stopping",
    [(3, 1.0, False), (4, 0.5, True), (3, 1.0, "never"), (3, 0.0, "never"), (2, -1.0, False)],
)
def test_beam_search_matches_hf(pair, num_beams, length_penalty, early_stopping):
    ours, hf = pair
    prompt, n = PROMPTS[0], 10
    eos = _liked_token(hf, prompt, n)
    ref = hf_generate(
        hf,
        prompt,
        n,
        eos,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        return_dict_in_generate=True,
        output_scores=True,
    )
    hyps = beam_search(ours, prompt, num_beams, n, eos, length_penalty, early_stopping)
    assert len(hyps) == ref.sequences.shape[0] == num_beams
    for h, row in zip(hyps, ref.sequences.tolist()):
        end = len(prompt) + len(h.tokens)
        assert row[:end] == prompt + h.tokens
        assert set(row[end:]) <= {PAD, eos}  # HF fills finished rows up to the longest one
    # scores: sum log p(token) / n ** length_penalty, recomputed from HF's model in float64 (the reference);
    # HF's own fp32 beam scores give the scale of fp32 rounding
    hf64 = to_double(hf)
    ref64 = []
    for h in hyps:
        seq = torch.tensor([prompt + h.tokens])
        with torch.no_grad():
            logp = hf64(seq).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        ref64.append(float(logp.gather(-1, seq[0, len(prompt) :, None]).sum()) / len(h.tokens) ** length_penalty)
    ours_scores = torch.tensor([h.score for h in hyps])
    assert_close_to_fp64(ours_scores, torch.tensor(ref64, dtype=torch.float64), ref.sequences_scores)
    # the EOS really occurred: at least one returned hypothesis ended on it
    assert any(h.tokens[-1] == eos for h in hyps)


def test_one_beam_is_greedy(pair):
    ours, hf = pair
    eos = _liked_token(hf, PROMPTS[1], 10)
    (hyp,) = beam_search(ours, PROMPTS[1], 1, 10, eos)
    assert hyp.tokens == hf_greedy(hf, PROMPTS[1], 10, eos=eos)
    # the score is the mean log-probability of the tokens (length_penalty 1), from HF's logits (float64 / fp32)
    seq = torch.tensor([PROMPTS[1] + hyp.tokens])
    refs = []
    for model in (to_double(hf), hf):
        with torch.no_grad():
            logp = model(seq).logits[0, len(PROMPTS[1]) - 1 : -1].log_softmax(-1)
        refs.append(logp.gather(-1, seq[0, len(PROMPTS[1]) :, None]).mean())
    assert_close_to_fp64(torch.tensor(hyp.score), refs[0], refs[1])


def test_beam_search_without_cache_is_the_same(pair):
    ours, hf = pair
    eos = _liked_token(hf, PROMPTS[2], 8)
    a = beam_search(ours, PROMPTS[2], 3, 8, eos)
    b = beam_search(ours, PROMPTS[2], 3, 8, eos, use_cache=False)
    assert [h.tokens for h in a] == [h.tokens for h in b]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: beam_search(m, [1, 2], 0, 5), "num_beams must be an integer >= 1"),
        (lambda m: beam_search(m, [1, 2], 9, 5), "exceeds the KV cache's max_batch_size 8"),
        (lambda m: beam_search(m, [1, 2], 2, 5, early_stopping="sometimes"), "early_stopping"),
        (lambda m: generate(m, [[1] * 60], 10), "70 tokens exceeds the model's max_seq_len 64"),
        (lambda m: generate(m, [[1]] * 9, 2), "batch of 9 sequences exceeds"),
        (lambda m: generate(m, [[1], []], 2), "every prompt needs at least one token"),
        (lambda m: generate(m, [1, 2, 3], 2), "list of token-id lists"),
        (lambda m: generate(m, [[1]], 2, SamplingConfig(do_sample=True, temperature=0.0)), "temperature"),
    ],
)
def test_bad_input_raises_clear_errors(pair, call, match):
    with pytest.raises(ValueError, match=match):
        call(pair[0])


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.9),
        dict(temperature=0.7, top_k=20),
        dict(temperature=1.0, top_p=0.8),
        dict(temperature=0.8, min_p=0.1),
        dict(temperature=1.3, top_k=30, top_p=0.9, repetition_penalty=1.2),
    ],
    ids=["temperature", "top_k", "top_p", "min_p", "chain"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_generate_equals_hf_sampling_under_the_same_seed(pair, settings, seed):
    """HF ``generate(do_sample=True)`` draws one ``torch.multinomial`` per step from the global RNG, in the same
    order as ours (``generator=None``): with the same seed and the same processed distribution the tokens are
    equal, token for token. (Ours and HF's probabilities may differ by a few ulps; a draw would have to land
    within those ulps of a cumulative-probability boundary to differ, about 1e-6 per step.)"""
    ours, hf = pair
    prompt, n = PROMPTS[0], 16
    cfg = SamplingConfig(do_sample=True, **settings)
    torch.manual_seed(seed)
    got = generate(ours, [prompt], n, cfg)[0]
    torch.manual_seed(seed)
    ids = torch.tensor([prompt])
    hf_settings = {"top_k": 0, "top_p": 1.0, **settings}  # HF's defaults would add top_k=50
    ref = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=True, pad_token_id=PAD, **hf_settings
    )
    assert got == ref[0, len(prompt) :].tolist()
