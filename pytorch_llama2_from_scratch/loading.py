"""Load LLaMA-2 weights and tokenizers from disk: the Hugging Face layout and Meta's original layout.

    from pytorch_llama2_from_scratch.loading import load_checkpoint, load_tokenizer

    model, args = load_checkpoint("path/to/Llama-2-7b-hf", max_seq_len=512, dtype=torch.bfloat16)
    tok = load_tokenizer("path/to/Llama-2-7b-hf")

Two layouts exist for the same weights:

* **Hugging Face** (``config.json`` + ``model.safetensors`` / ``model-0000N-of-0000M.safetensors`` with
  ``model.safetensors.index.json``, or the older ``pytorch_model*.bin``). Names like
  ``model.layers.0.self_attn.q_proj.weight``. HF's conversion script permuted the rows of every q and k
  projection so its half-split ``rotate_half`` RoPE gives the same result as Meta's interleaved one; we use
  Meta's convention, so the loader applies :func:`~pytorch_llama2_from_scratch.model.unpermute_from_hf`.
* **Meta** (``params.json`` + ``consolidated.00.pth`` ... one file per model-parallel rank: 1 for 7B,
  2 for 13B, 8 for 70B). Names match our modules exactly. Column-parallel weights (wq, wk, wv, w1, w3,
  output) are split along rows (dim 0), row-parallel ones (wo, w2) along columns (dim 1), the embedding
  along its feature dim (dim 1); norms are replicated. ``rope.freqs`` (old checkpoints) is ignored.

Nothing is ever downloaded here: pass a directory you fetched yourself (for example with
``hf download meta-llama/Llama-2-7b-hf --local-dir ...`` after accepting Meta's licence).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from pytorch_basis.common import atomic_torch_save, atomic_write_text
from pytorch_llama2_from_scratch.model import (
    _LLAMA3_KEYS,
    ROPE_TYPES,
    ModelArgs,
    Transformer,
    check_rope_scaling,
    ffn_hidden_dim,
    rope_inv_freq,
    unpermute_from_hf,
)


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: the message names the missing, unexpected or mismatched keys."""


# ============================================================================================ name mapping

# Meta name (per layer, after "layers.{i}.")  <->  HF name (after "model.layers.{i}.")
_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    # Qwen2: q/k/v biases; Qwen3: per-head q/k RMSNorm
    "attention.wq.bias": "self_attn.q_proj.bias",
    "attention.wk.bias": "self_attn.k_proj.bias",
    "attention.wv.bias": "self_attn.v_proj.bias",
    "attention.q_norm.weight": "self_attn.q_norm.weight",
    "attention.k_norm.weight": "self_attn.k_norm.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_META_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_TO_META_LAYER = {hf: meta for meta, hf in _LAYER_NAMES.items()}
_HF_TO_META_TOP = {hf: meta for meta, hf in _TOP_NAMES.items()}


def meta_to_hf_name(name: str) -> str:
    """``layers.3.attention.wq.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = _META_LAYER.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise KeyError(name)


def hf_to_meta_name(name: str) -> str | None:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``layers.3.attention.wq.weight`` (None if unknown)."""
    if name in _HF_TO_META_TOP:
        return _HF_TO_META_TOP[name]
    m = _HF_LAYER.match(name)
    if m and m.group(2) in _HF_TO_META_LAYER:
        return f"layers.{m.group(1)}.{_HF_TO_META_LAYER[m.group(2)]}"
    return None


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Meta-named parameter shapes of ``Transformer(args)``, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = Transformer(args)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], where: str, limit: int = 12
) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and shape-mismatched keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return

    def show(items: list[str]) -> str:
        head = ", ".join(items[:limit])
        return head + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

    lines = [f"checkpoint {where} does not fit the model:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}): {show(mismatched)}")
    raise CheckpointError("\n".join(lines))


# ============================================================================================ args from configs


_REQUIRED_HF_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")

