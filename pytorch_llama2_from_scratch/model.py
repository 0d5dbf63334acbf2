"""LLaMA-2 from scratch: the model every lesson, test and later chapter of this folder imports.

    from pytorch_llama2_from_scratch.model import ModelArgs, Transformer

    args = ModelArgs.preset("tiny")
    model = Transformer(args)
    logits = model(tokens)                    # prefill: writes K/V of the prompt into the cache
    logits = model(next_tok, start_pos=T)     # decode: one token, attends over the cached 0..T

The parameter names follow Meta's reference implementation (``tok_embeddings``, ``layers.N.attention.wq``,
``feed_forward.w1`` ...), so a Meta checkpoint loads as is; :mod:`pytorch_llama2_from_scratch.loading` maps the
Hugging Face names onto these and undoes the q/k row permutation HF applies for its half-split RoPE.

What changes from GPT-2 (lesson 01 walks through it):

* pre-norm with **RMSNorm** instead of LayerNorm, no biases anywhere;
* **rotary position embeddings** (RoPE) applied to q and k inside every attention layer, no learned positions;
* **SwiGLU** feed-forward ``w2(silu(w1 x) * w3 x)`` with hidden size ``~8/3 * dim`` rounded up;
* **grouped-query attention**: ``n_kv_heads <= n_heads`` key/value heads shared by groups of query heads;
* a **KV cache** so decoding one token costs one row of attention instead of a full re-forward.

Later open models are the same decoder with a few options (``ModelArgs`` fields, all off for Llama-2; lessons
14-16 explain them):

* ``rope_scaling={"rope_type": "llama3", ...}`` -- Llama 3.1/3.2 stretch the low RoPE frequencies for long context;
* ``tie_embeddings`` -- the output matrix *is* the embedding (Llama 3.2 1B/3B, SmolLM2, small Qwen models);
* ``qkv_bias`` -- biases on the q, k and v projections (Qwen2 / Qwen2.5);
* ``qk_norm`` and ``head_dim`` -- an RMSNorm over each head of q and k before RoPE, and a head size that is not
  ``dim / n_heads`` (Qwen3);
* ``sliding_window`` -- each token attends to the last ``sliding_window`` tokens only (Mistral).

Symbols used in the docstrings: B batch, T new tokens in this call, S = start_pos + T cached slots attended
over, D = dim, H = n_heads, KV = n_kv_heads, hd = head_dim (D / H unless set), V = vocab_size, W = sliding_window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

# ============================================================================================ configuration

_PRESETS: dict[str, dict] = {
    # Llama-2 params.json values (Touvron et al. 2023, table 1; github.com/meta-llama/llama). Context 4096.
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256, max_seq_len=4096),
    "llama2-13b": dict(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, multiple_of=256, max_seq_len=4096),
    "llama2-70b": dict(
        dim=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        vocab_size=32000,
        multiple_of=4096,
        ffn_dim_multiplier=1.3,
        max_seq_len=4096,
    ),
    # Small enough for unit tests and CPU training in seconds.
    "tiny": dict(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=256,
        multiple_of=32,
        max_seq_len=128,
        max_batch_size=8,
    ),
}


@dataclass
class ModelArgs:
    """Every hyper-parameter of a LLaMA-2 model (names as in Meta's ``params.json``).

    ``n_kv_heads=None`` means ``n_heads`` (plain multi-head attention); it is resolved in ``__post_init__``.
    ``hidden_dim`` overrides the SwiGLU hidden-size rule (see :func:`ffn_hidden_dim`), e.g. to match a
    Hugging Face ``intermediate_size``. ``max_batch_size`` and ``max_seq_len`` size the KV cache.
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_batch_size: int = 32
    max_seq_len: int = 2048
    # ---- options of later model families (defaults = Llama-2)
    explicit_head_dim: int | None = None  # Qwen3: head size independent of dim / n_heads
    qkv_bias: bool = False  # Qwen2: biases on wq, wk, wv
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k, before RoPE
    tie_embeddings: bool = False  # output.weight is tok_embeddings.weight
    rope_scaling: dict | None = field(default=None)  # {"rope_type": "llama3", "factor", ...} (Llama 3.1+)
    sliding_window: int | None = None  # Mistral: attend to the last W tokens only

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {value!r}")
        for name in ("max_batch_size", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {value!r}")
        if self.explicit_head_dim is not None:
            value = self.explicit_head_dim
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelArgs.explicit_head_dim must be a positive integer or None, got {value!r}")
        elif self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"ModelArgs.sliding_window must be a positive integer or None, got {window!r}")
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads} "
                "(every key/value head must serve the same number of query heads)"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim = dim / n_heads = {self.head_dim} must be even for rotary embeddings")
        if self.hidden_dim is not None and (not isinstance(self.hidden_dim, int) or self.hidden_dim < 1):
            raise ValueError(f"ModelArgs.hidden_dim must be a positive integer or None, got {self.hidden_dim!r}")
        if self.ffn_dim_multiplier is not None and self.ffn_dim_multiplier <= 0:
            raise ValueError(f"ffn_dim_multiplier must be > 0, got {self.ffn_dim_multiplier}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")

    # ----------------------------------------------------------------------------------- derived sizes
    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim if self.explicit_head_dim is not None else self.dim // self.n_heads

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head (1 = MHA, n_heads = MQA)."""
        return self.n_heads // self.n_kv_heads

    @property
    def ffn_hidden(self) -> int:
        """The SwiGLU hidden size actually used (the override, else the rule)."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count computed from the args alone (no model is built).

        per layer:  D*(H*hd) + 2*D*(KV*hd) + (H*hd)*D     wq, wk, wv, wo
                  + (H*hd + 2*KV*hd)                       q/k/v biases (qkv_bias)
                  + 2*hd                                   q_norm, k_norm (qk_norm)
                  + 3*D*F                                  w1, w2, w3 (F = ffn hidden size)
                  + 2*D                                    attention_norm, ffn_norm
        total:      n_layers * per_layer + D (final norm) + V*D (tok_embeddings) + V*D (output, unless tied)
        """
        d, hd, f = self.dim, self.head_dim, self.ffn_hidden
        attn = d * self.n_heads * hd + 2 * d * self.n_kv_heads * hd + self.n_heads * hd * d
        if self.qkv_bias:
            attn += self.n_heads * hd + 2 * self.n_kv_heads * hd
        if self.qk_norm:
            attn += 2 * hd
        per_layer = attn + 3 * d * f + 2 * d
        total = self.n_layers * per_layer + d
        if include_embeddings:
            total += (1 if self.tie_embeddings else 2) * self.vocab_size * d
        return total

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def preset(cls, name: str, **overrides) -> ModelArgs:
        """``ModelArgs.preset("llama2-7b")`` / ``"llama2-13b"`` / ``"llama2-70b"`` / ``"tiny"``, with overrides."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(_PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown ModelArgs field(s) {sorted(unknown)}; valid fields: {sorted(known)}")
        return cls(**{**_PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return list(_PRESETS)

    def replace(self, **changes) -> ModelArgs:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU hidden-size rule of Meta's ``FeedForward``.

    Start from GPT's ``4*dim``, take 2/3 of it (SwiGLU has three matrices instead of two, so this keeps the
    parameter count of a 4x MLP), scale by ``ffn_dim_multiplier`` if given, round **up** to ``multiple_of``::

        7B:  4*4096=16384 -> 2/3 -> 10922 -> round up to 256  -> 11008
        70B: 4*8192=32768 -> 2/3 -> 21845 -> *1.3 -> 28398 -> round up to 4096 -> 28672
    """
    hidden = 4 * dim
    hidden = int(2 * hidden / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def kv_cache_bytes(args: ModelArgs, batch: int, context: int, dtype: torch.dtype = torch.float16) -> int:
    """Bytes of a KV cache for ``batch`` sequences of ``context`` tokens.

        bytes = 2 (K and V) * n_layers * batch * context * n_kv_heads * head_dim * bytes_per_element

    Grouped-query attention shrinks it by ``n_heads / n_kv_heads`` (8x for Llama-2 70B).
    """
    if batch < 1 or context < 1:
        raise ValueError(f"batch and context must be >= 1, got batch={batch}, context={context}")
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * args.n_layers * batch * context * args.n_kv_heads * args.head_dim * element


# ============================================================================================ RMSNorm


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): no mean subtraction, no bias.

        y = x / sqrt(mean(x^2) + eps) * weight

    Computed in float32 and cast back, as in Meta's code, so half-precision models stay stable.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x.float()).type_as(x) * self.weight


# ============================================================================================ rotary embeddings


ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_rope_scaling(scaling) -> dict:
    """Validate a RoPE-scaling dict; only ``rope_type`` ``"default"`` and ``"llama3"`` are implemented."""
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or None, got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if rope_type == "llama3":
        missing = [k for k in _LLAMA3_KEYS if k not in scaling]
        if missing:
            raise ValueError(f"llama3 rope scaling lacks {', '.join(missing)}")
        for k in _LLAMA3_KEYS:
            v = scaling[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
                raise ValueError(f"llama3 rope scaling {k} must be a finite number > 0, got {v!r}")
        if not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
            raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor")
    return scaling


def llama3_scale_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1's RoPE frequency scaling (Meta's ``apply_scaling``; Grattafiori et al. 2024, "The Llama 3 herd").

    With L = original_max_position_embeddings, s = factor, and the wavelength lambda_i = 2 pi / theta_i:

    * lambda_i < L / high_freq_factor (fast rotations, short-range detail): theta_i unchanged;
    * lambda_i > L / low_freq_factor (wavelength longer than the training context): theta_i / s;
    * in between: a smooth mix ``(1 - g) theta_i / s + g theta_i`` with ``g = (L / lambda_i - low) / (high - low)``.

    So positions up to s times the training context land on angles the slow dimensions have already seen.
    """
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    g = ((old_len / wavelen - low) / (high - low)).clamp(0.0, 1.0)  # 0 below low, 1 above high
    scaled = (1 - g) * inv_freq / factor + g * inv_freq
    scaled = torch.where(wavelen < old_len / high, inv_freq, scaled)
    return torch.where(wavelen > old_len / low, inv_freq / factor, scaled)


def rope_inv_freq(
    head_dim: int,
    theta: float = 10000.0,
    device: torch.device | str | None = "cpu",
    scaling: dict | None = None,
) -> torch.Tensor:
    """theta_i = theta^(-2i/hd) for i = 0 .. hd/2-1 (float32), optionally scaled (``rope_type`` llama3)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "llama3":
        inv_freq = llama3_scale_inv_freq(inv_freq, scaling)
    elif rope_type != "default":
        check_rope_scaling(scaling)  # raises, naming the type
    return inv_freq


def precompute_freqs_cis(
    head_dim: int,
    end: int,
    theta: float = 10000.0,
    device: torch.device | str | None = "cpu",
    scaling: dict | None = None,
) -> torch.Tensor:
    """Meta's table of unit complex numbers ``e^{i * m * theta_i}``: shape (end, hd/2), complex64.

    Row m rotates the pair (x_{2i}, x_{2i+1}) of a query/key at position m by the angle m * theta_i.
    """
    inv_freq = rope_inv_freq(head_dim, theta, device, scaling)
    t = torch.arange(end, device=device, dtype=torch.float32)
    angles = torch.outer(t, inv_freq)  # (end, hd/2)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k with Meta's **interleaved** convention: consecutive pairs are complex numbers.

    xq: (B, T, H, hd), xk: (B, T, KV, hd), freqs_cis: (T, hd/2) or (B, T, hd/2) complex.
    (x_{2i} + i x_{2i+1}) * e^{i m theta_i}, computed in float32 and cast back to the input dtype.
    """
    return _rotate_interleaved(xq, freqs_cis), _rotate_interleaved(xk, freqs_cis)


def _rotate_interleaved(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    x_c = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, h, hd) -> (B, T, h, hd/2) complex
    if freqs_cis.dim() == 2:  # (T, hd/2) -> (1, T, 1, hd/2)
        freqs_cis = freqs_cis[None, :, None, :]
    else:  # (B, T, hd/2) -> (B, T, 1, hd/2)
        freqs_cis = freqs_cis[:, :, None, :]
    return torch.view_as_real(x_c * freqs_cis).flatten(-2).type_as(x)  # (B, T, h, hd/2, 2) -> (B, T, h, hd)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's convention: the feature vector is split in halves [x1, x2] -> [-x2, x1]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for the half-split convention: (..., hd) with the hd/2 angles repeated twice."""
    angles = positions[..., None].float() * rope_inv_freq(head_dim, theta, positions.device)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary_emb_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF-style rotation ``x * cos + rotate_half(x) * sin``: pairs are (x_i, x_{i+hd/2}). x: (..., T, hd)."""
    return x * cos + rotate_half(x) * sin


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta -> HF: reorder the rows of a q/k projection so half-split RoPE equals interleaved RoPE.

    Within each head the output features go from interleaved ``(r0, i0, r1, i1, ...)`` to halves
    ``(r0, r1, ..., i0, i1, ...)``. w: (n_heads*hd, in) -> same shape.
    """
    rows = w.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(f"cannot permute {tuple(w.shape)} for {n_heads} heads: rows must be n_heads * even hd")
    hd = rows // n_heads
    # (H*hd, in) -> (H, hd/2, 2, in) -> (H, 2, hd/2, in) -> (H*hd, in)
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF -> Meta: the inverse of :func:`permute_for_hf` (halves back to interleaved pairs)."""
    rows = w.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(f"cannot un-permute {tuple(w.shape)} for {n_heads} heads: rows must be n_heads * even hd")
    hd = rows // n_heads
    # (H*hd, in) -> (H, 2, hd/2, in) -> (H, hd/2, 2, in) -> (H*hd, in)
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# ============================================================================================ attention


# PyTorch >= 2.5 shares key/value heads inside scaled_dot_product_attention (enable_gqa=True).
_SDPA_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, S, KV, hd) -> (B, S, KV*n_rep, hd): each key/value head serves n_rep consecutive query heads."""
    if n_rep == 1:
        return x
    b, s, kv, hd = x.shape
    return x[:, :, :, None, :].expand(b, s, kv, n_rep, hd).reshape(b, s, kv * n_rep, hd)


class Attention(nn.Module):
    """Causal self-attention with RoPE, grouped-query heads and a KV cache.

    The cache is two registered (non-persistent) buffers ``cache_k``/``cache_v`` of shape
    (max_batch_size, max_seq_len, KV, hd): they follow ``model.to(device/dtype)`` but are not part of the
    ``state_dict``. Slot s of row b holds the key (already rotated by RoPE) and the value of the s-th token fed
    to sequence b, padding included; the rotation is applied once, when the token enters the cache.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.n_rep = args.n_rep
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=args.qkv_bias)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=args.qkv_bias)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        # Qwen3: RMSNorm over the hd features of every query / key head (weights shared by the heads)
        self.q_norm = RMSNorm(self.head_dim, eps=args.norm_eps) if args.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=args.norm_eps) if args.qk_norm else None
        cache_shape = (args.max_batch_size, args.max_seq_len, args.n_kv_heads, self.head_dim)
        self.register_buffer("cache_k", torch.zeros(cache_shape), persistent=False)
        self.register_buffer("cache_v", torch.zeros(cache_shape), persistent=False)

    def reset_cache(self) -> None:
        self.cache_k.zero_()
        self.cache_v.zero_()

    def forward(
        self,
        x: torch.Tensor,
        freqs_cis: torch.Tensor,
        mask: torch.Tensor | None,
        start_pos: int = 0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """x: (B, T, D); freqs_cis: (T or B,T, hd/2); mask: bool (B|1, 1, T, S), True = may attend, or None.

        With ``use_cache`` the new K/V go to slots start_pos..start_pos+T-1 and the queries attend over slots
        0..S-1 (S = start_pos + T); without it they attend over the T new tokens only.
        """
        b, t, _ = x.shape
        xq = self.wq(x).view(b, t, self.n_heads, self.head_dim)  # (B, T, D) -> (B, T, H, hd)
        xk = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, D) -> (B, T, KV, hd)
        xv = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:  # per head, before the rotation
            xq, xk = self.q_norm(xq), self.k_norm(xk)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)

        if use_cache:
            end = start_pos + t
            # The cache never carries autograd history: store detached copies.
            self.cache_k[:b, start_pos:end] = xk.detach().to(self.cache_k.dtype)
            self.cache_v[:b, start_pos:end] = xv.detach().to(self.cache_v.dtype)
            if torch.is_grad_enabled() and xk.requires_grad:
                # Keep gradients flowing to this call's keys/values (past slots are constants).
                keys = torch.cat((self.cache_k[:b, :start_pos].to(xk.dtype), xk), dim=1)
                values = torch.cat((self.cache_v[:b, :start_pos].to(xv.dtype), xv), dim=1)
            else:
                keys = self.cache_k[:b, :end].to(xq.dtype)  # (B, S, KV, hd)
                values = self.cache_v[:b, :end].to(xq.dtype)
        else:
            keys, values = xk, xv

        q = xq.transpose(1, 2)  # (B, T, H, hd) -> (B, H, T, hd)
        if self.n_rep > 1 and not _SDPA_GQA:
            keys = repeat_kv(keys, self.n_rep)  # (B, S, KV, hd) -> (B, S, H, hd)
            values = repeat_kv(values, self.n_rep)
        k = keys.transpose(1, 2)  # (B, S, KV|H, hd) -> (B, KV|H, S, hd)
        v = values.transpose(1, 2)
        # softmax(q k^T / sqrt(hd) + mask) v; with enable_gqa, query head h reads key/value head h // n_rep,
        # exactly what repeat_kv spells out, without copying the cache n_rep times every step.
        gqa = {"enable_gqa": True} if self.n_rep > 1 and _SDPA_GQA else {}
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, H, T, hd) -> (B, T, H*hd)
        return self.wo(out)


# ============================================================================================ feed-forward


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): ``w2( silu(w1 x) * (w3 x) )`` with hidden size F = ``args.ffn_hidden``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate   (HF: gate_proj)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down   (HF: down_proj)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up     (HF: up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


# ============================================================================================ decoder layer


class TransformerBlock(nn.Module):
    """One decoder layer, pre-norm residual:

    h   = x + Attention(RMSNorm(x))
    out = h + FeedForward(RMSNorm(h))
    """

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, freqs_cis, mask, start_pos: int = 0, use_cache: bool = True) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, start_pos, use_cache)
        return h + self.feed_forward(self.ffn_norm(h))


# ============================================================================================ transformer


class Transformer(nn.Module):
    """The LLaMA-2 decoder: embeddings -> n_layers x TransformerBlock -> RMSNorm -> output projection."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.vocab_size = args.vocab_size
        self.n_layers = args.n_layers
        # `_weight=` skips nn.Embedding's own N(0, 1) init: init_weights() below fills it, and on the meta device
        # (used by the loaders) that init would import torch._dynamo just to do nothing.
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim, _weight=torch.empty(args.vocab_size, args.dim))
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight  # one matrix, used twice
        # RoPE table: a plain attribute (not a buffer) so `.half()` can never truncate the complex numbers;
        # it is built lazily, in float32, on the device of the first forward.
        self._freqs_cis: torch.Tensor | None = None
        if self.output.weight.device.type != "meta":  # on the meta device there is nothing to fill (loaders)
            self.init_weights()

    # ----------------------------------------------------------------------------------- utilities
    def init_weights(self, std: float = 0.02) -> None:
        """N(0, std) for every matrix, zeros for biases, ones for the norms (used when training from scratch)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def tie_weights(self) -> None:
        """Re-tie ``output.weight`` to the embedding (after moving or re-allocating parameters)."""
        if self.args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def reset_cache(self) -> None:
        """Zero the KV cache of every layer (a new batch of prompts starts from slot 0 anyway)."""
        for layer in self.layers:
            layer.attention.reset_cache()

    def cache_nbytes(self) -> int:
        """Bytes actually allocated for the KV cache buffers."""
        caches = (b for n, b in self.named_buffers() if n.endswith(("cache_k", "cache_v")))
        return sum(b.nelement() * b.element_size() for b in caches)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def freqs_cis(self, device: torch.device) -> torch.Tensor:
        """The (max_seq_len, hd/2) complex64 RoPE table on ``device`` (cached)."""
        if self._freqs_cis is None or self._freqs_cis.device != device:
            self._freqs_cis = precompute_freqs_cis(
                self.args.head_dim, self.args.max_seq_len, self.args.rope_theta, device, self.args.rope_scaling
            )
        return self._freqs_cis

    # ----------------------------------------------------------------------------------- forward
    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        use_cache: bool = True,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) in float32 for token ids ``tokens`` (B, T).

        Cache slots and positions
        -------------------------
        * ``use_cache=True``: the K/V of the T tokens are written to cache slots ``start_pos .. start_pos+T-1``
          and every query attends causally over slots ``0 .. start_pos+T-1`` (query at slot s sees slots <= s).
          Prefill = one call with the whole prompt at ``start_pos=0``; decode = calls with T=1 at
          ``start_pos = number of tokens already cached``; chunked prefill = several calls at increasing
          ``start_pos``. Slots before ``start_pos`` must have been written by earlier calls of the same batch.
        * ``use_cache=False``: an ordinary causal forward over the T tokens (the cache is neither read nor
          written); ``start_pos`` only offsets the positions.

        Padded batches (prompts of different lengths)
        ---------------------------------------------
        Left-pad the prompts to a common length and pass ``attention_mask`` (B, S') of 1 (real token) / 0
        (padding) covering **all slots so far**: S' >= start_pos + T with the cache (columns beyond
        start_pos+T are ignored, so a generate loop can keep one (B, prompt+max_new) mask and fill it as it
        goes), S' == T without it. Keys on padding slots are masked out. Unless ``positions`` (B, T) is given,
        each token's RoPE position is the number of real tokens before it in its row::

            positions = (cumsum(attention_mask, -1) - 1).clamp(min=0)[:, start_pos:start_pos+T]

        so row b of a padded batch produces exactly the logits of prompt b run alone (logits at padding slots
        are meaningless). A padding query may still attend to itself, which keeps every softmax row finite.

        Errors: ``start_pos + T > max_seq_len``, ``B > max_batch_size`` (with the cache), or a token id outside
        ``[0, vocab_size)`` raise ``ValueError`` naming the numbers.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, seq_len), got {tuple(tokens.shape)}")
        b, t = tokens.shape
        if t < 1:
            raise ValueError("tokens must contain at least one token per row")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be integer token ids (torch.long), got dtype {tokens.dtype}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size}) of this model")
        if not isinstance(start_pos, int) or start_pos < 0:
            raise ValueError(f"start_pos must be a non-negative int, got {start_pos!r}")
        end = start_pos + t
        if end > self.args.max_seq_len:
            raise ValueError(
                f"start_pos {start_pos} + sequence length {t} = {end} exceeds max_seq_len {self.args.max_seq_len}"
            )
        if use_cache and b > self.args.max_batch_size:
            raise ValueError(f"batch size {b} exceeds max_batch_size {self.args.max_batch_size} of the KV cache")
        device = tokens.device
        n_keys = end if use_cache else t  # S: number of key slots attended over

        key_ok = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != b:
                raise ValueError(f"attention_mask must have shape ({b}, S), got {tuple(attention_mask.shape)}")
            if use_cache and attention_mask.shape[1] < end:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} slots but start_pos + T = {end}; "
                    "it must cover every cached slot (left padding included)"
                )
            if not use_cache and attention_mask.shape[1] != t:
                raise ValueError(f"without the cache attention_mask must have shape ({b}, {t})")
            key_ok = attention_mask[:, :n_keys].to(device=device, dtype=torch.bool)  # (B, S)

        if positions is None:
            if key_ok is not None:
                pos_all = (key_ok.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
                positions = pos_all[:, n_keys - t :] + (0 if use_cache else start_pos)
            else:
                positions = None  # start_pos .. end-1 for every row: a slice of the table, no gather
        else:
            if positions.shape not in ((b, t), (t,)):
                raise ValueError(f"positions must have shape ({b}, {t}) or ({t},), got {tuple(positions.shape)}")
            positions = positions.to(device=device, dtype=torch.long)
            if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.args.max_seq_len):
                raise ValueError(f"positions must lie in [0, max_seq_len={self.args.max_seq_len})")
        table = self.freqs_cis(device)
        freqs_cis = table[start_pos:end] if positions is None else table[positions]  # (T, hd/2) or (B, T, hd/2)

        # Boolean mask, True = may attend: key slot j <= query slot s, and j is a real token (or j == s); with a
        # sliding window also s - j < W. (Padding is only on the left, so slot distance = position distance.)
        window = self.args.sliding_window
        mask = None
        if key_ok is not None or t > 1 or (window is not None and n_keys > window):
            q_slots = torch.arange(n_keys - t, n_keys, device=device)  # (T,) slot of each query
            k_slots = torch.arange(n_keys, device=device)  # (S,)
            causal = k_slots[None, :] <= q_slots[:, None]  # (T, S)
            if window is not None:
                causal &= k_slots[None, :] > q_slots[:, None] - window
            if key_ok is None:
                mask = causal[None, None]  # (1, 1, T, S)
            else:
                diag = k_slots[None, :] == q_slots[:, None]
                mask = (causal[None] & key_ok[:, None, :]) | diag[None]  # (B, T, S)
                mask = mask[:, None]  # (B, 1, T, S)

        h = self.tok_embeddings(tokens)  # (B, T) -> (B, T, D)
        for layer in self.layers:
            h = layer(h, freqs_cis, mask, start_pos, use_cache)
        h = self.norm(h)
        return self.output(h).float()  # (B, T, D) -> (B, T, V)
