"""Decoding at the memory-bandwidth limit: a static KV cache, a fixed-shape decode step and ``torch.compile``.

    from pytorch_llama2_from_scratch.fast_decode import FastDecoder

    dec = FastDecoder(model, max_seq_len=256, compile=True)   # compiles on the first step
    tokens = dec.generate(prompt_ids, max_new_tokens=128)    # greedy, batch 1

Why decode is memory-bound: at batch 1 every new token multiplies one vector by *every* weight matrix once
(GEMV), so each step reads all the weights from memory and does only 2 flops per weight read:

    bytes/token  ~=  sum of the weight bytes (embedding: one row)  +  K/V cache bytes attended over
    tok/s limit   =  GEMV bandwidth (bytes/s, measured)  /  bytes/token

Everything else (Python, kernel launches, small tensors) is time spent *between* the bytes. This module removes
what can be removed without changing the arithmetic:

* :class:`StaticKVCache` -- K/V buffers of one fixed shape ``(B, KV, S_max, hd)`` per layer, written in place
  with ``index_copy_`` at the positions ``pos``; the query attends over **all** ``S_max`` slots with the mask
  ``slot <= pos``, so every decode step has the same shapes and allocates nothing new for the cache.
* :class:`FastDecoder` -- a forward over the model's own modules (its ``nn.Linear``\\ s, norms, feed-forward;
  quantised linears from :mod:`quantize` work unchanged) that reads and writes the static cache. Its one-token
  step can be compiled with ``torch.compile(fullgraph=True, dynamic=False)`` (on CUDA ``mode="reduce-overhead"``
  also captures a CUDA graph), which fuses the small ops between the matmuls and removes Python from the loop.
* :func:`gemv_bandwidth` -- the bandwidth limit measured on the same device, dtype and thread count;
  :func:`bytes_per_token`; :func:`benchmark` -- dynamic vs static vs compiled (and HF ``generate`` if given),
  interleaved, with the spread, the compile time and the break-even number of tokens.

RoPE here is computed with real arithmetic from the model's own table (``cos = Re freqs_cis``, ``sin = Im``)::

    (x_{2i}, x_{2i+1})  ->  (x_{2i} cos - x_{2i+1} sin,  x_{2i} sin + x_{2i+1} cos)

which equals the complex product in :func:`model.apply_rotary_emb` (tested) and compiles without complex dtypes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pytorch_llama2_from_scratch import cpu_kernels
from pytorch_llama2_from_scratch.model import Attention, ModelArgs, Transformer

__all__ = [
    "FastDecoder",
    "StaticKVCache",
    "benchmark",
    "bytes_per_token",
    "describe",
    "gemv_bandwidth",
    "lesson_model",
    "measure",
    "model_gemv_probe",
    "print_speed_rows",
    "random_llama_pair",
    "static_methods",
    "warm_and_measure",
    "weight_bytes",
]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the activations: the norms' weights (they stay floating point under weight quantisation)."""
    return model.norm.weight.dtype


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ============================================================================================ static cache


