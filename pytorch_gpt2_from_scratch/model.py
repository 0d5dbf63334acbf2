"""GPT-2 from scratch: the one reusable model module of the chapter.

The network is the GPT-2 of Radford et al. (2019): token + position embeddings, ``n_layer`` pre-LayerNorm
transformer blocks, a final LayerNorm and a linear head onto the vocabulary::

    x_0 = wte[idx] + wpe[0..T-1]                               # (B, T, C)
    x_l = x_{l-1} + attn(ln_1(x_{l-1}))                        # causal self-attention, residual
    x_l = x_l     + mlp(ln_2(x_l))                             # 4C tanh-GELU MLP, residual
    logits = lm_head(ln_f(x_L))                                # (B, T, vocab_size)

Parameter names follow Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight`` ...), so the
published checkpoints load with only the Conv1D transposes (:meth:`GPT.from_pretrained`).

Every speed-up of the chapter's benchmark lesson is an *option of this module*, so the ladder measures the real
code instead of copies of it:

* ``attn_impl``: ``"manual"`` (explicit ``softmax(q k^T / sqrt(hs) + mask) v``), ``"sdpa"``
  (``F.scaled_dot_product_attention``, a fused flash/memory-efficient kernel), or any name a later module
  registered with :func:`register_attention` -- chapter 4 registers ``"triton"`` (its flash-attention kernel) when
  ``triton_flash_attention_scratch.triton_flash`` is imported, so this chapter never imports a later one;
* ``tie_weights``: ``wte`` and ``lm_head`` share one matrix (GPT-2 does);
* ``init``: ``"gpt2"`` (N(0, 0.02), residual projections scaled by ``(2 * n_layer) ** -0.5``) or ``"default"``
  (whatever PyTorch's layers do on construction, for the before/after comparison);
* ``pad_vocab_to``: round the embedding / head rows up to a multiple (50257 -> 50304 for 64). The padded rows
  are never real tokens: ``forward`` slices them off the logits and the loss never gives them probability.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pytorch_basis.common import DownloadError

ATTN_IMPLS = ("manual", "sdpa")  # built in; more are added by register_attention
# Names that a later chapter provides, so that using one before importing it gets an error saying what to import.
ATTN_PROVIDERS = {"triton": "triton_flash_attention_scratch.triton_flash"}
# name -> causal attention function (q, k, v) -> y, all (B, nh, T, hs), registered by other modules
_REGISTERED_ATTENTION: dict[str, object] = {}


def register_attention(name: str, fn) -> None:
    """Make ``GPTConfig(attn_impl=name)`` call ``fn(q, k, v)`` (causal; q, k, v and the result (B, nh, T, hs))."""
    if not isinstance(name, str) or not name or name in ATTN_IMPLS:
        raise ValueError(f"attention name must be a new non-empty string (built in: {ATTN_IMPLS}), got {name!r}")
    if not callable(fn):
        raise TypeError(f"register_attention({name!r}, fn): fn must be callable, got {type(fn).__name__}")
    _REGISTERED_ATTENTION[name] = fn


def attention_impls() -> tuple[str, ...]:
    """Every ``attn_impl`` usable now: the built-in ones and those registered so far."""
    return ATTN_IMPLS + tuple(sorted(_REGISTERED_ATTENTION))


INITS = ("gpt2", "default")

# name -> (n_layer, n_head, n_embd, block_size). The four published GPT-2 sizes, a tiny test model and a
# model small enough to train on a laptop CPU.
_PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),  # 1558M
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),  # unit tests (full GPT-2 vocabulary)
    "cpu-small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # CPU training and benchmarks
}


class PretrainedNotAvailableError(DownloadError):
    """A pretrained checkpoint could not be found locally nor fetched from the Hugging Face hub."""


@dataclass
class GPTConfig:
    """Hyper-parameters of the model; the defaults are GPT-2 small (124M)."""

    block_size: int = 1024  # longest sequence (number of position embeddings)
    vocab_size: int = 50257  # real vocabulary: 50,000 BPE merges + 256 byte tokens + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2 has them)
    attn_impl: str = "sdpa"  # "manual" | "sdpa" | a registered name ("triton" once chapter 4 is imported)
    tie_weights: bool = True  # lm_head.weight is wte.weight
    init: str = "gpt2"  # "gpt2" | "default"
    pad_vocab_to: int | None = None  # e.g. 64: embedding/head rows 50257 -> 50304

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head gets n_embd / n_head"
            )
        if self.attn_impl not in attention_impls():
            hint = ""
            if self.attn_impl in ATTN_PROVIDERS:
                hint = f"; {self.attn_impl!r} is registered by `import {ATTN_PROVIDERS[self.attn_impl]}`"
            raise ValueError(f"attn_impl must be one of {attention_impls()}, got {self.attn_impl!r}{hint}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.pad_vocab_to is not None and (
            not isinstance(self.pad_vocab_to, int) or isinstance(self.pad_vocab_to, bool) or self.pad_vocab_to <= 0
        ):
            raise ValueError(f"pad_vocab_to must be a positive integer or None, got {self.pad_vocab_to!r}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of ``wte`` / ``lm_head``: ``vocab_size`` rounded up to a multiple of ``pad_vocab_to``."""
        if not self.pad_vocab_to:
            return self.vocab_size
        m = self.pad_vocab_to
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """``GPTConfig.preset("gpt2-medium", attn_impl="manual")``; names: see :data:`PRESET_NAMES`."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(_PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {sorted(unknown)}")
        return cls(**{**_PRESETS[name], **overrides})


PRESET_NAMES = tuple(_PRESETS)


# --------------------------------------------------------------------------------------------- the blocks
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention.

    With ``hs = C / nh`` per head::

        q, k, v = split(x W_attn + b_attn)                       # each (B, T, C) -> (B, nh, T, hs)
        att     = softmax(q k^T / sqrt(hs) + M)                  # M_ij = -inf for j > i (no peeking ahead)
        y       = (att v) merged back to (B, T, C), then W_proj

    Every ``attn_impl`` computes the same function; only the kernels differ.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.attn_impl = config.attn_impl
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True  # init: this projection writes into the residual stream

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, nh, T, hs) x3 -> (B, nh, T, hs)."""
        if self.attn_impl == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.attn_impl == "manual":
            T, hs = q.size(-2), q.size(-1)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            att = att.masked_fill(~causal, float("-inf"))
            att = F.softmax(att, dim=-1)
            return att @ v  # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs)
        return _REGISTERED_ATTENTION[self.attn_impl](q, k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)
        v = v.view(B, T, nh, hs).transpose(1, 2)
        y = self._attention(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C): heads side by side
        return self.c_proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward: ``c_proj(GELU_tanh(c_fc(x)))`` with hidden width 4C.

    GPT-2 used the tanh approximation ``GELU(x) ~= 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; we keep it
    so the published weights reproduce the published logits.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block: ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# --------------------------------------------------------------------------------------------- the model
