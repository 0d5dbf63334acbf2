"""Autoregressive sampling from a GPT: temperature, top-k, a seeded generator, several sequences at once.

One step of the loop, for the last position of every sequence::

    p = softmax(logits[:, -1, :] / temperature)              # (B, V)
    p_k, i_k = topk(p, k)                                    # keep the k most likely tokens, (B, k)
    j ~ Multinomial(p_k / sum(p_k))                          # sample among them
    next = i_k[j]                                            # back to vocabulary ids, (B, 1)

The context fed to the model is cropped to the last ``block_size`` tokens, so sequences may grow past it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_sampling_options(top_k: int | None, temperature: float, vocab_size: int | None = None) -> None:
    """``ValueError`` naming the option for a temperature that is not a finite number > 0 or a bad ``top_k``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
        raise ValueError(f"top_k must be an integer or None, got {top_k!r}")
    if top_k is not None and vocab_size is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be in [1, {vocab_size}] or None, got {top_k}")


def sample_next(
    logits: torch.Tensor, top_k: int | None = 50, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``logits`` (B, V) of the last position -> sampled token ids (B, 1).

    ``top_k=None`` samples from the whole distribution; ``temperature`` < 1 sharpens it, > 1 flattens it.
    ``generator`` lives on the logits' device (``torch.Generator(device=...)``) and makes the draw reproducible.
    """
    check_sampling_options(top_k, temperature)
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating (B, V) tensor, got {logits.dtype} {tuple(logits.shape)}")
    if torch.isnan(logits).any() or torch.isposinf(logits).any() or torch.isneginf(logits).all(dim=-1).any():
        raise ValueError("logits hold NaN or +inf, or a row is all -inf: there is no distribution to sample")
    probs = F.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    if top_k is None:
        return torch.multinomial(probs, 1, generator=generator)  # (B, 1)
    if not 1 <= top_k <= probs.size(-1):
        raise ValueError(f"top_k must be in [1, {probs.size(-1)}] or None, got {top_k}")
    topk_probs, topk_idx = torch.topk(probs, top_k, dim=-1)  # (B, k) each, sorted by probability
    j = torch.multinomial(topk_probs, 1, generator=generator)  # (B, 1): position inside the top k
    return torch.gather(topk_idx, -1, j)  # (B, 1): vocabulary ids


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    top_k: int | None = 50,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend ``idx`` (B, T) by ``max_new_tokens`` sampled tokens -> (B, T + max_new_tokens).

    The model is put in eval mode for the loop and restored afterwards.
    """
    if idx.dim() != 2:
        raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
    if idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"idx must hold integer token ids, got {idx.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    check_sampling_options(top_k, temperature, model.config.vocab_size)  # before the loop: also for 0 new tokens
    block_size = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            context = idx[:, -block_size:]  # crop to the longest sequence the model knows positions for
            logits, _ = model(context)  # (B, T, V)
            nxt = sample_next(logits[:, -1, :], top_k=top_k, temperature=temperature, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T) -> (B, T + 1)
    finally:
        model.train(was_training)
    return idx


def generate_text(
    model: torch.nn.Module,
    enc,
    prompt: str,
    num_return_sequences: int = 5,
    max_length: int = 30,
    top_k: int | None = 50,
    temperature: float = 1.0,
    seed: int = 42,
    device: torch.device | str = "cpu",
) -> list[str]:
    """Sample ``num_return_sequences`` continuations of ``prompt`` up to ``max_length`` tokens in all.

    ``enc`` is a tiktoken encoding; every sequence starts with the same prompt tokens and the rows of the batch
    are sampled in parallel from one seeded generator on ``device``.
    """
    device = torch.device(device)
    prompt_ids = enc.encode(prompt)
    if not prompt_ids:
        raise ValueError("the prompt encodes to zero tokens")
    if isinstance(num_return_sequences, bool) or not isinstance(num_return_sequences, int) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be a positive integer, got {num_return_sequences!r}")
    if max_length < len(prompt_ids):
        raise ValueError(f"max_length {max_length} is shorter than the prompt ({len(prompt_ids)} tokens)")
    idx = torch.tensor(prompt_ids, dtype=torch.long, device=device).unsqueeze(0)  # (1, T)
    idx = idx.repeat(num_return_sequences, 1)  # (1, T) -> (B, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_length - len(prompt_ids), top_k=top_k, temperature=temperature, generator=generator)
    return [enc.decode(row.tolist()) for row in out]
