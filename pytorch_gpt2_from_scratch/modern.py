"""Beyond GPT-2: the architecture changes of the modern training recipe, each an option of one model.

``ModernGPT`` is GPT-2 (``model.py``) with every change of Section 5 as a switch of :class:`ModernConfig`. With all
switches off it computes exactly GPT-2's function, with the same parameter names, so ``model.GPT``'s weights load
into it unchanged (tested). ``model.py`` itself is not touched: it keeps loading OpenAI's checkpoints.

The switches, in the order the lessons turn them on (``x`` is the residual stream, ``(B, T, C)``):

* ``rope``: no learned position table ``wpe``; instead queries and keys are rotated by an angle proportional to
  their position (rotary position embeddings, Su et al. 2021). Pair ``(x_i, x_{i+hs/2})`` of a head vector at
  position ``m`` is rotated by ``m * theta_i`` with ``theta_i = base^(-2i/hs)``::

      rope(x)_i        = x_i cos(m theta_i) - x_{i+hs/2} sin(m theta_i)
      rope(x)_{i+hs/2} = x_{i+hs/2} cos(m theta_i) + x_i sin(m theta_i)

  so ``rope(q_m) . rope(k_n)`` depends on ``m - n`` only: attention sees relative positions.
  Chapter 3 (Llama 2) builds the same function; chapters only import *earlier* chapters, so it is written here
  again in a few lines and a test checks that both agree.
* ``norm="rmsnorm"``: ``RMSNorm(x) = g * x / sqrt(mean(x^2) + eps)`` instead of LayerNorm (no mean subtraction,
  no bias; Zhang & Sennrich 2019), and ``bias=False`` drops the biases of every Linear layer (as in Llama).
* ``qk_norm``: RMS-normalise each head's query and key (no gain) before the dot product, so the attention logits
  ``q . k / sqrt(hs)`` stay bounded however large the weights grow (Dehghani et al. 2023; modded-nanogpt).
* ``mlp="relu2"``: ``c_proj(relu(c_fc(x))^2)`` instead of tanh-GELU (So et al. 2021, "Primer").
* ``tie_weights=False``: separate ``lm_head`` and ``wte`` matrices (input and output embeddings are free to differ).
* ``zero_init``: the output projections (attention and MLP ``c_proj``, and the untied ``lm_head``) start at 0:
  every block starts as the identity on the residual stream and the model's first prediction is uniform
  (loss = ln V exactly with an untied head).
* ``softcap``: ``logits = s * tanh(logits / s)`` bounds every logit to ``(-s, s)`` (Gemma 2; modded-nanogpt uses
  s = 30 and later 15), which keeps the model from becoming over-confident early in training.
* ``value_embed``: a second token table ``vte`` whose row for the current token is added to every layer's values,
  ``v_l = v_l + lambda_l * vte[idx]`` (modded-nanogpt's "value embeddings"), with a learnable ``lambda_l`` per layer.
* ``x0_skip``: every block reads a learnable mix of the stream and of the embedding,
  ``x = a_l * x + b_l * x_0`` (``a_l = 1, b_l = 0`` at init; modded-nanogpt's embedding skip connections).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2")


@dataclass
class ModernConfig:
    """GPT-2 sizes plus the switches of Section 5; the defaults (all off) are GPT-2."""

    block_size: int = 128
    vocab_size: int = 50257
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = True
    rope: bool = False
    rope_base: float = 10000.0
    norm: str = "layernorm"
    qk_norm: bool = False
    mlp: str = "gelu"
    tie_weights: bool = True
    zero_init: bool = False
    softcap: float | None = None
    value_embed: bool = False
    x0_skip: bool = False

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModernConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.rope and self.head_size % 2:
            raise ValueError(f"rope needs an even head size, got n_embd / n_head = {self.head_size}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be > 0 or None, got {self.softcap!r}")
        if self.zero_init and self.tie_weights:
            raise ValueError("zero_init needs tie_weights=False: a zero lm_head would also zero the token embeddings")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- the pieces
def rope_cos_sin(T: int, head_size: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of the angles ``m * theta_i``, each ``(T, hs/2)`` float32, ``theta_i = base^(-2i/hs)``."""
    theta = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32, device=device) / head_size)  # (hs/2,)
    angles = torch.arange(T, dtype=torch.float32, device=device)[:, None] * theta[None, :]  # (T, 1) * (1, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x_i, x_{i+hs/2})`` of ``x`` ``(B, nh, T, hs)`` by the angles of ``cos/sin`` ``(T, hs/2)``."""
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)  # -> 2 x (B, nh, T, hs/2)
    y1 = x1 * cos - x2 * sin  # (T, hs/2) broadcasts over (B, nh)
    y2 = x2 * cos + x1 * sin
    return torch.cat((y1, y2), dim=-1).type_as(x)  # 2 x (B, nh, T, hs/2) -> (B, nh, T, hs)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(mean(x^2, last dim) + eps)`` without a gain (used for QK-norm)."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """``relu(x)^2`` (Primer's squared ReLU)."""
    return F.relu(x).square()


