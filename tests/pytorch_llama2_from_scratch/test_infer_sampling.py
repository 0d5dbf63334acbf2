"""Samplers: our processed distributions equal those of the ``transformers`` logits processors; bad input raises."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pytorch_llama2_from_scratch import sampling as S
from tests.numerics import assert_close_to_fp64

B, V = 4, 97


@pytest.fixture
def logits():
    # tie-free: a random permutation of distinct values, scaled so that the filters cut somewhere interesting
    rows = [torch.randperm(V).float() * 0.07 + torch.rand(V) * 0.01 for _ in range(B)]
    return torch.stack(rows) - 3.0


@pytest.fixture
def previous_ids():
    return torch.randint(0, V, (B, 12))


def hf_processed(processors, logits: torch.Tensor, ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The HF processor chain applied in float64 (the reference) and in fp32 (its own rounding error)."""
    out = []
    for dtype in (torch.float64, torch.float32):
        z = logits.to(dtype)
        for proc in processors:
            z = proc(ids, z.clone())
        out.append(z)
    return out[0], out[1]


def assert_same_distribution(ours: torch.Tensor, processors, logits: torch.Tensor, ids=None) -> None:
    """Same support (the -inf pattern) as HF's processors, and the same renormalised log-probabilities on it,
    compared with the suite's policy (against HF in float64, allowing a multiple of HF's own fp32 error)."""
    theirs64, theirs32 = hf_processed(processors, logits, ids)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs64))
    assert torch.equal(torch.isinf(theirs32), torch.isinf(theirs64))
    keep = ~torch.isinf(ours)
    assert_close_to_fp64(
        F.log_softmax(ours, -1)[keep], F.log_softmax(theirs64, -1)[keep], F.log_softmax(theirs32, -1)[keep]
    )


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_matches_hf(logits, t):
    assert_same_distribution(S.apply_temperature(logits, t), [TemperatureLogitsWarper(t)], logits)


@pytest.mark.parametrize("k", [1, 5, 40, V, V + 10])
def test_top_k_matches_hf(logits, k):
    ours = S.top_k_filter(logits, k)
    assert_same_distribution(ours, [TopKLogitsWarper(k)], logits)
    assert (~torch.isinf(ours)).sum(-1).tolist() == [min(k, V)] * B


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 1.0])
def test_top_p_matches_hf(logits, p):
    ours = S.top_p_filter(logits, p)
    assert_same_distribution(ours, [TopPLogitsWarper(p)], logits)
    # the survivors hold at least p of the probability mass
    kept_mass = (logits.softmax(-1) * (~torch.isinf(ours))).sum(-1)
    assert (kept_mass >= p - 1e-6).all()


@pytest.mark.parametrize("m", [0.0, 0.1, 0.6, 1.0])
def test_min_p_matches_hf(logits, m):
    assert_same_distribution(S.min_p_filter(logits, m), [MinPLogitsWarper(m)], logits)


@pytest.mark.parametrize("penalty", [0.7, 1.3])
def test_repetition_penalty_matches_hf(logits, previous_ids, penalty):
    ours = S.apply_repetition_penalty(logits, previous_ids, penalty)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(previous_ids, logits.clone())
    assert torch.equal(ours, theirs)  # one multiplication or division per logit: exact


def test_repetition_penalty_ignores_left_padding(logits, previous_ids):
    pad = 3
    mask = torch.ones_like(previous_ids)
    mask[:, :pad] = 0
    ours = S.apply_repetition_penalty(logits, previous_ids, 1.5, previous_mask=mask)
    theirs = RepetitionPenaltyLogitsProcessor(1.5)(previous_ids[:, pad:], logits.clone())
    assert torch.equal(ours, theirs)


def test_pipeline_matches_hf_chain(logits, previous_ids):
    """Repetition penalty -> temperature -> top-k -> top-p -> min-p, in HF's order."""
    cfg = S.SamplingConfig(do_sample=True, temperature=0.7, top_k=30, top_p=0.8, min_p=0.02, repetition_penalty=1.2)
    chain = [
        RepetitionPenaltyLogitsProcessor(1.2),
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(30),
        TopPLogitsWarper(0.8),
        MinPLogitsWarper(0.02),
    ]
    assert_same_distribution(S.process_logits(logits, cfg, previous_ids), chain, logits, previous_ids)


def test_greedy_and_sampling_frequencies(logits):
    assert torch.equal(S.greedy(logits), logits.argmax(-1))
    # top-k 1 sampling is greedy; sampling frequencies follow softmax(z) (checked loosely on a 3-token vocab)
    cfg = S.SamplingConfig.from_strategy("top_k", top_k=1)
    assert torch.equal(S.next_token(logits, cfg), logits.argmax(-1))
    z = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    counts = torch.bincount(S.sample(z, torch.Generator().manual_seed(0)), minlength=3).float() / 20000
    # a statistical bound, not a rounding one: 0.015 is > 4 standard deviations sqrt(p(1-p)/n) <= 0.0036
    assert (counts - z[0].softmax(-1)).abs().max() < 0.015


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda z: S.apply_temperature(z, 0.0), "temperature must be a finite number > 0"),
        (lambda z: S.apply_temperature(z, -1.0), "temperature must be a finite number > 0"),
        (lambda z: S.top_k_filter(z, 0), "top_k must be an integer >= 1"),
        (lambda z: S.top_k_filter(z, 2.5), "top_k must be an integer >= 1"),
        (lambda z: S.top_p_filter(z, 0.0), r"top_p must be in \(0, 1\]"),
        (lambda z: S.top_p_filter(z, 1.5), r"top_p must be in \(0, 1\]"),
        (lambda z: S.min_p_filter(z, -0.1), r"min_p must be in \[0, 1\]"),
        (lambda z: S.min_p_filter(z, 1.1), r"min_p must be in \[0, 1\]"),
        (lambda z: S.apply_repetition_penalty(z, torch.zeros(B, 1, dtype=torch.long), 0.0), "repetition_penalty"),
        (lambda z: S.greedy(z[0]), r"shape \(batch, vocab\)"),
        (lambda z: S.SamplingConfig(do_sample=True, temperature=0), "temperature must be a finite number > 0"),
        (lambda z: S.SamplingConfig.from_strategy("top_p", top_p=2.0), "top_p"),
        (lambda z: S.SamplingConfig.from_strategy("nucleus"), "unknown strategy 'nucleus'"),
        (lambda z: S.check_num_beams(0), "num_beams must be an integer >= 1"),
    ],
)
def test_invalid_parameters_raise(logits, call, match):
    with pytest.raises(ValueError, match=match):
        call(logits)


def test_greedy_ignores_temperature():
    # temperature is irrelevant without sampling, so greedy with the default config is always valid
    assert not S.SamplingConfig.from_strategy("greedy", temperature=0.0).do_sample
