"""Sampling: reproducible with a seeded generator, top-k only ever emits one of torch.topk's tokens."""

import math

import pytest
import torch

from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.sampling import generate, generate_text, sample_next

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: see conftest.py


def _model():
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=300)).eval()


def test_same_seed_same_tokens_different_seed_different_tokens():
    model = _model()
    idx = torch.randint(0, 300, (3, 4))
    runs = [generate(model, idx, 20, top_k=50, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert runs[0].shape == (3, 24)
    assert torch.equal(runs[0][:, :4], idx)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_top_k_never_emits_a_token_outside_torch_topk():
    logits = torch.randn(64, 300)
    allowed = torch.topk(logits, 5, dim=-1).indices
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        tok = sample_next(logits, top_k=5, generator=gen)  # (64, 1)
        assert (tok == allowed).any(dim=-1).all()


def test_generate_top_k_tokens_are_in_the_models_topk():
    model = _model()
    idx = torch.randint(0, 300, (4, 3))
    out = generate(model, idx, 25, top_k=3, generator=torch.Generator().manual_seed(1))  # crosses block_size 16
    with torch.no_grad():
        for t in range(3, out.size(1)):
            context = out[:, max(0, t - 16) : t]
            allowed = torch.topk(model(context)[0][:, -1], 3, dim=-1).indices
            assert (out[:, t : t + 1] == allowed).any(dim=-1).all()


def test_top_k_1_is_greedy_and_sampling_matches_softmax():
    logits = torch.randn(8, 50)
    assert torch.equal(sample_next(logits, top_k=1).squeeze(1), logits.argmax(-1))
    # Without top-k the empirical frequencies follow softmax(logits / temperature).
    row = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(row.expand(2000, 4), top_k=None, temperature=2.0, generator=gen) for _ in range(5)])
    freq = torch.bincount(draws.flatten(), minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, torch.softmax(row[0] / 2.0, -1), atol=0.01, rtol=0)


def test_sampling_errors():
    with pytest.raises(ValueError, match="temperature"):
        sample_next(torch.randn(1, 10), temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(torch.randn(1, 10), top_k=11)


def test_generate_text_reproducible(gpt2_enc):
    model = GPT(GPTConfig.preset("tiny")).eval()
    a = generate_text(model, gpt2_enc, "Hello, I'm a language model,", num_return_sequences=2, max_length=12, seed=3)
    b = generate_text(model, gpt2_enc, "Hello, I'm a language model,", num_return_sequences=2, max_length=12, seed=3)
    assert a == b and len(a) == 2
    assert all(t.startswith("Hello, I'm a language model,") for t in a)


def _frequencies(logits_row, n, **kw):
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits_row.expand(n, -1), generator=gen, **kw).flatten()
    return torch.bincount(draws, minlength=logits_row.size(-1)).double() / n


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_top_k_distribution_is_the_renormalised_softmax_with_temperature(temperature):
    """Inside the top k the frequencies follow exp(l_i / tau) / sum_{j in top k} exp(l_j / tau), computed here
    independently (sorted by hand, float64). Uniform sampling among the k best, or ignoring the temperature on
    the top-k path, is many standard errors away at n = 40,000."""
    logits = torch.tensor([[3.0, -1.0, 2.0, 0.5, 1.0, -2.0, 2.5, 0.0]])
    k, n = 4, 40_000
    order = sorted(range(8), key=lambda i: -logits[0, i].item())[:k]  # the k largest logits
    expected = torch.zeros(8, dtype=torch.float64)
    weights = torch.tensor([math.exp(logits[0, i].item() / temperature) for i in order], dtype=torch.float64)
    expected[order] = weights / weights.sum()
    freq = _frequencies(logits[0], n, top_k=k, temperature=temperature)
    sigma = torch.sqrt(expected * (1 - expected) / n)  # binomial standard error per token
    assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-12), (freq, expected)
    uniform = torch.zeros(8, dtype=torch.float64)
    uniform[order] = 1 / k
    assert (uniform - expected).abs().max() > 20 * sigma.max()  # the test can tell uniform from the truth


def test_temperature_changes_the_top_k_distribution():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -5.0])
    cold, hot = (_frequencies(logits, 20_000, top_k=3, temperature=t) for t in (0.5, 4.0))
    assert cold[0] > 0.8 and hot[0] < 0.5 and cold[3:].sum() == hot[3:].sum() == 0