class GPT(nn.Module):
    """GPT-2 language model. ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        V = config.padded_vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(V, config.n_embd),  # token embeddings (V, C)
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings (block_size, C)
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        if config.tie_weights:
            # One tensor, two uses: rows of wte embed tokens, and the same rows score them in the head.
            self.transformer.wte.weight = self.lm_head.weight
        if config.init == "gpt2":
            self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases; residual projections get std 0.02 / sqrt(2 n_layer).

        Each block adds two outputs (attention and MLP) to the residual stream, so after L blocks it is a sum
        of 2L terms; scaling their std by ``(2L) ** -0.5`` keeps the variance of the stream from growing with L.
        """
        std = 0.02
        if isinstance(module, nn.Linear):
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                std *= (2 * self.config.n_layer) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if module.weight is not self.lm_head.weight:  # the tied matrix was already set as the head
                nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """``idx`` (B, T) int token ids -> ``logits`` (B, T, vocab_size) and the mean cross-entropy ``loss``.

        ``targets`` (B, T) are the next tokens; entries equal to -100 are ignored. ``loss`` is None without
        targets. The logits never include the padding columns of ``pad_vocab_to``.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must hold integer token ids (int64/int32), got {idx.dtype}")
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
        if idx.device.type == "cpu" and not torch.compiler.is_compiling():
            self._check_token_ids(idx, targets)  # on a GPU this would cost a sync per step: its kernels assert

        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C) + (T, C) -> (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, C) -> (B, T, V_padded)

        V, Vp = self.config.vocab_size, self.config.padded_vocab_size
        if Vp != V:
            # Padded columns are not tokens: -inf gives them zero probability (and zero gradient) in the loss.
            # The matmul above does not save its output for backward, so this in-place write is autograd-safe.
            logits[..., V:] = float("-inf")
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, Vp), targets.reshape(B * T).long(), ignore_index=-100)
        if Vp != V:
            logits = logits[..., :V]  # (B, T, V_padded) -> (B, T, V): a view, no copy
        return logits, loss

    def _check_token_ids(self, idx: torch.Tensor, targets: torch.Tensor | None) -> None:
        """Token ids outside ``[0, vocab_size)`` are a ``ValueError`` naming the id (not an ``IndexError``)."""
        V = self.config.vocab_size
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= V):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise ValueError(f"token id {bad} in idx is outside the vocabulary [0, {V})")
        if targets is not None and targets.numel():
            t = targets[targets != -100]
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= V):
                bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
                raise ValueError(f"target id {bad} is outside the vocabulary [0, {V}) (use -100 to ignore a position)")

    # ------------------------------------------------------------------------------------------ utilities
    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied matrix counts once).

        ``non_embedding=True`` subtracts the position embeddings (and the token embeddings too when they are not
        tied to the head, since then they are a pure lookup table); with tying the shared matrix stays counted
        because it does compute work as the head. This is nanoGPT's convention.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: ``6 N + 12 L C T``.

        ``N`` counts the matmul parameters (everything but the position embeddings), ``12 L C T`` the attention
        score and value matmuls (no causal discount). Used for MFU and for the fraction of a measured peak.
        """
        cfg = self.config
        T = cfg.block_size if T is None else T
        N = self.num_params(non_embedding=True)
        return 6 * N + 12 * cfg.n_layer * cfg.n_embd * T

    # ------------------------------------------------------------------------------------------ HF weights
    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, **config_overrides) -> GPT:
        """Load GPT-2 weights written by Hugging Face ``transformers``.

        ``name_or_dir`` is a local directory written by ``GPT2LMHeadModel.save_pretrained`` (``config.json`` +
        ``model.safetensors`` or ``pytorch_model.bin``) or a hub name (``gpt2``, ``gpt2-medium``, ...; needs the
        network once, then the Hugging Face cache). ``config_overrides`` change options that do not alter the
        weights' meaning (``attn_impl``, ``pad_vocab_to``, ``tie_weights`` ...).
        """
        config_dict, state = load_hf_checkpoint(name_or_dir)
        config = GPTConfig(**{**config_dict, **config_overrides})
        model = cls(config)
        model.load_hf_state_dict(state)
        return model

    @torch.no_grad()
    def load_hf_state_dict(self, hf_state: dict[str, torch.Tensor]) -> None:
        """Copy a ``GPT2LMHeadModel`` state dict into this model.

        * key prefixes ``transformer.`` (``save_pretrained``) and none (the original hub files) both work;
        * the causal-mask buffers ``attn.bias`` / ``attn.masked_bias`` of old checkpoints are ignored;
        * Conv1D stores ``(in, out)`` matrices: the four of them are transposed into our ``nn.Linear`` ``(out, in)``;
        * a missing ``lm_head.weight`` (tied checkpoints) is taken from ``wte``;
        * with ``pad_vocab_to`` the real rows are copied and the padded rows set to zero;
        * every shape mismatch, missing or unexpected key raises a ``ValueError`` naming the key.
        """
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        src: dict[str, torch.Tensor] = {}
        for key, value in hf_state.items():
            if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
                continue  # causal-mask buffers, not parameters
            if not key.startswith("lm_head.") and not key.startswith("transformer."):
                key = "transformer." + key
            src[key] = value
        if "lm_head.weight" not in src and "transformer.wte.weight" in src:
            src["lm_head.weight"] = src["transformer.wte.weight"]

        dst = self.state_dict()
        unexpected = sorted(set(src) - set(dst))
        if unexpected:
            raise ValueError(f"unexpected key(s) in the checkpoint: {unexpected[:5]}")
        missing = sorted(set(dst) - set(src))
        if missing:
            raise ValueError(f"key(s) missing from the checkpoint: {missing[:5]}")
        V = self.config.vocab_size
        for key, target in dst.items():
            value = src[key]
            if key.endswith(transposed):
                value = value.t()  # Conv1D (in, out) -> Linear (out, in)
            if key in ("transformer.wte.weight", "lm_head.weight") and target.shape[0] != value.shape[0]:
                if value.shape[0] != V or value.shape[1:] != target.shape[1:]:
                    raise ValueError(
                        f"shape mismatch for {key}: checkpoint {tuple(value.shape)}, model {tuple(target.shape)}"
                    )
                target[:V].copy_(value)
                target[V:].zero_()  # padding rows: never real tokens
                continue
            if value.shape != target.shape:
                raise ValueError(
                    f"shape mismatch for {key}: checkpoint {tuple(value.shape)}, model {tuple(target.shape)}"
                )
            target.copy_(value)
        if not self.config.tie_weights:
            return
        if not torch.equal(src["lm_head.weight"], src["transformer.wte.weight"]):
            raise ValueError(
                "the checkpoint's lm_head.weight differs from transformer.wte.weight: load it with tie_weights=False"
            )


