"""Speculative decoding: a cheap draft model proposes k tokens, the target checks all k in one forward.

    from pytorch_llama2_from_scratch.speculative import speculative_generate

    tokens, stats = speculative_generate(target, draft, prompt_ids, max_new_tokens=128, k=4)  # greedy
    tokens, stats = speculative_generate(target, draft, prompt_ids, 128, k=4, temperature=0.8, generator=g)

Why it is faster: at batch 1 a forward over k+1 tokens reads the weights once, like a forward over one token
(decode is memory-bound), so verifying k proposals costs about one target step. One round:

1. the draft decodes ``d_1 .. d_k`` autoregressively (k cheap steps), with distributions ``q_1 .. q_k``;
2. the target runs once on ``[x, d_1 .. d_k]`` and gives ``p_1 .. p_{k+1}`` (``p_i`` = the target's distribution
   of the token at the position of ``d_i``);
3. accept a prefix of the proposals and always emit one more token from the target, so a round yields between 1
   and k+1 tokens for one target forward.

Greedy (``temperature=0``): accept ``d_i`` while ``d_i == argmax p_i``; at the first mismatch emit ``argmax p_i``
(after k matches emit ``argmax p_{k+1}``). Every emitted token is the target's argmax given the tokens before it,
so the output equals plain greedy decoding of the target token for token.

Sampling (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding"; Chen et al. 2023):
accept ``d ~ q`` with probability ``min(1, p(d) / q(d))``; on rejection sample from the residual
``r(x) = max(0, p(x) - q(x)) / Z`` with ``Z = sum_x max(0, p(x) - q(x))``, and stop the round. Proof that the
emitted token is distributed as ``p``::

    P(emit x) = P(draft x, accept) + P(reject) r(x)
              = q(x) min(1, p(x)/q(x))  +  (1 - sum_y q(y) min(1, p(y)/q(y))) r(x)
              = min(q(x), p(x))         +  (1 - sum_y min(q(y), p(y))) max(0, p(x) - q(x)) / Z
    and  1 - sum_y min(q(y), p(y)) = sum_y (p(y) - min(q(y), p(y))) = sum_y max(0, p(y) - q(y)) = Z,  so
    P(emit x) = min(q(x), p(x)) + max(0, p(x) - q(x)) = p(x).

By induction over positions (each ``p_i`` is the target's conditional given the tokens actually emitted before
it) the whole sequence is a sample of the target; the draft only changes how fast it comes. The expected number
of tokens per round is ``(1 - a^{k+1}) / (1 - a)`` for a per-token acceptance rate ``a``.

Both models decode with :class:`fast_decode.FastDecoder` (static caches): "rolling back" rejected proposals is
free, their cache slots are simply overwritten by the next round (the attention mask is ``slot <= position``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pytorch_llama2_from_scratch.fast_decode import FastDecoder
from pytorch_llama2_from_scratch.model import Transformer

__all__ = ["SpecStats", "accept_reject", "damp_deep_layers", "speculative_generate", "truncated_draft"]


@dataclass
class SpecStats:
    """Counters of one speculative run (prefill not counted as a target forward)."""

    target_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0


def accept_reject(
    p: torch.Tensor, q: torch.Tensor, proposals: Sequence[int], generator: torch.Generator | None = None
) -> tuple[list[int], int]:
    """The sampling rule: ``p`` (k+1, V) target probabilities, ``q`` (k, V) draft ones, ``proposals`` (k,).

    Returns ``(emitted tokens, number of proposals accepted)``; ``len(emitted) == accepted + 1``.
    """
    p, q = p.double(), q.double()
    k = len(proposals)
    emitted: list[int] = []
    for i, d in enumerate(proposals):
        u = torch.rand((), generator=generator, dtype=torch.float64)
        if q[i, d] > 0 and u * q[i, d] < p[i, d]:  # u < p/q, written without a division
            emitted.append(int(d))
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        if residual.sum() <= 0:  # p == q up to rounding: the residual is empty, sample p itself
            residual = p[i]
        emitted.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
        return emitted, i
    emitted.append(int(torch.multinomial(p[k], 1, generator=generator)))
    return emitted, k


def truncated_draft(model: Transformer, n_layers: int) -> Transformer:
    """A draft made of the target's first ``n_layers`` layers + its final norm and output head (shared tensors).

    No training and no extra memory for the weights: it predicts the target's next token from an early layer's
    residual stream (the idea of early-exit / self-speculative decoding); how often it agrees is measured.
    """
    if not 1 <= n_layers < model.args.n_layers:
        raise ValueError(f"n_layers must be in [1, {model.args.n_layers - 1}], got {n_layers}")
    with torch.device("meta"):
        draft = Transformer(model.args.replace(n_layers=n_layers))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layers.")
             or int(k.split(".")[1]) < n_layers}  # fmt: skip
    draft.load_state_dict(state, assign=True)  # shares the target's tensors
    device = model.output.weight.device
    for layer in draft.layers:  # the cache buffers are not in the state_dict: allocate them for real
        attn = layer.attention
        attn.cache_k = torch.zeros(attn.cache_k.shape, dtype=model.norm.weight.dtype, device=device)
        attn.cache_v = torch.zeros(attn.cache_v.shape, dtype=model.norm.weight.dtype, device=device)
    return draft.eval()


@torch.no_grad()
def damp_deep_layers(model, first: int, factor: float) -> None:
    """Scale the output projections (wo, w2) of layers ``first..`` by ``factor``: their blocks add little to the
    residual stream, as the later layers of a trained model often do on easy tokens -- a random stand-in for
    a target whose early exit agrees often."""
    if not 0 <= first < model.args.n_layers:
        raise ValueError(f"--damp-after must be in [0, {model.args.n_layers - 1}], got {first}")
    for layer in model.layers[first:]:
        layer.attention.wo.weight.mul_(factor)
        layer.feed_forward.w2.weight.mul_(factor)


def _check_pair(target: Transformer, draft: Transformer, k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (draft tokens per round) must be an integer >= 1, got {k!r}")
    tv, dv = target.args.vocab_size, draft.args.vocab_size
    if tv != dv:
        raise ValueError(
            f"draft vocabulary size {dv} != target vocabulary size {tv}: the draft must use the target's tokenizer"
        )


@torch.inference_mode()
def speculative_generate(
    target: Transformer,
    draft: Transformer,
    prompt: Sequence[int],
    max_new_tokens: int,
    k: int = 4,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    target_decoder: FastDecoder | None = None,
    draft_decoder: FastDecoder | None = None,
) -> tuple[list[int], SpecStats]:
    """Decode ``max_new_tokens`` from ``prompt`` (batch 1) with ``draft`` proposing ``k`` tokens per round.

    ``temperature=0`` is greedy (identical to plain greedy); ``temperature>0`` samples ``softmax(logits / T)``
    of the target exactly (``generator`` seeds it). Pass prebuilt (e.g. compiled) decoders to reuse them across
    calls; they must have room for ``len(prompt) + max_new_tokens + k`` positions.
    """
    _check_pair(target, draft, k)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("prompt must contain at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    need = len(prompt) + max_new_tokens + k
    tdec = target_decoder or FastDecoder(target, max_seq_len=min(need, target.args.max_seq_len))
    ddec = draft_decoder or FastDecoder(draft, max_seq_len=min(need, draft.args.max_seq_len))
    for name, dec in (("target", tdec), ("draft", ddec)):
        if dec.max_seq_len < need:
            raise ValueError(
                f"{name} cache holds {dec.max_seq_len} positions; prompt {len(prompt)} + max_new_tokens "
                f"{max_new_tokens} + k {k} = {need} are needed"
            )
    stats = SpecStats()
    if max_new_tokens == 0:
        return [], stats
    device = tdec.cache.k0.device
    ddevice = ddec.cache.k0.device
    seq = list(prompt)
    if len(seq) > 1:  # the caches hold every position but the last; the last token is fed by the round
        tdec.prefill(torch.tensor([seq[:-1]], device=device))
        ddec.prefill(torch.tensor([seq[:-1]], device=ddevice))
    d_valid = len(seq) - 1  # positions 0..d_valid-1 of the draft cache are correct
    while len(seq) - len(prompt) < max_new_tokens:
        n = len(seq)  # the token at position n-1 is not yet in either cache
        for pos in range(d_valid, n - 1):  # catch the draft up (after a fully accepted round: one token)
            ddec.step(torch.tensor([[seq[pos]]], device=ddevice), pos)
        proposals, qs = [], []
        x = seq[-1]
        for i in range(k):
            logits = ddec.step(torch.tensor([[x]], device=ddevice), n - 1 + i)[0, -1]
            if temperature == 0:
                x = int(logits.argmax())
            else:
                q = torch.softmax(logits.double().cpu() / temperature, dim=-1)
                x = int(torch.multinomial(q, 1, generator=generator))
                qs.append(q)
            proposals.append(x)
        tokens = torch.tensor([[seq[-1], *proposals]], device=device)
        logits = tdec.prefill(tokens, start=n - 1, last_only=False)[0]  # (k+1, V): one target forward
        stats.target_forwards += 1
        if temperature == 0:
            best = logits.argmax(-1).tolist()
            accepted = next((i for i in range(k) if proposals[i] != best[i]), k)
            emitted = proposals[:accepted] + [best[accepted]]
        else:
            p = torch.softmax(logits.double().cpu() / temperature, dim=-1)
            emitted, accepted = accept_reject(p, torch.stack(qs), proposals, generator)
        stats.drafted += k
        stats.accepted += accepted
        d_valid = n + min(accepted, k - 1)
        seq.extend(emitted)
    new = seq[len(prompt) : len(prompt) + max_new_tokens]
    stats.new_tokens = len(new)
    return new, stats
