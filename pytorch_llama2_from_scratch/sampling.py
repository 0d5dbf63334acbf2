"""Decoding strategies as small, pure functions on logits (lesson 10).

A language model gives, for every sequence in the batch, one vector of logits ``z`` over the vocabulary for the
next token. A *decoding strategy* turns ``z`` into a token id. They fall into two families:

* **deterministic**: greedy (``argmax z``) and beam search (``generate.beam_search``: keep the ``num_beams`` best
  partial sequences by summed log-probability);
* **stochastic**: draw ``x ~ softmax(z')`` from a *processed* copy ``z'`` of the logits. Each processor below is a
  function ``z -> z'`` that either rescales the logits (temperature, repetition penalty) or removes tokens by
  setting their logit to ``-inf`` (top-k, top-p, min-p), so that after the softmax they get probability 0 and the
  survivors are renormalised.

The processors are applied in the same order as Hugging Face ``generate`` (repetition penalty, temperature, top-k,
top-p, min-p), and each one computes the same distribution as the matching ``transformers`` logits processor (the
tests check it). :class:`SamplingConfig` bundles the settings of one strategy and :func:`next_token` applies them.

Shapes: ``logits`` is ``(B, V)`` (one row per sequence); the functions return a new tensor and never modify their
input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

STRATEGIES = ("greedy", "beam", "temperature", "random", "top_k", "top_p", "min_p")


# --------------------------------------------------------------------------------------------- parameter checks
def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature < math.inf:
        raise ValueError(
            f"temperature must be a finite number > 0 when sampling, got {temperature!r}; "
            "use the 'greedy' strategy for deterministic decoding"
        )
    return float(temperature)


def check_top_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {k!r}")
    return k


def check_top_p(top_p: float) -> float:
    if not isinstance(top_p, int | float) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    return float(top_p)


def check_min_p(min_p: float) -> float:
    if not isinstance(min_p, int | float) or not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    return float(min_p)


def check_repetition_penalty(penalty: float) -> float:
    if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not 0 < penalty < math.inf:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {penalty!r}")
    return float(penalty)


def check_num_beams(num_beams: int) -> int:
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    return num_beams


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {getattr(logits, 'dtype', type(logits))}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, vocab), got {tuple(logits.shape)}")


# --------------------------------------------------------------------------------------------- deterministic
def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Pick the most likely token: ``x = argmax_v z_v``.

    When to use it: short factual answers, code, evaluation, anything that must be reproducible. It is the
    fastest strategy but it is myopic (a locally best token can lead to a poor sentence) and on open-ended text it
    tends to fall into loops ("the the the ..."), which is why a repetition penalty or sampling is used there.
    Returns ``(B,)`` token ids.
    """
    _check_logits(logits)
    return logits.argmax(dim=-1)


