"""Tokens for the chapter: the GPT-2 BPE tokenizer, tiny Shakespeare as token ids, and ``DataLoaderLite``.

``DataLoaderLite`` reads a token stream as contiguous ``(B, T)`` batches: the inputs ``x`` are ``B * T``
consecutive tokens and the targets ``y`` the same window shifted by one, so ``y[b, t]`` is the token that follows
``x[b, t]`` in the stream.

The wrapping rule (exact): the stream of ``N`` tokens is read as a *ring*. A global cursor ``p`` starts at 0.
At each step, process ``r`` of ``P`` takes the ``B * T + 1`` tokens at ring positions
``p + r * B * T, ..., p + (r + 1) * B * T`` (indices modulo ``N``) and then every process moves the cursor to
``(p + P * B * T) mod N``. A batch that runs past the end continues at token 0 (the target of the last token
is token 0), so no token is ever skipped: concatenating the inputs of all processes, step after step, gives the
stream itself, repeated — every token is an input exactly once per ``N`` consumed positions (one epoch).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from pytorch_basis.common import DownloadError, tiny_shakespeare_path

TIKTOKEN_ENV = "TIKTOKEN_CACHE_DIR"


class TokenizerUnavailableError(DownloadError):
    """tiktoken could not load the GPT-2 BPE files (offline and no cache)."""


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """tiktoken's ``gpt2`` encoding (50,257 tokens, ``<|endoftext|>`` = 50256).

    tiktoken downloads its two BPE files once into ``$TIKTOKEN_CACHE_DIR``; offline, point that variable at a
    folder that already holds them (``../shared/tiktoken_cache`` on the CI machines).
    """
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests/urllib errors offline, a missing cache file, ...
        where = os.environ.get(TIKTOKEN_ENV)
        hint = (
            f"{TIKTOKEN_ENV}={where} does not hold them"
            if where
            else f"set {TIKTOKEN_ENV} to a folder that already holds them (e.g. ../shared/tiktoken_cache)"
        )
        raise TokenizerUnavailableError(
            f"could not load tiktoken's 'gpt2' BPE files ({type(e).__name__}); without network, {hint}"
        ) from None


@functools.lru_cache(maxsize=1)
def _tinyshakespeare_ids() -> np.ndarray:
    text = tiny_shakespeare_path().read_text(encoding="utf-8")
    return np.asarray(gpt2_encoding().encode_ordinary(text), dtype=np.uint16)  # 50257 < 2**16


def load_tinyshakespeare_tokens() -> torch.Tensor:
    """Tiny Shakespeare encoded with GPT-2 BPE: a 1-D int64 tensor of 338,025 token ids (a fresh copy)."""
    return torch.from_numpy(_tinyshakespeare_ids().astype(np.int64))


class DataLoaderLite:
    """Contiguous ``(B, T)`` batches from a 1-D token stream, sharded over ``num_processes`` ranks.

    See the module docstring for the exact wrapping rule. ``next_batch()`` returns int64 ``(x, y)`` on the CPU;
    ``state_dict()`` / ``load_state_dict()`` save and restore the cursor, so a resumed run sees exactly the
    batches it would have seen.
    """

    def __init__(self, B: int, T: int, tokens, process_rank: int = 0, num_processes: int = 1):
        for name, value in (("B", B), ("T", T), ("num_processes", num_processes)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= process_rank < num_processes:
            raise ValueError(f"process_rank must be in [0, {num_processes}), got {process_rank}")
        if isinstance(tokens, np.ndarray):
            tokens = torch.from_numpy(tokens.astype(np.int64) if tokens.dtype == np.uint16 else tokens)
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be a 1-D stream, got shape {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must hold integer ids, got {tokens.dtype}")
        need = B * T * num_processes + 1
        if tokens.numel() < need:
            raise ValueError(
                f"the token stream holds {tokens.numel()} tokens but B*T*num_processes+1 = {B}*{T}*{num_processes}+1 "
                f"= {need} are needed for one step; use a smaller B or T"
            )
        self.B, self.T = B, T
        self.process_rank, self.num_processes = process_rank, num_processes
        self.tokens = tokens.long()
        self.reset()

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed per step by all processes together: ``B * T * num_processes``."""
        return self.B * self.T * self.num_processes

    def reset(self) -> None:
        """Back to the start of the stream."""
        self.position = 0  # global cursor p (shared by all ranks)
        self.consumed = 0  # tokens consumed by all ranks since reset (epoch = consumed // N)

    @property
    def epoch(self) -> int:
        return self.consumed // self.num_tokens

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``x, y`` of shape ``(B, T)``, ``y`` = ``x`` shifted by one token in the stream."""
        B, T, N = self.B, self.T, self.num_tokens
        start = (self.position + self.process_rank * B * T) % N
        end = start + B * T + 1
        if end <= N:
            buf = self.tokens[start:end]
        else:  # wrap around the ring: the tail of the stream, then its head
            buf = torch.cat([self.tokens[start:], self.tokens[: end - N]])
        x = buf[:-1].view(B, T)  # (B*T,) -> (B, T)
        y = buf[1:].view(B, T)
        self.position = (self.position + self.tokens_per_step) % N
        self.consumed += self.tokens_per_step
        return x, y

    def state_dict(self) -> dict:
        return dict(
            position=self.position,
            consumed=self.consumed,
            B=self.B,
            T=self.T,
            num_processes=self.num_processes,
            num_tokens=self.num_tokens,
        )

    def load_state_dict(self, state: dict) -> None:
        for key in ("B", "T", "num_processes", "num_tokens"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: the saved loader has {key}={state[key]}, this one has {getattr(self, key)}"
                )
        self.position = int(state["position"]) % self.num_tokens
        self.consumed = int(state.get("consumed", 0))