# --------------------------------------------------------------------------------------------- HF checkpoint I/O
_HF_SUPPORTED = dict(activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True)


def config_from_hf(hf_config: dict) -> dict:
    """Map a Hugging Face ``GPT2Config`` (as a dict, e.g. ``config.json``) to :class:`GPTConfig` fields.

    Options our module does not implement (another activation, ``n_inner`` != 4C, ...) are a ``ValueError``
    instead of silently different logits.
    """
    for key, expected in _HF_SUPPORTED.items():
        if key in hf_config and hf_config[key] != expected:
            raise ValueError(
                f"unsupported GPT-2 config: {key}={hf_config[key]!r} (this module implements {expected!r})"
            )
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf_config.get(key):
            raise ValueError(f"unsupported GPT-2 config: {key}=True")
    n_embd = hf_config["n_embd"]
    if hf_config.get("n_inner") not in (None, 4 * n_embd):
        raise ValueError(f"unsupported GPT-2 config: n_inner={hf_config['n_inner']} (this module uses 4 * n_embd)")
    return dict(
        block_size=hf_config["n_positions"],
        vocab_size=hf_config["vocab_size"],
        n_layer=hf_config["n_layer"],
        n_head=hf_config["n_head"],
        n_embd=n_embd,
        tie_weights=hf_config.get("tie_word_embeddings", True),
    )


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    safetensors_file = folder / "model.safetensors"
    if safetensors_file.exists():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    bin_file = folder / "pytorch_model.bin"
    if bin_file.exists():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    if any(folder.glob("*.index.json")):
        raise ValueError(f"{folder} holds a sharded checkpoint; save it unsharded (max_shard_size='10GB')")
    raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin")