class StaticKVCache(nn.Module):
    """K and V of every layer in buffers of fixed shape ``(B, KV, S_max, hd)``; slot s holds position s.

    ``update(layer, pos, k, v)`` writes the new keys/values (B, KV, T, hd) to slots ``pos`` (T,) in place and
    returns the full buffers; stale slots beyond the current position are never read because the attention mask
    is ``slot <= query position`` (so rolling back, as speculative decoding does, is just writing over them).
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_seq_len, head_dim)
        for i in range(n_layers):
            self.register_buffer(f"k{i}", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
            self.register_buffer(f"v{i}", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.n_layers = n_layers
        self.max_seq_len = max_seq_len

    def update(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        ck, cv = getattr(self, f"k{layer}"), getattr(self, f"v{layer}")
        ck.index_copy_(2, pos, k.to(ck.dtype))  # (B, KV, T, hd) into slots pos of (B, KV, S_max, hd)
        cv.index_copy_(2, pos, v.to(cv.dtype))
        return ck, cv

    def nbytes(self) -> int:
        return sum(b.nelement() * b.element_size() for b in self.buffers())

    def reset(self) -> None:
        for b in self.buffers():
            b.zero_()


def _attention_by_reduction(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor):
    """Causal attention of T queries over the S cache slots written as broadcasts and sums (no matmul call):

        s[b, g, r, t, j] = sum_d q[b, t, g*R + r, d] * K[b, g, j, d] / sqrt(hd)      (query head h = g*R + r)
        p = softmax_j(s masked to -inf where mask[t, j] is False);   out[b, t, h, :] = sum_j p[..., j] * V[b, g, j, :]

    q (B, T, H, hd); keys, values (B, KV, S, hd); mask (T, S) bool; returns (B, T, H*hd). In a compiled one-token
    step inductor fuses each line into one loop nest over the S <= a few thousand slots, where
    ``scaled_dot_product_attention`` is an opaque call with its own set-up per layer (measured on one CPU core at
    124.7 M parameters: 0.7 ms of a 36 ms step for 12 layers; this form +2 % tok/s). Eager it would materialise
    (B, KV, R, T, S, hd) products, so the eager path keeps SDPA."""
    b, t, h, hd = q.shape
    kv = keys.shape[1]
    qg = q.view(b, t, kv, h // kv, hd).permute(0, 2, 3, 1, 4)  # (B, T, H, hd) -> (B, KV, R, T, hd)
    s = (qg[..., None, :] * keys[:, :, None, None]).sum(-1) * hd**-0.5  # (B, KV, R, T, 1, hd)*(B, KV, 1, 1, S, hd)
    p = s.masked_fill(~mask, float("-inf")).softmax(-1)  # (B, KV, R, T, S)
    out = (p[..., None] * values[:, :, None, None]).sum(-2)  # (B, KV, R, T, S, 1)*(B, KV, 1, 1, S, hd) -> (.., hd)
    return out.permute(0, 3, 1, 2, 4).reshape(b, t, h * hd)  # (B, KV, R, T, hd) -> (B, T, H*hd)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE in real arithmetic. x: (B, T, h, hd); cos/sin: (T, hd/2) float32."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, T, h, hd) -> (B, T, h, hd/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]  # (T, hd/2) -> (1, T, 1, hd/2)
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)  # (B, T, h, hd/2, 2)
    return out.flatten(-2).type_as(x)  # -> (B, T, h, hd)


# ============================================================================================ the decoder


class FastDecoder(nn.Module):
    """Static-cache forward of a :class:`model.Transformer` (batch ``batch``), optionally with a compiled step.

    ``forward(tokens (B, T), pos (T,) long) -> logits (B, T, V)`` float32; ``last_only=True`` returns only the
    last position's logits (B, 1, V), which is all greedy decoding needs (the output head is the largest matrix
    of a small-vocabulary-heavy model, so prefill skips it for the other positions).

    The decoder does not copy the weights: it calls ``model.layers[i].attention.wq`` etc., so quantising the model
    in place (:func:`quantize.quantize_`) before or after building the decoder is seen by it (rebuild the compiled
    step after such a change: ``dec.recompile()``). ``cpp_wrapper`` (CPU, compiled): generate the step's driver
    code in C++ rather than Python (inductor's ``cpp_wrapper``); ``False`` compiles faster. ``step_attention``:
    the attention of the one-token step, ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"reduce"``
    (:func:`_attention_by_reduction`, which inductor fuses); ``"auto"`` = ``"reduce"`` for a compiled step on CPU.
    Prefill always uses SDPA.
    """

    def __init__(
        self,
        model: Transformer,
        batch: int = 1,
        max_seq_len: int | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        cache_dtype: torch.dtype | None = None,
        cpp_wrapper: bool = True,
        step_attention: str = "auto",
    ):
        super().__init__()
        if step_attention not in ("auto", "sdpa", "reduce"):
            raise ValueError(f"step_attention must be 'auto', 'sdpa' or 'reduce', got {step_attention!r}")
        if not isinstance(model, Transformer):
            raise TypeError(f"FastDecoder needs a model.Transformer, got {type(model).__name__}")
        for i, layer in enumerate(model.layers):
            if not isinstance(layer.attention, Attention):
                raise TypeError(
                    f"FastDecoder supports the chapter's Attention only; layer {i} has {type(layer.attention).__name__}"
                )
        args = model.args
        max_seq_len = args.max_seq_len if max_seq_len is None else int(max_seq_len)
        if not 1 <= max_seq_len <= args.max_seq_len:
            raise ValueError(f"max_seq_len must be in [1, {args.max_seq_len}] (the model's), got {max_seq_len}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        self.model = model
        self.batch = batch
        self.max_seq_len = max_seq_len
        device = _device_of(model)
        self.cache = StaticKVCache(
            args.n_layers,
            batch,
            args.n_kv_heads,
            max_seq_len,
            args.head_dim,
            cache_dtype or _compute_dtype(model),
            device,
        )
        table = model.freqs_cis(device)[:max_seq_len]  # (S_max, hd/2) complex64: the model's own RoPE angles
        self.register_buffer("rope_cos", table.real.contiguous(), persistent=False)
        self.register_buffer("rope_sin", table.imag.contiguous(), persistent=False)
        self.register_buffer("slots", torch.arange(max_seq_len, device=device), persistent=False)
        self.window = getattr(args, "sliding_window", None)
        if step_attention == "auto":  # compiled on CPU: the fused reduction; else PyTorch's SDPA kernels
            step_attention = "reduce" if compile and device.type == "cpu" else "sdpa"
        self.step_attention = step_attention
        self.compile_mode = compile_mode
        self.cpp_wrapper = cpp_wrapper
        self.use_compile = compile
        self.compile_seconds: float | None = None  # time of the first compiled call (tracing + code generation)
        self._step = None
        self.recompile()

    def recompile(self) -> None:
        """(Re)build the one-token step: compiled if requested, else the eager forward."""
        self.compile_seconds = None
        if self.use_compile:
            mode = self.compile_mode
            if mode is None and self.cache.k0.device.type == "cuda":
                mode = "reduce-overhead"  # CUDA graphs: one launch per step instead of hundreds
            # CPU: inductor's C++ wrapper calls the kernels from generated C++ instead of a Python function --
            # ~0.1 ms less per matmul call (measured +4 % tok/s at 124.7 M), for ~20 s more compile time
            cpu = self.cache.k0.device.type == "cpu"
            options = {"cpp_wrapper": True} if cpu and self.cpp_wrapper and mode is None else None
            self._step = torch.compile(self._forward_last, fullgraph=True, dynamic=False, mode=mode, options=options)
        else:
            self._step = self._forward_last

    # ----------------------------------------------------------------------------------- forward
    def _forward_last(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.forward(tokens, pos, last_only=True, attention=self.step_attention)

    def forward(
        self, tokens: torch.Tensor, pos: torch.Tensor, last_only: bool = False, attention: str = "sdpa"
    ) -> torch.Tensor:
        if attention not in ("sdpa", "reduce"):
            raise ValueError(f"attention must be 'sdpa' or 'reduce', got {attention!r}")
        m = self.model
        b, t = tokens.shape
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # (T, hd/2)
        mask = self.slots[None, :] <= pos[:, None]  # (T, S_max): key slot <= query position
        if self.window is not None:  # sliding window (Mistral): and query position - key slot < W
            mask = mask & (self.slots[None, :] > pos[:, None] - self.window)
        h = m.tok_embeddings(tokens)  # (B, T) -> (B, T, D)
        for i, layer in enumerate(m.layers):
            attn = layer.attention
            x = layer.attention_norm(h)
            q = attn.wq(x).view(b, t, attn.n_heads, attn.head_dim)  # (B, T, D) -> (B, T, H, hd)
            k = attn.wk(x).view(b, t, attn.n_kv_heads, attn.head_dim)  # (B, T, D) -> (B, T, KV, hd)
            v = attn.wv(x).view(b, t, attn.n_kv_heads, attn.head_dim)
            if getattr(attn, "q_norm", None) is not None:  # Qwen3: RMSNorm per head of q and k, before RoPE
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            keys, values = self.cache.update(i, pos, k.transpose(1, 2), v.transpose(1, 2))  # (B, KV, S_max, hd)
            keys, values = keys[:b].to(q.dtype), values[:b].to(q.dtype)
            if attention == "reduce":
                out = _attention_by_reduction(q, keys, values, mask)  # (B, T, H*hd)
            else:
                gqa = {"enable_gqa": True} if attn.n_rep > 1 else {}
                out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask, **gqa)
                out = out.transpose(1, 2).reshape(b, t, attn.n_heads * attn.head_dim)  # (B,H,T,hd) -> (B,T,H*hd)
            h = h + attn.wo(out)
            h = h + layer.feed_forward(layer.ffn_norm(h))
        if last_only:
            h = h[:, -1:]
        return m.output(m.norm(h)).float()  # (B, T|1, D) -> (B, T|1, V)

    # ----------------------------------------------------------------------------------- decoding
    def _check(self, tokens: torch.Tensor, start: int) -> None:
        if tokens.dim() != 2 or tokens.shape[0] != self.batch:
            raise ValueError(f"tokens must have shape ({self.batch}, T), got {tuple(tokens.shape)}")
        if start < 0 or start + tokens.shape[1] > self.max_seq_len:
            raise ValueError(
                f"positions {start}..{start + tokens.shape[1] - 1} do not fit the static cache of "
                f"max_seq_len {self.max_seq_len}"
            )

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, start: int = 0, last_only: bool = True) -> torch.Tensor:
        """Run T tokens at positions start..start+T-1 (eager: a shape seen once); logits (B, 1 or T, V)."""
        self._check(tokens, start)
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return self.forward(tokens, pos, last_only=last_only)

    @torch.inference_mode()
    def step(self, token: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        """One token (B, 1) at position ``pos``: logits (B, 1, V). The compiled path has fixed shapes."""
        if not torch.is_tensor(pos):
            self._check(token, pos)
            pos = torch.tensor([pos], device=token.device)
        if self.compile_seconds is None and self.use_compile:
            device = token.device
            _sync(device)
            t0 = time.perf_counter()
            out = self._step(token, pos)
            _sync(device)
            self.compile_seconds = time.perf_counter() - t0
            return out.clone()
        out = self._step(token, pos)
        return out.clone() if self.use_compile else out  # CUDA graphs reuse their output buffer

    @torch.inference_mode()
    def generate(self, prompt: Sequence[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
        """Greedy decoding of one prompt (batch 1): the new token ids (stops after ``eos_id`` if given)."""
        if self.batch != 1:
            raise ValueError(f"generate decodes one prompt; this decoder has batch {self.batch}")
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("prompt must contain at least one token")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if len(prompt) + max_new_tokens - 1 > self.max_seq_len:
            raise ValueError(
                f"prompt {len(prompt)} + max_new_tokens {max_new_tokens} exceeds the static cache's max_seq_len "
                f"{self.max_seq_len}"
            )
        if max_new_tokens == 0:
            return []
        device = self.cache.k0.device
        ids = torch.tensor([prompt], device=device)
        out = torch.empty(max_new_tokens, dtype=torch.long, device=device)  # filled on device: no sync per step
        tok = self.prefill(ids).argmax(-1)  # (1, 1)
        out[0] = tok[0, 0]
        pos = torch.tensor([len(prompt)], device=device)
        n = 1
        for n in range(1, max_new_tokens):
            if eos_id is not None and int(tok) == eos_id:
                break
            tok = self.step(tok, pos).argmax(-1)
            out[n] = tok[0, 0]
            pos += 1
        else:
            n = max_new_tokens
        result = out[:n].tolist()
        if eos_id is not None and eos_id in result:
            result = result[: result.index(eos_id) + 1]
        return result


# ============================================================================================ bytes and bandwidth


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer (quantised weights and their scales included)."""
    total = sum(p.nelement() * p.element_size() for p in model.parameters())
    persistent = set(model.state_dict(keep_vars=True))
    total += sum(b.nelement() * b.element_size() for n, b in model.named_buffers() if n in persistent)
    return total


def bytes_per_token(model: Transformer, context: int) -> int:
    """Bytes one decode step reads: all weights except the embedding table (one row of it; the whole table when
    it is tied to the output head) + the K/V attended.

    ``context`` = number of cache slots attended over (the static cache attends over all of its slots).
    """
    emb = model.tok_embeddings.weight
    weights = weight_bytes(model)
    if getattr(model.output, "weight", None) is not emb:  # untied: the table itself is read one row at a time
        weights += -emb.nelement() * emb.element_size() + emb.shape[1] * emb.element_size()
    args = model.args
    context = min(context, args.sliding_window or context)  # a sliding window attends over W slots at most
    kv = 2 * args.n_layers * context * args.n_kv_heads * args.head_dim * emb.element_size()
    return weights + kv


def gemv_bandwidth(
    nbytes: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeats: int = 5,
    cols: int = 4096,
) -> list[float]:
    """Bytes/s of a matrix-vector product over ``nbytes`` of weights (``repeats`` samples).

    The matrix is ``(nbytes / (cols * element size), cols)`` in ``dtype``; ``F.linear`` of one row reads it all
    once, exactly like one decode step reads the model's weights -- the practical limit of this device, dtype and
    thread count (not the datasheet's peak).
    """
    element = torch.empty((), dtype=dtype).element_size()
    rows = max(1, nbytes // (cols * element))
    w = torch.randn(rows, cols, device=device).to(dtype)
    x = torch.randn(1, cols, device=device).to(dtype)
    device = w.device
    F.linear(x, w)
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        F.linear(x, w)
        _sync(device)
        samples.append(rows * cols * element / (time.perf_counter() - t0))
    return samples


# ============================================================================================ benchmark

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _hf_generate(hf_model, prompt: list[int], n: int, device) -> list[int]:
    ids = torch.tensor([prompt], device=device)
    out = hf_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
    )
    return out[0, len(prompt) :].tolist()


def spread(values: Sequence[float], fmt: str = ".1f") -> str:
    """``median [min-max]`` of a list of samples."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def model_gemv_probe(model: nn.Module, repeats: int = 3, kernels: str = "best") -> Callable[[], float]:
    """A probe returning bytes/s of the one-row products ``x @ W^T`` over every ``nn.Linear`` weight of ``model``,
    best of ``repeats``: the model's own matrix shapes and dtype, i.e. the time of one decode step's matmuls and
    nothing else. (A GEMV's speed depends on its shape: on one CPU core a 768-wide matrix streams at ~3/4 the
    speed of a 4096-wide one, so a single big matrix would promise a limit the model's shapes cannot reach.)

    ``kernels="best"``: on CPU with fp32 weights, the faster of two GEMVs -- ``F.linear`` (MKL) and the panel
    kernel of :mod:`cpu_kernels` (it streams ~10 % faster on one Intel core, so MKL's GEMV alone would understate
    the limit); the panels are the modules' own (:class:`cpu_kernels.PanelLinear`) or a copy packed here.
    ``kernels="torch"``: ``F.linear`` only. ``probe.last`` holds the bytes/s of each GEMV in the latest call."""
    if kernels not in ("best", "torch"):
        raise ValueError(f"kernels must be 'best' or 'torch', got {kernels!r}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model_gemv_probe needs a model with nn.Linear layers")
    weights = [m.weight for m in linears]
    xs = [torch.randn(1, w.shape[1], device=w.device).to(w.dtype) for w in weights]
    nbytes = sum(w.nelement() * w.element_size() for w in weights)
    device = weights[0].device
    products = {"F.linear": (F.linear, list(zip(xs, weights)))}  # {name: (fn, [args of each call])}
    if kernels == "best" and all(w.dtype == torch.float32 for w in weights) and cpu_kernels.available_on(device):
        panels = [getattr(m, "panel_weight", None) for m in linears]
        panels = [p if p is not None else cpu_kernels.pack_panels(m.weight) for p, m in zip(panels, linears)]
        args = [(x, p, w.shape[0], None) for x, p, w in zip(xs, panels, weights)]
        products["panel kernel"] = (torch.ops.llm_scratch.small_m_linear_panels, args)

    def probe(now: Callable[[], float] = time.perf_counter) -> float:
        probe.last = {}
        with torch.inference_mode():
            for name, (fn, calls) in products.items():
                best = float("inf")
                for _ in range(repeats):
                    _sync(device)
                    t0 = now()
                    for a in calls:
                        fn(*a)
                    _sync(device)
                    best = min(best, now() - t0)
                probe.last[name] = nbytes / max(best, 1e-9)
        return max(probe.last.values())

    probe.last = {}
    return probe


def measure(
    methods: dict[str, tuple[Callable[[], list[int]], int]],
    new_tokens: int,
    repeats: int,
    device: torch.device | str,
    probe: Callable[..., float],
    clock: str = "wall",
    reference: str | None = None,
    progress: bool = False,
) -> dict:
    """Time ``methods`` ``{name: (fn() -> new tokens, bytes read per token)}`` interleaved, ``repeats`` rounds.

    Every round first runs the bandwidth ``probe`` (e.g. :func:`model_gemv_probe`: bytes/s of the GEMVs of the
    model's own matrices), then every method once, so a burst of load from elsewhere hits the probe and all
    methods alike. The limit of a method in a round is ``bandwidth / its bytes per token``; ``pct_of_limit`` is
    its tok/s over that, per round.

    ``clock="cpu"`` counts this process's CPU time (``time.process_time``) instead of elapsed time: on a CPU shared
    with other jobs and one thread, it leaves out the time the scheduler gave to others. Returns
    ``{"methods": {name: {"tok_s", "pct_of_limit", "bytes_per_token", "same_tokens"}}, "bandwidth_GBs", ...}``
    with one sample per round in each list.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    device = torch.device(device)
    if clock == "cpu" and device.type != "cpu":
        raise ValueError("clock='cpu' measures CPU time and is meaningless on an accelerator; use clock='wall'")
    now = CLOCKS[clock]
    bandwidth: list[float] = []
    rows_out = {name: {"tok_s": [], "pct_of_limit": [], "bytes_per_token": b} for name, (_, b) in methods.items()}
    outputs: dict[str, list[int]] = {}
    rounds = range(repeats)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="interleaved rounds", leave=False)
    by_kernel: dict[str, list[float]] = {}  # a probe with ``last`` ({GEMV: bytes/s}) reports each GEMV it timed
    for _ in rounds:
        bw = probe(now)
        bandwidth.append(bw)
        for name, value in getattr(probe, "last", {}).items():
            by_kernel.setdefault(name, []).append(value / 1e9)
        for name, (fn, nbytes) in methods.items():
            _sync(device)
            t0 = now()
            outputs[name] = fn()
            _sync(device)
            tps = new_tokens / max(now() - t0, 1e-9)
            rows_out[name]["tok_s"].append(tps)
            rows_out[name]["pct_of_limit"].append(100 * tps / (bw / nbytes))
    ref = outputs[reference] if reference else None
    for name, row in rows_out.items():
        if ref is not None:
            row["same_tokens"] = sum(a == b for a, b in zip(outputs[name], ref)) / max(len(ref), 1)
        row["median_tok_s"] = statistics.median(row["tok_s"])
    return {
        "methods": rows_out,
        "outputs": outputs,  # {name: tokens of the last round}
        "bandwidth_GBs": [b / 1e9 for b in bandwidth],
        "bandwidth_by_kernel_GBs": by_kernel,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "clock": clock,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def random_llama_pair(
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    kv_heads: int = 4,
    intermediate: int = 2048,
    vocab: int = 32000,
    max_len: int = 256,
    seed: int = 0,
    with_hf: bool = True,
    attn_implementation: str = "sdpa",
):
    """A random ``transformers.LlamaForCausalLM`` and our ``Transformer`` holding the same fp32 weights.

    Defaults: 124.7 M parameters (dim 768, 12 layers, 12 query / 4 kv heads, FFN 2048, vocab 32000), ~499 MB of
    fp32 weights -- large enough that decode is memory-bound. Ours comes from HF's ``save_pretrained`` through
    the chapter's loader. ``with_hf=False`` returns ``(ours, None)``. ``attn_implementation`` is HF's attention
    (lesson 13 compares against ``"eager"``, lessons 19-23 against ``"sdpa"``).
    """
    import tempfile

    # our own checks of the shape first (heads, head size, ...): one line before a random HF model is built and saved
    ModelArgs(dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads, vocab_size=vocab, max_seq_len=max_len,
              hidden_dim=intermediate)  # fmt: skip
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytorch_llama2_from_scratch.loading import load_hf_checkpoint

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_len,
        rms_norm_eps=1e-5,
        initializer_range=0.1,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(config).float().eval()
    hf.generation_config.eos_token_id = None  # generate exactly the requested number of tokens
    hf.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours, _ = load_hf_checkpoint(d, max_batch_size=1, max_seq_len=max_len)
    return ours.eval(), (hf if with_hf else None)


def random_prompt(vocab_size: int, length: int, seed: int = 0) -> list[int]:
    return torch.randint(3, vocab_size, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def benchmark(
    model: Transformer,
    prompt_len: int = 16,
    new_tokens: int = 128,
    repeats: int = 3,
    compile: bool = True,
    hf_model=None,
    extra_methods: dict[str, tuple[Callable[[list[int], int], list[int]], int]] | None = None,
    clock: str = "wall",
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Decode throughput of ``model`` (batch 1, greedy) on its own device, measured interleaved.

    Methods: ``dynamic cache`` (the chapter's ``generate``), ``static cache`` (eager :class:`FastDecoder`),
    ``static + compile`` (if ``compile``; on CUDA with CUDA graphs), ``HF generate`` (if ``hf_model`` is given;
    it must hold the same weights) and ``extra_methods`` ``{name: (fn(prompt, n) -> tokens, bytes per token)}``.
    The bandwidth probe is :func:`model_gemv_probe` of the model (its own matrices, shapes and dtype).

    Returns :func:`measure`'s dict plus ``median_tok_s`` / ``median_pct_of_limit`` {method: float},
    ``bytes_per_token``, ``limit_tok_s`` (median bandwidth / bytes per token), ``compile_seconds`` (first
    compiled call: tracing + code generation), ``break_even_tokens`` (after how many generated tokens compile +
    compiled decoding beats eager static decoding), ``params``, ``dtype``. This is the function the CUDA CI calls
    on a ~1B bf16 model: ``benchmark(model.cuda().bfloat16(), new_tokens=256)``.
    """
    from pytorch_llama2_from_scratch.generate import generate

    device = _device_of(model)
    dtype = _compute_dtype(model)
    total = prompt_len + new_tokens
    if total > model.args.max_seq_len:
        raise ValueError(f"prompt_len + new_tokens = {total} exceeds the model's max_seq_len {model.args.max_seq_len}")
    prompt = random_prompt(model.args.vocab_size, prompt_len, seed)
    bpt_dynamic = bytes_per_token(model, prompt_len + new_tokens // 2)  # the cache grows: its average length
    bpt_static = bytes_per_token(model, total)
    eager = FastDecoder(model, max_seq_len=total)
    methods: dict[str, tuple[Callable[[], list[int]], int]] = {
        "dynamic cache": (lambda: generate(model, [prompt], new_tokens)[0], bpt_dynamic),
        "static cache": (lambda: eager.generate(prompt, new_tokens), bpt_static),
    }
    compiled = None
    if compile:
        compiled = FastDecoder(model, max_seq_len=total, compile=True)
        compiled.generate(prompt, 2)  # compiles; the first call is timed inside step()
        methods["static + compile"] = (lambda: compiled.generate(prompt, new_tokens), bpt_static)
    if hf_model is not None:
        methods["HF generate"] = (lambda: _hf_generate(hf_model, prompt, new_tokens, device), bpt_dynamic)
    for name, (fn, nbytes) in (extra_methods or {}).items():
        methods[name] = (lambda fn=fn: fn(prompt, new_tokens), nbytes)
    for fn, _ in methods.values():  # warm-up: lazy initialisation, allocator, first-call dispatch
        fn()
    probe = model_gemv_probe(model)
    result = measure(methods, new_tokens, repeats, device, probe, clock, "dynamic cache", progress)
    rows = result["methods"]
    result.update(
        median_tok_s={m: r["median_tok_s"] for m, r in rows.items()},
        median_pct_of_limit={m: statistics.median(r["pct_of_limit"]) for m, r in rows.items()},
        bytes_per_token=bpt_static,
        limit_tok_s=statistics.median(result["bandwidth_GBs"]) * 1e9 / bpt_static,
        compile_seconds=compiled.compile_seconds if compiled else None,
        break_even_tokens=None,
        prompt_len=prompt_len,
        params=sum(p.numel() for p in model.parameters()),
        dtype=str(dtype).replace("torch.", ""),
    )
    if compiled is not None:
        # compile + n / fast  <  n / slow   <=>   n > compile / (1/slow - 1/fast)   (seconds per token)
        slow, fast = rows["static cache"]["median_tok_s"], rows["static + compile"]["median_tok_s"]
        gain = 1 / slow - 1 / fast
        result["break_even_tokens"] = compiled.compile_seconds / gain if gain > 0 else float("inf")
    return result


# ------------------------------------------------------------------------------------------------ lessons' steps
def lesson_model(
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vocab: int,
    max_len: int,
    threads: int | None,
    device: str,
    seed: int,
    with_hf: bool = False,
):
    """What every decode lesson (19-23) does first: seed, set the CPU threads (``None``: PyTorch's choice), build
    the random benchmark LLaMA of :func:`random_llama_pair` and move it (and HF's twin if ``with_hf``) to
    ``device``. Returns ``(model, hf_model or None, torch.device)``."""
    from pytorch_basis.common import resolve_device, seed_everything

    seed_everything(seed)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    model, hf = random_llama_pair(hidden, layers, heads, kv_heads, intermediate, vocab, max_len, seed, with_hf=with_hf)
    model.to(dev)
    if hf is not None:
        hf.to(dev)
    return model, hf, dev


def describe(model: Transformer, device: torch.device | str) -> str:
    """``"124.7 M parameters, fp32, cpu, 1 thread(s)"``: what the decode lessons print about their model first."""
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(_compute_dtype(model), "?")
    return f"{model.num_params() / 1e6:.1f} M parameters, {dtype}, {device}, {torch.get_num_threads()} thread(s)"


def static_methods(
    models: dict[str, Transformer], prompt: list[int], new_tokens: int, max_seq_len: int
) -> dict[str, tuple[Callable[[], list[int]], int]]:
    """``{name: model}`` -> :func:`measure`'s methods: greedy decoding of ``prompt`` with an eager
    :class:`FastDecoder` of each model (static cache of ``max_seq_len`` slots), and its bytes per token."""
    methods = {}
    for name, m in models.items():
        dec = FastDecoder(m, max_seq_len=max_seq_len)
        methods[name] = (lambda d=dec: d.generate(prompt, new_tokens), bytes_per_token(m, max_seq_len))
    return methods


def warm_and_measure(
    methods: dict[str, tuple[Callable[[], list[int]], int]],
    new_tokens: int,
    repeats: int,
    device: torch.device | str,
    model: nn.Module,
    clock: str = "wall",
    reference: str | None = None,
    progress: bool = False,
) -> dict:
    """Run every method once (warm-up: lazy initialisation, allocator, first-call dispatch), then :func:`measure`
    them interleaved against the GEMV bandwidth of ``model``'s own matrices (:func:`model_gemv_probe`)."""
    for fn, _ in methods.values():
        fn()
    return measure(methods, new_tokens, repeats, device, model_gemv_probe(model), clock, reference, progress)


def print_speed_rows(result: dict, base: str) -> None:
    """One line per method of :func:`measure`'s result: bytes per token, tok/s and % of the limit (median
    [min-max]), speed relative to ``base`` and the share of tokens equal to ``base``'s."""
    ref = result["methods"][base]["median_tok_s"]
    short = base.split()[0]
    for name, row in result["methods"].items():
        print(
            f"   {name:14s} {row['bytes_per_token'] / 1e6:7.1f} MB/token  {spread(row['tok_s']):>20s} tok/s  "
            f"{spread(row['pct_of_limit']):>20s} % of limit  {row['median_tok_s'] / ref:.2f}x {short}  "
            f"same tokens as {short} {row['same_tokens']:.0%}"
        )


# ------------------------------------------------------------------------------------------------ lessons' CLI
def decode_parser(doc: str, new_tokens: int = 64, repeats: int = 5):
    """The decode lessons' (19-23) argparse parser: the benchmark model's shape, prompt and token counts and the
    interleaved rounds. A lesson adds its own options, then calls :func:`parse_decode_args` (which adds threads,
    clock, seed and device)."""
    import argparse

    from pytorch_basis.common import positive_int

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name, default, what in (
        ("hidden", 768, "benchmark model: hidden"),
        ("layers", 12, "benchmark model: layers"),
        ("heads", 12, "benchmark model: heads"),
        ("kv-heads", 4, "benchmark model: kv-heads"),
        ("intermediate", 2048, "benchmark model: intermediate"),
        ("vocab", 32000, "benchmark model: vocabulary size"),
        ("prompt-len", 16, "prompt tokens"),
        ("new-tokens", new_tokens, "tokens to decode"),
        ("repeats", repeats, "interleaved rounds (median and range are printed)"),
    ):
        p.add_argument(f"--{name}", type=positive_int, default=default, help=f"{what} (default: {default})")
    return p


def parse_decode_args(p, argv=None):
    """Add the options every decode lesson shares, parse, and settle ``threads`` and ``clock``."""
    from pytorch_basis.common import add_device_argument, nonnegative_int, seed_int

    p.add_argument("--threads", type=nonnegative_int, default=1, help="CPU threads (default 1; 0 = PyTorch's choice)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default=None,
        help="wall: elapsed time; cpu: this process's CPU time, steadier on a shared CPU (default: cpu on the CPU "
        "with one thread, else wall)",
    )
    p.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(p, default="cpu")
    args = p.parse_args(argv)
    args.threads = args.threads or None
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    return args