class _SoftCap(torch.autograd.Function):
    """``y = cap tanh(x / cap)`` with ``dy/dx = 1 - tanh^2 = 1 - (y / cap)^2``: only ``y`` is saved, and both
    passes work in place on one new tensor. The logits are ``(B, T, V)``, the largest tensor of the step (25 M
    numbers at B 4 x T 128 x V 50257): written as three separate ops, forward and backward allocate and sweep it
    about six times, which made the soft-cap cost ~0.6 s of a ~1.4 s step on a 2-core CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cap: float) -> torch.Tensor:
        y = x.mul(1.0 / cap).tanh_().mul_(cap)
        ctx.save_for_backward(y)
        ctx.cap = cap
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        return y.mul(1.0 / ctx.cap).square_().neg_().add_(1.0).mul_(grad), None


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(logits / cap)``: about the identity for ``|logits| << cap``, never beyond ``+-cap``."""
    return _SoftCap.apply(logits, cap)


def _norm(config: ModernConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-6)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class ModernAttention(nn.Module):
    """Causal self-attention with optional RoPE, QK-norm and value embeddings (names as ``model.py``)."""

    def __init__(self, config: ModernConfig):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True
        if config.value_embed:
            self.ve_lambda = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, rope=None, ve=None) -> torch.Tensor:
        B, T, C = x.size()
        nh, hs = self.config.n_head, self.config.head_size
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        if ve is not None:
            v = v + self.ve_lambda * ve  # (B, T, C): the token's value embedding joins its values
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)
        v = v.view(B, T, nh, hs).transpose(1, 2)
        if self.config.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.c_proj(y)


class ModernMLP(nn.Module):
    def __init__(self, config: ModernConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True
        self.act = relu2 if config.mlp == "relu2" else nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class ModernBlock(nn.Module):
    def __init__(self, config: ModernConfig):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = ModernAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = ModernMLP(config)
        if config.x0_skip:
            self.skip = nn.Parameter(torch.tensor([1.0, 0.0]))  # (a_l, b_l): x = a_l x + b_l x_0

    def forward(self, x, x0=None, rope=None, ve=None) -> torch.Tensor:
        if x0 is not None:
            x = self.skip[0] * x + self.skip[1] * x0
        x = x + self.attn(self.ln_1(x), rope, ve)
        return x + self.mlp(self.ln_2(x))


class ModernGPT(nn.Module):
    """``forward(idx, targets=None) -> (logits, loss)`` like ``model.GPT``."""

    def __init__(self, config: ModernConfig):
        super().__init__()
        self.config = config
        V, C = config.vocab_size, config.n_embd
        parts = dict(wte=nn.Embedding(V, C))
        if not config.rope:
            parts["wpe"] = nn.Embedding(config.block_size, C)
        if config.value_embed:
            parts["vte"] = nn.Embedding(V, C)
        parts["h"] = nn.ModuleList([ModernBlock(config) for _ in range(config.n_layer)])
        parts["ln_f"] = _norm(config)
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(C, V, bias=False)
        if config.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight
        if config.rope:
            cos, sin = rope_cos_sin(config.block_size, config.head_size, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        if config.zero_init:
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight") or name == "lm_head.weight":
                    nn.init.zeros_(p)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's init (``model.GPT._init_weights``): N(0, 0.02), residual projections / sqrt(2 n_layer)."""
        std = 0.02
        if isinstance(module, nn.Linear):
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                std *= (2 * self.config.n_layer) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if module.weight is not self.lm_head.weight:
                nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        tr = self.transformer
        x = tr.wte(idx)  # (B, T) -> (B, T, C)
        if "wpe" in tr:
            x = x + tr.wpe(torch.arange(T, device=idx.device))  # (B, T, C) + (T, C)
        rope = (self.rope_cos, self.rope_sin) if self.config.rope else None
        ve = tr.vte(idx) if "vte" in tr else None  # (B, T, C)
        x0 = x if self.config.x0_skip else None
        for block in tr.h:
            x = block(x, x0, rope, ve)
        logits = self.lm_head(tr.ln_f(x))  # (B, T, C) -> (B, T, V)
        if self.config.softcap is not None:
            logits = soft_cap(logits.float(), self.config.softcap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T).long(), ignore_index=-100)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