def load_hf_checkpoint(name_or_dir: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return ``(GPTConfig kwargs, HF state dict)`` from a local ``save_pretrained`` folder or a hub name."""
    folder = Path(name_or_dir).expanduser()
    if not folder.is_dir():
        folder = _hub_snapshot(str(name_or_dir))
    config_file = folder / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{folder} has no config.json; is it a folder written by save_pretrained?")
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is not valid JSON ({e})") from None
    if not isinstance(hf_config, dict):
        raise ValueError(f"{config_file} does not hold a JSON object")
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{folder} holds a {hf_config['model_type']!r} model, not GPT-2")
    try:
        kwargs = config_from_hf(hf_config)
    except KeyError as e:
        raise ValueError(f"{config_file} has no {e.args[0]!r}: not a GPT-2 config") from None
    try:
        weights = _read_weights(folder)
    except (OSError, ValueError):
        raise
    except Exception as e:  # safetensors' SafetensorError, torch.load's RuntimeError / UnpicklingError
        raise ValueError(f"cannot read the weights in {folder}: truncated or not a checkpoint ({e})") from None
    return kwargs, weights


def _hub_snapshot(name: str) -> Path:
    """Download (once; then the HF cache) the config and weights of a hub model; offline -> one clear error."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(name, allow_patterns=["config.json", "model.safetensors"])
        if not (Path(path) / "model.safetensors").exists():
            path = snapshot_download(name, allow_patterns=["config.json", "pytorch_model.bin"])
        return Path(path)
    except Exception as e:  # network errors, offline mode, unknown repository: all surface the same way
        raise PretrainedNotAvailableError(
            f"could not get GPT-2 weights {name!r}: it is not a local directory and the Hugging Face hub did not "
            f"provide it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Without network, pass "
            "a directory written by GPT2LMHeadModel.save_pretrained (or set HF_HOME to a cache that holds it); "
            "the lessons also take --random-init to build such a directory from a random GPT2Config."
        ) from None


def save_random_hf_checkpoint(folder: str | os.PathLike, seed: int = 0, **gpt2_config) -> Path:
    """Write a *randomly initialised* ``GPT2LMHeadModel`` with ``save_pretrained`` (for offline lessons/tests).

    ``gpt2_config`` are ``transformers.GPT2Config`` arguments (``n_layer=2, n_embd=64, ...``); the default is the
    full 124M shape. The checkpoint has exactly the layout of the published ones.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**gpt2_config))
    folder = Path(folder)
    hf.save_pretrained(folder)
    return folder


def config_to_dict(config: GPTConfig) -> dict:
    """A plain dict of the config (for checkpoints saved with ``atomic_torch_save``)."""
    return asdict(config)