# model_type -> what marks the family in config.json (the options of ModelArgs it turns on)
FAMILIES = {
    "llama": "Llama 2 / 3.x, TinyLlama, SmolLM2: rope_scaling llama3 (3.1+), tie_word_embeddings (3.2 1B/3B, SmolLM2)",
    "mistral": "Mistral: sliding_window",
    "qwen2": "Qwen2 / Qwen2.5: biases on q/k/v, tie_word_embeddings (0.5B-3B)",
    "qwen3": "Qwen3: q_norm / k_norm per head, head_dim independent of hidden_size / num_attention_heads",
}


def args_from_hf_config(config: Mapping, **overrides) -> ModelArgs:
    """``ModelArgs`` from a Hugging Face ``config.json`` dict (families: :data:`FAMILIES`); a feature this model
    does not implement raises ``ValueError`` naming it."""
    if not isinstance(config, Mapping):
        raise ValueError(f"config.json must hold a JSON object, got {type(config).__name__}")
    missing = [k for k in _REQUIRED_HF_KEYS if k not in config]
    if missing:
        raise ValueError(f"config.json lacks the required key(s) {', '.join(missing)}")
    model_type = config.get("model_type", "llama")
    if model_type not in FAMILIES:
        raise ValueError(f"config.json has model_type {model_type!r}; supported: {', '.join(FAMILIES)}")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag) and not (model_type == "qwen2" and flag == "attention_bias"):
            raise ValueError(f"config.json sets {flag}=true, which the {model_type} family of this model lacks")
    if model_type in ("qwen2", "qwen3") and config.get("use_sliding_window"):
        raise ValueError("config.json sets use_sliding_window=true; sliding windows are implemented for mistral only")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json has hidden_act {config['hidden_act']!r}; SwiGLU needs 'silu'")
    # transformers >= 5 writes `rope_parameters` (theta and type together); older configs `rope_theta` and
    # `rope_scaling`. A scaling given in either place counts.
    rope = {**(config.get("rope_parameters") or {}), **(config.get("rope_scaling") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"config.json rope type {rope_type!r} (RoPE scaling) is not supported; supported: "
                         f"{', '.join(ROPE_TYPES)}")  # fmt: skip
    scaling = None
    if rope_type == "llama3":
        scaling = check_rope_scaling({"rope_type": "llama3", **{k: rope.get(k) for k in _LLAMA3_KEYS if k in rope}})
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    for key in _REQUIRED_HF_KEYS:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.json {key} must be a positive integer, got {value!r}")
    head_dim = config.get("head_dim") or dim // n_heads
    if head_dim * n_heads != dim and model_type != "qwen3":
        raise ValueError(f"config.json head_dim {head_dim} * num_attention_heads {n_heads} != hidden_size {dim}")
    window = config.get("sliding_window") if model_type == "mistral" else None
    values = dict(
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        vocab_size=config["vocab_size"],
        hidden_dim=config["intermediate_size"],
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=float(theta),
        max_seq_len=config.get("max_position_embeddings", 2048),
        explicit_head_dim=head_dim if head_dim * n_heads != dim else None,
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling=scaling,
        sliding_window=window,
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelArgs(**values)


def args_from_meta_params(params: Mapping, vocab_size: int | None = None, **overrides) -> ModelArgs:
    """``ModelArgs`` from Meta's ``params.json`` (``vocab_size: -1`` is taken from the embedding shape)."""
    if params.get("use_scaled_rope"):
        raise ValueError("params.json sets use_scaled_rope (Llama 3.1 RoPE scaling), which this Llama-2 model lacks")
    known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier"}
    known |= {"norm_eps", "rope_theta", "hidden_dim", "max_batch_size", "max_seq_len"}
    values = {k: v for k, v in params.items() if k in known}
    if values.get("vocab_size", -1) in (-1, None):
        if vocab_size is None:
            raise ValueError("params.json has vocab_size -1 and no embedding was found to infer it from")
        values["vocab_size"] = vocab_size
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelArgs(**values)


# ============================================================================================ state-dict conversion


def hf_to_meta_state_dict(hf_state: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Rename HF keys to ours and un-permute the q/k rows (HF half-split -> Meta interleaved).

    Unknown keys are kept under their HF name, so the key check reports them as unexpected.
    ``rotary_emb.inv_freq`` buffers of old checkpoints are dropped; a missing ``lm_head.weight`` is taken
    from the embedding (tied embeddings).
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        meta = hf_to_meta_name(name)
        if meta is None:
            out[name] = tensor
            continue
        if meta.endswith(("attention.wq.weight", "attention.wq.bias")):
            tensor = _unpermute_rows(tensor, args.n_heads)
        elif meta.endswith(("attention.wk.weight", "attention.wk.bias")):
            tensor = _unpermute_rows(tensor, args.n_kv_heads)
        elif meta.endswith(("attention.q_norm.weight", "attention.k_norm.weight")):
            tensor = _unpermute_rows(tensor, 1)  # one head's hd features, in HF's half-split order
        out[meta] = tensor
    if "output.weight" not in out and "tok_embeddings.weight" in out:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def _unpermute_rows(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """:func:`unpermute_from_hf` for a weight (rows, in) or a vector (rows,): biases and gains move with their rows."""
    if tensor.dim() == 1:
        return unpermute_from_hf(tensor[:, None], n_heads)[:, 0]
    return unpermute_from_hf(tensor, n_heads)


def _is_hf_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("model.", "lm_head.")) for k in state)


# ============================================================================================ building the model


def _build(
    args: ModelArgs, state: Mapping[str, torch.Tensor], where: str, device, dtype: torch.dtype | None
) -> Transformer:
    """Check the keys, then build ``Transformer(args)`` around the loaded tensors themselves.

    The model is created on the meta device (no memory) and ``load_state_dict(assign=True)`` makes the checkpoint's
    tensors its parameters: nothing is allocated twice. The safetensors / ``torch.load(mmap=True)`` tensors are
    memory-mapped views of the files, so a checkpoint in its stored dtype (``dtype=None``: bf16 stays bf16) on the
    CPU costs about its file size; only the q/k projections (re-ordered for the RoPE convention), dtype
    conversions and moves to another device make copies, one tensor at a time.
    """
    _check_keys(state, expected_shapes(args), where)
    device = torch.device(device)
    if dtype is None:
        dtype = state["tok_embeddings.weight"].dtype
    with torch.device("meta"):
        model = Transformer(args)
    converted = {}
    for name, tensor in state.items():
        converted[name] = tensor.to(device=device, dtype=dtype)  # no copy when both already match
    model.load_state_dict(converted, strict=True, assign=True)
    model.tie_weights()
    for module in model.modules():  # the KV cache buffers are not in the state dict: allocate them (zeros)
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                module.register_buffer(name, torch.zeros(buf.shape, dtype=dtype, device=device), persistent=False)
    return model.eval()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _read_json_if_exists(path: Path) -> dict:
    return _read_json(path) if path.exists() else {}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """A weight file as a dict of tensors; an empty, truncated or foreign file raises :class:`CheckpointError`."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download?")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except MemoryError:
        raise
    except Exception as e:  # safetensors, zipfile, pickle and torch each raise their own kinds for a bad file
        raise CheckpointError(
            f"{path} is not a readable weight file (truncated or of another kind): {_first_line(e)}"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a dict of tensors (got {type(state).__name__})")
    return dict(state)


def _hf_weight_files(directory: Path) -> list[Path]:
    """The weight files of an HF checkpoint: from an index json if present, else the single file."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not weight_map:
                raise ValueError(f"{index} has no 'weight_map'")
            files = [directory / f for f in dict.fromkeys(weight_map.values())]
            absent = [f.name for f in files if not f.exists()]
            if absent:
                raise FileNotFoundError(f"{index} lists shard(s) that are not in {directory}: {', '.join(absent)}")
            return files
        if (directory / single).exists():
            return [directory / single]
    raise FileNotFoundError(
        f"no Hugging Face weights in {directory}: expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json"
    )


def load_hf_checkpoint(
    directory: str | Path,
    max_seq_len: int | None = None,
    max_batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[Transformer, ModelArgs]:
    """Load a Hugging Face LLaMA directory (``config.json`` + safetensors or .bin shards).

    ``max_seq_len`` defaults to the config's ``max_position_embeddings``; ``dtype=None`` keeps the stored
    dtype. Returns ``(model, args)`` with the model in eval mode and an empty KV cache.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: not a Hugging Face checkpoint directory")
    config = _read_json(config_path)
    args = args_from_hf_config(config, max_seq_len=max_seq_len, max_batch_size=max_batch_size)
    hf_state: dict[str, torch.Tensor] = {}
    for path in _hf_weight_files(directory):
        hf_state.update(_load_weight_file(path))
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}
    # Check under the HF names, so an error names the keys as they appear in the files.
    expected = {meta_to_hf_name(k): shape for k, shape in expected_shapes(args).items()}
    if "lm_head.weight" not in hf_state and config.get("tie_word_embeddings", False):
        del expected["lm_head.weight"]
    _check_keys(hf_state, expected, str(directory))
    state = hf_to_meta_state_dict(hf_state, args)
    return _build(args, state, str(directory), device, dtype), args


# Model-parallel split dimension of every Meta parameter (None = replicated on every rank).
def _shard_dim(name: str) -> int | None:
    if name == "tok_embeddings.weight":
        return 1  # ParallelEmbedding splits the feature dimension
    if name.endswith(("attention.wq.weight", "attention.wk.weight", "attention.wv.weight")):
        return 0  # ColumnParallelLinear: output rows
    if name.endswith(("feed_forward.w1.weight", "feed_forward.w3.weight")) or name == "output.weight":
        return 0
    if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
        return 1  # RowParallelLinear: input columns
    return None  # norms


def merge_meta_shards(shards: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate model-parallel shards along each parameter's split dimension; drop ``rope.freqs``."""
    merged: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        if name == "rope.freqs":
            continue
        absent = [i for i, s in enumerate(shards) if name not in s]
        if absent:
            raise CheckpointError(f"key {name} is in consolidated.00.pth but missing from shard(s) {absent}")
        dim = _shard_dim(name)
        if len(shards) == 1 or dim is None:
            merged[name] = shards[0][name]
        else:
            merged[name] = torch.cat([s[name] for s in shards], dim=dim)
    return merged


def load_meta_checkpoint(
    directory: str | Path,
    max_seq_len: int | None = None,
    max_batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[Transformer, ModelArgs]:
    """Load Meta's layout: ``params.json`` + ``consolidated.NN.pth`` (several model-parallel shards merged).

    ``max_seq_len`` defaults to ``ModelArgs.max_seq_len`` (2048; Llama-2 was trained with 4096).
    """
    directory = Path(directory)
    params_path = directory / "params.json"
    if not params_path.exists():
        raise FileNotFoundError(f"{params_path} not found: not a Meta checkpoint directory")
    files = sorted(directory.glob("consolidated.*.pth"))
    if not files:
        raise FileNotFoundError(f"no consolidated.*.pth weight files in {directory}")
    shards = [_load_weight_file(f) for f in files]
    state = merge_meta_shards(shards)
    vocab = state["tok_embeddings.weight"].shape[0] if "tok_embeddings.weight" in state else None
    args = args_from_meta_params(
        _read_json(params_path), vocab_size=vocab, max_seq_len=max_seq_len, max_batch_size=max_batch_size
    )
    return _build(args, state, str(directory), device, dtype), args


def detect_layout(directory: str | Path) -> str:
    """``"meta"`` (params.json + consolidated.*.pth) or ``"hf"`` (config.json); an error lists what is there."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if (directory / "params.json").exists() and any(directory.glob("consolidated.*.pth")):
        return "meta"
    if (directory / "config.json").exists():
        return "hf"
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:20]) or "nothing"
    raise FileNotFoundError(
        f"{directory} is neither a Hugging Face checkpoint (config.json + *.safetensors/*.bin) nor a Meta one "
        f"(params.json + consolidated.*.pth); found: {found}"
    )


def _proc_status_bytes(key: str) -> int:
    """A memory line of Linux ``/proc/self/status`` in bytes (``VmRSS`` now, ``VmHWM`` peak), 0 where unavailable.

    (``VmHWM`` belongs to this process image; ``getrusage``'s ``ru_maxrss`` would carry over the peak of the
    parent that started it.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _write_tiny_checkpoint(directory: Path) -> Path:
    from safetensors.torch import save_file

    args = ModelArgs(dim=8, n_layers=1, n_heads=2, vocab_size=8, hidden_dim=8, max_seq_len=4)
    shapes = expected_shapes(args)
    save_file({meta_to_hf_name(k): torch.zeros(v, dtype=torch.bfloat16) for k, v in shapes.items()},
              str(directory / "model.safetensors"))  # fmt: skip
    config = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, vocab_size=8, intermediate_size=8)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def measure_loading_memory(directory: str | Path, **kwargs) -> dict:
    """Load a checkpoint and report how much memory that took, relative to the size of the weights.

    ``peak_extra_bytes`` = the process's peak resident memory after loading *and touching every weight page* minus
    its resident memory before: an upper bound of what loading added (exact when loading set the peak; run it
    early in a fresh process, as lesson 18 does). Linux only (``/proc``).
    Returns ``{"model", "args", "weight_bytes", "peak_extra_bytes", "ratio"}``.
    """
    import tempfile

    import safetensors.torch  # noqa: F401  (imported before measuring: a module, not part of the weights)

    with tempfile.TemporaryDirectory() as tmp:  # first-call costs of the code path itself, not of the weights
        load_checkpoint(_write_tiny_checkpoint(Path(tmp)), max_seq_len=4)
    before = _proc_status_bytes("VmRSS")
    if before == 0:
        raise RuntimeError("measure_loading_memory needs Linux (/proc/self/status)")
    model, args = load_checkpoint(directory, **kwargs)
    for p in model.parameters():  # memory-mapped pages count once they are read: read one byte of every page
        int(p.detach().reshape(-1).view(torch.uint8)[::1024].sum())
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    extra = _proc_status_bytes("VmHWM") - before
    return {"model": model, "args": args, "weight_bytes": weight_bytes, "peak_extra_bytes": extra,
            "ratio": extra / weight_bytes}  # fmt: skip


def checkpoint_context_length(directory: str | Path) -> int:
    """The context length a checkpoint was made for, read from its config alone (no weights are loaded):
    ``max_position_embeddings`` of ``config.json``, or ``max_seq_len`` of Meta's ``params.json`` (default 2048)."""
    directory = Path(directory)
    if detect_layout(directory) == "meta":
        value = _read_json(directory / "params.json").get("max_seq_len", ModelArgs.max_seq_len)
        key = "params.json max_seq_len"
    else:
        value = _read_json(directory / "config.json").get("max_position_embeddings", ModelArgs.max_seq_len)
        key = "config.json max_position_embeddings"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def load_checkpoint(directory: str | Path, **kwargs) -> tuple[Transformer, ModelArgs]:
    """Detect the layout of ``directory`` and load it (keyword arguments as :func:`load_hf_checkpoint`)."""
    if detect_layout(directory) == "meta":
        return load_meta_checkpoint(directory, **kwargs)
    return load_hf_checkpoint(directory, **kwargs)


# ============================================================================================ writing Meta layout


def meta_params(args: ModelArgs) -> dict:
    """The ``params.json`` content for ``args`` (``hidden_dim`` only when it differs from the rule)."""
    params = dict(
        dim=args.dim,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads,
        vocab_size=args.vocab_size,
        multiple_of=args.multiple_of,
        norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
    )
    if args.ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = args.ffn_dim_multiplier
    if args.hidden_dim is not None and args.hidden_dim != ffn_hidden_dim(
        args.dim, args.multiple_of, args.ffn_dim_multiplier
    ):
        params["hidden_dim"] = args.hidden_dim
    return params


def save_meta_checkpoint(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    args: ModelArgs,
    directory: str | Path,
    n_shards: int = 1,
    include_rope_freqs: bool = False,
) -> Path:
    """Write ``params.json`` + ``consolidated.NN.pth`` (``n_shards`` model-parallel shards), atomically.

    ``model_or_state`` may be our :class:`Transformer`, a Meta-named state dict, or a Hugging Face
    ``LlamaForCausalLM`` / its state dict (converted with our HF -> Meta un-permutation of q and k).
    ``include_rope_freqs`` adds the ``rope.freqs`` tensor old Meta checkpoints carried (loaders ignore it).
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    if _is_hf_state(state):
        state = hf_to_meta_state_dict(state, args)
    expected = expected_shapes(args)
    _check_keys(state, expected, "to save")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if args.n_kv_heads % n_shards or args.n_heads % n_shards:
        raise ValueError(f"n_heads {args.n_heads} and n_kv_heads {args.n_kv_heads} must be divisible by {n_shards}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for rank in range(n_shards):
        shard: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            dim = _shard_dim(name)
            if dim is None or n_shards == 1:
                part = tensor
            else:
                if tensor.shape[dim] % n_shards:
                    raise ValueError(f"{name} dim {dim} of size {tensor.shape[dim]} is not divisible by {n_shards}")
                part = tensor.chunk(n_shards, dim=dim)[rank]
            shard[name] = part.detach().clone().contiguous()
        if include_rope_freqs:
            shard["rope.freqs"] = rope_inv_freq(args.head_dim, args.rope_theta)
        atomic_torch_save(shard, directory / f"consolidated.{rank:02d}.pth")
    atomic_write_text(json.dumps(meta_params(args), indent=2) + "\n", directory / "params.json")
    return directory


# ============================================================================================ tokenizers


class Tokenizer:
    """A minimal tokenizer interface over SentencePiece (``tokenizer.model``) or ``tokenizers`` (``tokenizer.json``).

    ``encode(text, bos=True, eos=False) -> list[int]``, ``decode(ids) -> str``, and the ids ``bos_id``,
    ``eos_id``, ``pad_id`` (None when the vocabulary has no such token), ``vocab_size``.

    ``eos_ids`` lists *every* id that ends a generation (Llama 3 checkpoints have two or three: ``<|end_of_text|>``,
    ``<|eot_id|>``, ``<|eom_id|>``); ``eos_id`` is the first of them (the one ``encode(eos=True)`` appends).
    """

    def __init__(
        self,
        backend,
        kind: str,
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int | None = None,
        eos_ids: Sequence[int] | None = None,
    ):
        self.backend = backend
        self.kind = kind
        self.bos_id = bos_id
        ids = list(dict.fromkeys(([eos_id] if eos_id is not None else []) + list(eos_ids or [])))
        self.eos_ids: tuple[int, ...] = tuple(ids)
        self.eos_id = ids[0] if ids else None
        self.pad_id = pad_id
        self.chat_template: str | None = None  # the checkpoint's Jinja chat template (chat.py renders it)
        self.bos_token: str | None = None  # the special tokens' text, for the template
        self.eos_token: str | None = None

    @property
    def vocab_size(self) -> int:
        if self.kind == "sentencepiece":
            return self.backend.vocab_size()
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        if self.kind == "sentencepiece":
            ids = list(self.backend.encode(text))
        else:
            ids = list(self.backend.encode(text, add_special_tokens=False).ids)
        if bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "sentencepiece":
            return self.backend.decode(ids)
        return self.backend.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


def _special_token(config: Mapping, key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _id_list(value) -> list[int]:
    """``eos_token_id`` as configs write it: an int, a list of ints, or null."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def config_eos_ids(directory: str | Path) -> list[int]:
    """Every EOS id that ``config.json`` and ``generation_config.json`` of a checkpoint folder name, in order."""
    directory = Path(directory)
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        ids += _id_list(_read_json_if_exists(directory / name).get("eos_token_id"))
    return list(dict.fromkeys(ids))


def read_chat_template(directory: str | Path, tok_config: Mapping | None = None) -> str | None:
    """The chat template of a checkpoint folder: ``chat_template.jinja`` (what transformers >= 4.47 writes) or the
    ``chat_template`` entry of ``tokenizer_config.json`` (a string, or a list of named templates: ``default``)."""
    directory = Path(directory)
    if (directory / "chat_template.jinja").exists():
        return (directory / "chat_template.jinja").read_text()
    tok_config = _read_json_if_exists(directory / "tokenizer_config.json") if tok_config is None else tok_config
    template = tok_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """As :func:`_load_tokenizer`, plus the chat template and the special tokens' text from the folder."""
    directory = Path(directory)
    tok = _load_tokenizer(directory)
    tok_config = _read_json_if_exists(directory / "tokenizer_config.json")
    tok.chat_template = read_chat_template(directory, tok_config)

    def text(key: str, token_id: int | None) -> str | None:
        named = _special_token(tok_config, key)
        if named is not None:
            return named
        if token_id is None:
            return None
        if tok.kind == "sentencepiece":
            return tok.backend.id_to_piece(token_id)
        return tok.backend.id_to_token(token_id)

    tok.bos_token, tok.eos_token = text("bos_token", tok.bos_id), text("eos_token", tok.eos_id)
    return tok


def _load_tokenizer(directory: str | Path) -> Tokenizer:
    """SentencePiece ``tokenizer.model`` if the ``sentencepiece`` package is installed, else ``tokenizer.json``.

    Meta's downloads keep ``tokenizer.model`` next to the model folders, so the parent directory is searched too.

    The special ids come from SentencePiece itself, or from ``tokenizer_config.json`` / ``config.json``,
    falling back to LLaMA's ``<s>`` and ``</s>``.
    """
    directory = Path(directory)
    sp_path, json_path = directory / "tokenizer.model", directory / "tokenizer.json"
    if not sp_path.exists() and not json_path.exists() and (directory.parent / "tokenizer.model").exists():
        sp_path = directory.parent / "tokenizer.model"  # Meta's download: llama-2-7b/../tokenizer.model
    if sp_path.exists():
        try:
            import sentencepiece as spm
        except ImportError:
            spm = None
        if spm is not None:
            sp = spm.SentencePieceProcessor(model_file=str(sp_path))

            def valid(i: int) -> int | None:
                return i if i >= 0 else None

            eos = valid(sp.eos_id())
            extra = [i for i in config_eos_ids(directory) if 0 <= i < sp.vocab_size()]
            return Tokenizer(sp, "sentencepiece", valid(sp.bos_id()), eos, valid(sp.pad_id()), eos_ids=extra)
    if json_path.exists():
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise ImportError(
                f"{json_path} needs the 'tokenizers' package: pip install tokenizers (it comes with transformers)"
            ) from None
        tok = HFTokenizer.from_file(str(json_path))
        tok_config = (
            _read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").exists() else {}
        )
        model_config = _read_json(directory / "config.json") if (directory / "config.json").exists() else {}

        def special(key: str, default: str | None) -> int | None:
            name = _special_token(tok_config, f"{key}_token") or default
            if name is not None and tok.token_to_id(name) is not None:
                return tok.token_to_id(name)
            ids = _id_list(model_config.get(f"{key}_token_id"))
            return ids[0] if ids else None

        # EOS: tokenizer_config's eos_token first, then every id of generation_config.json / config.json
        named = _special_token(tok_config, "eos_token")
        eos = tok.token_to_id(named) if named is not None else None
        eos_ids = config_eos_ids(directory)
        if eos is None and not eos_ids:
            eos = tok.token_to_id("</s>")
        vocab = tok.get_vocab_size(with_added_tokens=True)
        eos_ids = [i for i in eos_ids if 0 <= i < vocab]
        return Tokenizer(tok, "tokenizers", special("bos", "<s>"), eos, special("pad", None), eos_ids=eos_ids)
    if sp_path.exists():
        raise ImportError(
            f"{sp_path} needs the 'sentencepiece' package (pip install sentencepiece), and there is no "
            "tokenizer.json to fall back to"
        )
    raise FileNotFoundError(f"no tokenizer in {directory}: expected tokenizer.model (SentencePiece) or tokenizer.json")