# --------------------------------------------------------------------------------------------- logits processors
def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature scaling: ``z' = z / T``, so ``p_v ∝ exp(z_v / T)``.

    When to use it: to set how adventurous sampling is. ``T < 1`` sharpens the distribution towards greedy
    (``T -> 0`` is argmax), ``T > 1`` flattens it towards uniform (more diverse, more mistakes). Typical values
    are 0.6-1.0. ``T <= 0`` is not a distribution, hence the error.
    """
    temperature = check_temperature(temperature)
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k: keep the ``k`` largest logits, set the rest to ``-inf``.

    When to use it: a simple guard against the long tail of unlikely tokens (each one is improbable but together
    they are often picked). Its weakness is that ``k`` is fixed: too small when the model is unsure (many good
    options), too large when it is sure (one good option). Tokens tied with the k-th logit are kept.
    """
    _check_logits(logits)
    k = min(check_top_k(k), logits.size(-1))
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Top-p (nucleus) sampling: keep the smallest set of most likely tokens whose probabilities sum to ``>= p``.

    When to use it: the default for open-ended generation (Holtzman et al., 2019, "The Curious Case of Neural
    Text Degeneration"). Unlike top-k the number of survivors adapts: a confident model keeps one or two tokens,
    an unsure one keeps many. ``p = 1`` keeps everything; typical values 0.9-0.95.

    With probabilities sorted ascending, ``p_(1) <= ... <= p_(V)``, token ``(i)`` is removed when the cumulative
    sum ``sum_{j<=i} p_(j) <= 1 - p`` (the tail holding at most ``1 - p`` of the mass); the ``min_tokens_to_keep``
    most likely tokens always survive.
    """
    _check_logits(logits)
    top_p = check_top_p(top_p)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)  # ascending
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    remove_sorted = cumulative <= (1.0 - top_p)
    remove_sorted[..., -min_tokens_to_keep:] = False  # the most likely tokens sit at the end
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Min-p: keep tokens whose probability is at least ``min_p`` times that of the most likely token.

    ``keep_v  <=>  p_v >= min_p * max_u p_u``. When to use it: like top-p it adapts to the model's confidence,
    but the cut-off scales with the top probability, so it stays sensible at high temperatures where top-p lets
    in a long flat tail (Nguyen et al., 2024, "Min P Sampling"). Typical values 0.05-0.1; ``0`` keeps everything
    and ``1`` keeps only the argmax (and its ties).
    """
    _check_logits(logits)
    min_p = check_min_p(min_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    remove = probs < threshold
    keep_idx = torch.topk(probs, min(min_tokens_to_keep, probs.size(-1)), dim=-1).indices
    remove = remove.scatter(-1, keep_idx, False)
    return logits.masked_fill(remove, float("-inf"))


def apply_repetition_penalty(
    logits: torch.Tensor,
    previous_ids: torch.Tensor,
    penalty: float,
    previous_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Repetition penalty (Keskar et al., 2019, CTRL): make every token already in the sequence less likely.

    For each token ``v`` that occurs in ``previous_ids`` (prompt and generated so far)::

        z'_v = z_v / penalty   if z_v > 0
        z'_v = z_v * penalty   if z_v <= 0

    so with ``penalty > 1`` its logit always moves down (``1.0`` = off; typical 1.1-1.3). When to use it: greedy
    or low-temperature decoding that loops. It is blunt: it also penalises words that *should* repeat (names,
    "the"). ``previous_ids`` is ``(B, S)``; ``previous_mask`` ``(B, S)`` marks real tokens with 1 so that left
    padding is not penalised.
    """
    _check_logits(logits)
    penalty = check_repetition_penalty(penalty)
    if previous_ids.dim() != 2 or previous_ids.size(0) != logits.size(0):
        raise ValueError(f"previous_ids must have shape (batch={logits.size(0)}, seq), got {tuple(previous_ids.shape)}")
    seen = torch.zeros_like(logits, dtype=torch.bool)
    if previous_mask is None:
        seen.scatter_(-1, previous_ids, True)
    else:
        # scatter into a spare column V for the padded positions, then drop it
        ids = previous_ids.masked_fill(previous_mask == 0, logits.size(-1))
        seen = torch.zeros(logits.size(0), logits.size(-1) + 1, dtype=torch.bool, device=logits.device)
        seen = seen.scatter(-1, ids, True)[:, :-1]
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random (ancestral) sampling: draw ``x ~ softmax(z)``. Returns ``(B,)`` token ids.

    When to use it: on its own (temperature 1, no filtering) it samples exactly the model's distribution, which is
    the right thing for measuring what the model learned and for diverse data generation, but for reading it
    produces incoherent text now and then because of the tail; combine it with the processors above.
    """
    _check_logits(logits)
    probs = logits.float().softmax(dim=-1)
    if bool(torch.isnan(probs).any()):  # a NaN logit, or a row that is -inf everywhere
        raise ValueError("cannot sample: the logits contain NaN or a row with every token at -inf")
    if generator is not None and generator.device != probs.device:  # e.g. a CPU generator, CUDA logits
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# --------------------------------------------------------------------------------------------- one strategy's settings
@dataclass(frozen=True)
class SamplingConfig:
    """The settings of one decoding strategy; ``do_sample=False`` means greedy.

    Build it from a strategy name with :meth:`from_strategy` (what the CLI does) or directly. Unused filters are
    ``None``. Invalid values raise ``ValueError`` here, before any model call.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_repetition_penalty(self.repetition_penalty)
        if self.do_sample:
            check_temperature(self.temperature)
        if self.top_k is not None:
            check_top_k(self.top_k)
        if self.top_p is not None:
            check_top_p(self.top_p)
        if self.min_p is not None:
            check_min_p(self.min_p)

    @classmethod
    def from_strategy(
        cls,
        strategy: str,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 0.9,
        min_p: float = 0.05,
        repetition_penalty: float = 1.0,
    ) -> SamplingConfig:
        """``greedy``, ``random`` (T = 1, no filter), ``temperature``, ``top_k``, ``top_p`` or ``min_p``.

        The filter strategies sample at ``temperature`` too. Only the named strategy's filter is used; the other
        filter arguments are ignored. ``beam`` is not a per-token rule and is handled by ``generate.beam_search``.
        """
        if strategy == "greedy":
            return cls(do_sample=False, repetition_penalty=repetition_penalty)
        if strategy == "random":
            return cls(do_sample=True, temperature=1.0, repetition_penalty=repetition_penalty)
        if strategy == "temperature":
            return cls(do_sample=True, temperature=temperature, repetition_penalty=repetition_penalty)
        filters = {"top_k": {"top_k": top_k}, "top_p": {"top_p": top_p}, "min_p": {"min_p": min_p}}
        if strategy in filters:
            return cls(
                do_sample=True, temperature=temperature, repetition_penalty=repetition_penalty, **filters[strategy]
            )
        if strategy == "beam":
            raise ValueError("beam search is not a per-token strategy; call generate.beam_search")
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def process_logits(
    logits: torch.Tensor,
    config: SamplingConfig,
    previous_ids: torch.Tensor | None = None,
    previous_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the processors of ``config`` in Hugging Face's order: repetition penalty, temperature, top-k, top-p,
    min-p. The filters only apply when sampling (greedy's argmax would not change)."""
    z = logits.float()
    if config.repetition_penalty != 1.0 and previous_ids is not None:
        z = apply_repetition_penalty(z, previous_ids, config.repetition_penalty, previous_mask)
    if not config.do_sample:
        return z
    if config.temperature != 1.0:
        z = apply_temperature(z, config.temperature)
    if config.top_k is not None:
        z = top_k_filter(z, config.top_k)
    if config.top_p is not None and config.top_p < 1.0:
        z = top_p_filter(z, config.top_p)
    if config.min_p is not None:
        z = min_p_filter(z, config.min_p)
    return z


def next_token(
    logits: torch.Tensor,
    config: SamplingConfig,
    previous_ids: torch.Tensor | None = None,
    previous_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The sampler: processed logits -> ``(B,)`` next token ids (argmax when ``do_sample`` is False)."""
    z = process_logits(logits, config, previous_ids, previous_mask)
    return sample(z, generator) if config.do_sample else greedy(z)
