"""The open model families this chapter's one model runs, at their smallest published shapes (lessons 14-18).

``PUBLISHED[name]`` holds an example Hugging Face model id and the fields of its published ``config.json`` that
matter here; :func:`args_for` turns one into ``ModelArgs`` through the same ``args_from_hf_config`` the loader
uses, and :func:`write_random_checkpoint` writes a random checkpoint of that shape as a Hugging Face folder
(sharded safetensors + index), so everything can be tried offline before downloading real weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from pytorch_llama2_from_scratch.loading import args_from_hf_config, expected_shapes, meta_to_hf_name
from pytorch_llama2_from_scratch.model import ModelArgs, permute_for_hf

# Values from each model's config.json on the Hugging Face hub (as published).
PUBLISHED: dict[str, dict] = {
    "SmolLM2": dict(
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        config=dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True),
    ),
    "Qwen2.5": dict(
        hf_id="Qwen/Qwen2.5-0.5B-Instruct",
        config=dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    ),
    "Qwen3": dict(
        hf_id="Qwen/Qwen3-0.6B",
        config=dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                    num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                    max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    ),
    "TinyLlama": dict(
        hf_id="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        config=dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                    num_attention_heads=32, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                    rope_theta=10000.0, tie_word_embeddings=False),
    ),
    "Llama 3.2": dict(
        hf_id="meta-llama/Llama-3.2-1B-Instruct",
        config=dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                    rope_theta=500000.0, tie_word_embeddings=True,
                    rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192)),
    ),
    "Mistral": dict(
        hf_id="mistralai/Mistral-7B-Instruct-v0.1",
        config=dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
                    rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False),
    ),
}  # fmt: skip

# What marks each family in its config.json (README table).
MARKS = {
    "SmolLM2": "`model_type: llama`, GQA, `tie_word_embeddings: true`",
    "Qwen2.5": "`model_type: qwen2` (biases on q/k/v), `tie_word_embeddings: true`",
    "Qwen3": "`model_type: qwen3` (q/k norm), `head_dim: 128` != 1024 / 16",
    "TinyLlama": "`model_type: llama`, GQA (4 KV heads), untied",
    "Llama 3.2": "`rope_scaling.rope_type: llama3`, `rope_theta: 500000`, tied",
    "Mistral": "`model_type: mistral`, `sliding_window: 4096`",
}


def args_for(name: str, **overrides) -> ModelArgs:
    """``ModelArgs`` of a published shape (``overrides`` e.g. ``max_seq_len``, ``max_batch_size``)."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown family {name!r}; choose from {', '.join(PUBLISHED)}")
    return args_from_hf_config(PUBLISHED[name]["config"], **overrides)


def write_random_checkpoint(
    name: str,
    directory: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    shard_bytes: int = 2 * 2**30,
    seed: int = 0,
    **config_changes,
) -> Path:
    """A random checkpoint of family ``name`` written as a Hugging Face folder: ``config.json`` and
    ``model-0000k-of-0000n.safetensors`` shards of at most ``shard_bytes`` with ``model.safetensors.index.json``
    (as ``save_pretrained`` writes them). Tensors are drawn one at a time, so writing needs little memory."""
    from safetensors.torch import save_file

    config = {**PUBLISHED[name]["config"], **config_changes}
    args = args_from_hf_config(config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(args)
    if args.tie_embeddings:
        shapes.pop("output.weight")
    # shard boundaries first (sizes only), then each shard is drawn, written and dropped: little memory needed
    element = torch.empty((), dtype=dtype).element_size()
    groups: list[list[str]] = [[]]
    size = 0
    for meta_name, shape in shapes.items():
        nbytes = element * int(torch.Size(shape).numel())
        if size + nbytes > shard_bytes and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append(meta_name)
        size += nbytes
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        shard = {}
        for meta_name in group:
            t = torch.randn(shapes[meta_name], generator=g)
            t = 1.0 + 0.1 * t if meta_name.endswith("norm.weight") else 0.02 * t
            if meta_name.endswith("attention.wq.weight"):  # stored as HF stores it (half-split RoPE order)
                t = permute_for_hf(t, args.n_heads)
            elif meta_name.endswith("attention.wk.weight"):
                t = permute_for_hf(t, args.n_kv_heads)
            shard[meta_to_hf_name(meta_name)] = t.to(dtype)
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
        total += sum(t.numel() * t.element_size() for t in shard.values())
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps({**config, "torch_dtype": str(dtype).split(".")[-1]}, indent=2))
    return directory


@torch.inference_mode()
def decode_tokens_per_s(model, n_tokens: int = 16, prompt_len: int = 8, seed: int = 0) -> float:
    """Greedy decode speed of ``model`` (batch 1, KV cache): new tokens / wall-clock seconds, prefill excluded."""
    from pytorch_llama2_from_scratch.generate import generate

    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.args.vocab_size, (prompt_len,), generator=g).tolist()
    generate(model, [prompt], 2)  # warm-up
    t0 = time.perf_counter()
    model(torch.tensor([prompt]), start_pos=0)  # prefill, timed separately
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate(model, [prompt], n_tokens)
    return n_tokens / max(time.perf_counter() - t0 - prefill, 1e-9)
