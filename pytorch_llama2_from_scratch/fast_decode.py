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

from pytorch_llama2_from_scratch.model import Attention, Transformer

__all__ = [
    "FastDecoder",
    "StaticKVCache",
    "benchmark",
    "bytes_per_token",
    "gemv_bandwidth",
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
    step after such a change: ``dec.recompile()``).
    """

    def __init__(
        self,
        model: Transformer,
        batch: int = 1,
        max_seq_len: int | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        cache_dtype: torch.dtype | None = None,
    ):
        super().__init__()
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
        self.compile_mode = compile_mode
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
            self._step = torch.compile(self._forward_last, fullgraph=True, dynamic=False, mode=mode)
        else:
            self._step = self._forward_last

    # ----------------------------------------------------------------------------------- forward
    def _forward_last(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.forward(tokens, pos, last_only=True)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        m = self.model
        b, t = tokens.shape
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # (T, hd/2)
        mask = self.slots[None, :] <= pos[:, None]  # (T, S_max): key slot <= query position
        h = m.tok_embeddings(tokens)  # (B, T) -> (B, T, D)
        for i, layer in enumerate(m.layers):
            attn = layer.attention
            x = layer.attention_norm(h)
            q = attn.wq(x).view(b, t, attn.n_heads, attn.head_dim)  # (B, T, D) -> (B, T, H, hd)
            k = attn.wk(x).view(b, t, attn.n_kv_heads, attn.head_dim)  # (B, T, D) -> (B, T, KV, hd)
            v = attn.wv(x).view(b, t, attn.n_kv_heads, attn.head_dim)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            keys, values = self.cache.update(i, pos, k.transpose(1, 2), v.transpose(1, 2))  # (B, KV, S_max, hd)
            keys, values = keys[:b].to(q.dtype), values[:b].to(q.dtype)
            gqa = {"enable_gqa": True} if attn.n_rep > 1 else {}
            out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask, **gqa)  # (B,H,T,hd)
            out = out.transpose(1, 2).reshape(b, t, attn.n_heads * attn.head_dim)  # (B, H, T, hd) -> (B, T, H*hd)
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
    """Bytes one decode step reads: all weights except the embedding table (one row of it) + the K/V attended.

    ``context`` = number of cache slots attended over (the static cache attends over all of its slots).
    """
    emb = model.tok_embeddings.weight
    weights = weight_bytes(model) - emb.nelement() * emb.element_size() + emb.shape[1] * emb.element_size()
    args = model.args
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


def _hf_generate(hf_model, prompt: list[int], n: int, device) -> list[int]:
    ids = torch.tensor([prompt], device=device)
    out = hf_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
    )
    return out[0, len(prompt) :].tolist()


def time_methods(
    methods: dict[str, Callable[[], list[int]]],
    repeats: int,
    device: torch.device,
    extra: dict[str, Callable[[], float]] | None = None,
    progress: bool = False,
) -> tuple[dict[str, list[float]], dict[str, list[int]], dict[str, list[float]]]:
    """Run every method once per repeat, interleaved (a burst of load elsewhere hits all alike).

    Returns seconds per run for each method, each method's last output, and the ``extra`` probes' samples
    (e.g. the GEMV bandwidth, measured inside the same loop).
    """
    seconds = {name: [] for name in methods}
    outputs: dict[str, list[int]] = {}
    probes = {name: [] for name in (extra or {})}
    rounds = range(repeats)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="interleaved rounds", leave=False)
    for _ in rounds:
        for name, fn in methods.items():
            _sync(device)
            t0 = time.perf_counter()
            outputs[name] = fn()
            _sync(device)
            seconds[name].append(time.perf_counter() - t0)
        for name, fn in (extra or {}).items():
            probes[name].append(fn())
    return seconds, outputs, probes


def spread(values: Sequence[float]) -> str:
    """``median [min-max]`` of a list of samples."""
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


@torch.inference_mode()
def benchmark(
    model: Transformer,
    prompt_len: int = 16,
    new_tokens: int = 128,
    repeats: int = 3,
    compile: bool = True,
    hf_model=None,
    extra_methods: dict[str, Callable[[list[int], int], list[int]]] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Decode throughput of ``model`` (batch 1, greedy) on its own device, measured interleaved.

    Methods: ``dynamic cache`` (the chapter's ``generate``), ``static cache`` (eager :class:`FastDecoder`),
    ``static + compile`` (if ``compile``), ``HF generate`` (if ``hf_model`` is given, same weights assumed) and
    any ``extra_methods`` ``{name: fn(prompt, n) -> tokens}``. Each is run ``repeats`` times, interleaved with a
    GEMV-bandwidth probe of the model's weight bytes in the model's dtype.

    Returns a dict: ``tok_s`` {method: [samples]}, ``median_tok_s``, ``bytes_per_token``, ``bandwidth_GBs``
    (samples), ``limit_tok_s`` (median bandwidth / bytes per token), ``pct_of_limit`` {method: median %},
    ``compile_seconds``, ``break_even_tokens`` (tokens after which compile + run beats eager), ``same_tokens``
    {method: fraction equal to the dynamic-cache output}, ``device``, ``dtype``, ``threads``, ``torch``.
    Used by lessons 19-23 and by the CUDA CI on a ~1B bf16 model.
    """
    from pytorch_llama2_from_scratch.generate import generate

    device = _device_of(model)
    dtype = _compute_dtype(model)
    total = prompt_len + new_tokens
    if total > model.args.max_seq_len:
        raise ValueError(f"prompt_len + new_tokens = {total} exceeds the model's max_seq_len {model.args.max_seq_len}")
    prompt = torch.randint(3, model.args.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(seed))
    prompt = prompt.tolist()
    eager = FastDecoder(model, max_seq_len=total)
    methods: dict[str, Callable[[], list[int]]] = {
        "dynamic cache": lambda: generate(model, [prompt], new_tokens)[0],
        "static cache": lambda: eager.generate(prompt, new_tokens),
    }
    compiled = None
    if compile:
        compiled = FastDecoder(model, max_seq_len=total, compile=True)
        compiled.generate(prompt, 2)  # triggers compilation, timed inside step()
        methods["static + compile"] = lambda: compiled.generate(prompt, new_tokens)
    if hf_model is not None:
        methods["HF generate"] = lambda: _hf_generate(hf_model, prompt, new_tokens, device)
    for name, fn in (extra_methods or {}).items():
        methods[name] = lambda fn=fn: fn(prompt, new_tokens)
    for fn in methods.values():  # warm-up: lazy initialisation, allocator, first-call dispatch
        fn()
    nbytes = weight_bytes(model)
    probe = {"gemv": lambda: statistics.median(gemv_bandwidth(nbytes, dtype, device, repeats=3))}
    seconds, outputs, probes = time_methods(methods, repeats, device, probe, progress)

    tok_s = {m: [new_tokens / s for s in v] for m, v in seconds.items()}
    med = {m: statistics.median(v) for m, v in tok_s.items()}
    bpt = bytes_per_token(model, total)
    bw = probes["gemv"]
    limit = statistics.median(bw) / bpt
    ref = outputs["dynamic cache"]
    result = {
        "tok_s": tok_s,
        "median_tok_s": med,
        "bytes_per_token": bpt,
        "bandwidth_GBs": [b / 1e9 for b in bw],
        "limit_tok_s": limit,
        "pct_of_limit": {m: 100 * v / limit for m, v in med.items()},
        "same_tokens": {m: sum(a == b for a, b in zip(o, ref)) / len(ref) for m, o in outputs.items()},
        "compile_seconds": compiled.compile_seconds if compiled else None,
        "break_even_tokens": None,
        "new_tokens": new_tokens,
        "prompt_len": prompt_len,
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if compiled is not None:
        # compile + n / fast  <  n / slow   <=>   n > compile / (1/slow - 1/fast)   (seconds per token)
        gain = 1 / med["static cache"] - 1 / med["static + compile"]
        result["break_even_tokens"] = compiled.compile_seconds / gain if gain > 0 else float("inf")
    return result
