"""Speculative decoding (speculative.py): greedy equals plain greedy; sampling has the target's distribution."""

from __future__ import annotations

import math

import pytest
import torch

from pytorch_llama2_from_scratch.fast_decode import FastDecoder
from pytorch_llama2_from_scratch.generate import generate
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer
from pytorch_llama2_from_scratch.speculative import accept_reject, speculative_generate


def _model(seed, vocab=64, layers=2, dim=32, logit_scale=1.0):
    torch.manual_seed(seed)
    args = ModelArgs.preset("tiny", dim=dim, n_layers=layers, n_heads=2, n_kv_heads=1, vocab_size=vocab)
    model = Transformer(args).eval()
    with torch.no_grad():
        model.output.weight.mul_(logit_scale)
    return model


def _perturbed(model, scale, seed):
    """A draft that agrees with the target often but not always: the target's weights plus noise."""
    draft = _model(0, vocab=model.args.vocab_size, layers=model.args.n_layers, dim=model.args.dim)
    draft.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return draft


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Upper quantile of chi-square(df) by Wilson-Hilferty; z = 3.719 is the standard normal's 0.9999 quantile."""
    a = 2.0 / (9.0 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over cells with an expected count >= 5 (the rest pooled into one cell)."""
    n = counts.sum()
    expected = n * probs
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return stat, int(keep.sum()) - 1


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_equals_plain_greedy_over_many_prompts(k):
    target = _model(1, logit_scale=20.0)
    drafts = {"noisy copy": _perturbed(target, 0.3, seed=k), "same model": target}
    g = torch.Generator().manual_seed(k)
    rates = {}
    for name, draft in drafts.items():
        accepted = drafted = 0
        for _ in range(4):
            prompt = torch.randint(0, 64, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
            ours, stats = speculative_generate(target, draft, prompt, 16, k=k)
            assert ours == generate(target, [prompt], 16)[0], (name, prompt)  # token for token
            assert stats.new_tokens == 16 and 1 <= stats.tokens_per_target_forward <= k + 1
            accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
        rates[name] = accepted / drafted
    assert rates["same model"] == 1.0  # every proposal is the target's own argmax
    assert 0 < rates["noisy copy"] < 1  # both the accept and the reject branch were exercised


def test_accept_reject_emits_the_target_distribution():
    """One position: draft proposes d ~ q; the emitted first token must be distributed as p (chi-square)."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(2, 6, generator=g), -1)
    q = torch.softmax(2 * torch.randn(1, 6, generator=g), -1)
    counts = torch.zeros(6)
    n_accept = 0
    for _ in range(3000):
        d = int(torch.multinomial(q[0], 1, generator=g))
        emitted, accepted = accept_reject(p, q, [d], g)
        counts[emitted[0]] += 1
        n_accept += accepted
    stat, df = chi2(counts, p[0].double())
    assert stat < chi2_critical(df), (stat, df)
    # the acceptance probability is sum_x min(p(x), q(x)) (the overlap of the two distributions)
    overlap = float(torch.minimum(p[0], q[0]).sum())
    assert abs(n_accept / 3000 - overlap) < 4 * math.sqrt(overlap * (1 - overlap) / 3000)


@pytest.mark.slow
def test_speculative_sampling_matches_the_target_joint_distribution():
    """Two sampled tokens, tiny vocabulary: the joint distribution of (x1, x2) equals the target's."""
    vocab = 6
    target = _model(2, vocab=vocab, layers=1, dim=16, logit_scale=40.0)
    draft = _model(3, vocab=vocab, layers=1, dim=16, logit_scale=40.0)
    prompt = [1, 4]
    with torch.inference_mode():  # exact target joint: p(x1) p(x2 | x1)
        p1 = torch.softmax(target(torch.tensor([prompt]), use_cache=False)[0, -1].double(), -1)
        seqs = torch.tensor([prompt + [x] for x in range(vocab)])
        p2 = torch.softmax(target(seqs, use_cache=False)[:, -1].double(), -1)  # (V, V): row x1
    joint = (p1[:, None] * p2).flatten()
    tdec, ddec = FastDecoder(target, max_seq_len=8), FastDecoder(draft, max_seq_len=8)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(vocab * vocab)
    accepted = drafted = 0
    for _ in range(800):
        out, stats = speculative_generate(target, draft, prompt, 2, k=2, temperature=1.0, generator=g,
                                          target_decoder=tdec, draft_decoder=ddec)  # fmt: skip
        counts[out[0] * vocab + out[1]] += 1
        accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    stat, df = chi2(counts, joint)
    assert stat < chi2_critical(df), (stat, df)
    assert 0.1 < accepted / drafted < 0.95  # the draft differs from the target: rejections happened


def test_bad_input_gives_one_clear_line():
    target = _model(1)
    with pytest.raises(ValueError, match="draft vocabulary size 32 != target vocabulary size 64"):
        speculative_generate(target, _model(2, vocab=32), [1, 2], 4)
    for k in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match=r"k \(draft tokens per round\) must be an integer >= 1"):
            speculative_generate(target, target, [1, 2], 4, k=k)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        speculative_generate(target, target, [1], 4, temperature=-1.0)
    with pytest.raises(ValueError, match="target cache holds 8 positions"):
        speculative_generate(target, target, [1, 2], 10, k=2, target_decoder=FastDecoder(target, max_seq_len=8))
