"""The model families beyond Llama 2 (Llama 3.x RoPE scaling, SmolLM2 / TinyLlama tied or untied embeddings with
GQA, Qwen2 biases, Qwen3 q/k norm with its own head_dim, Mistral's sliding window) against ``transformers``.

Every reference is a tiny random model of the family's ``transformers`` class, saved with ``save_pretrained`` and
read back by our loader (so the family detection from ``config.json`` is tested too). Logits follow the suite's
tolerance policy (HF in float64, a multiple of HF's own fp32 error); sequences run past
``original_max_position_embeddings`` (llama3 scaling) and past ``sliding_window`` (Mistral).
"""

from __future__ import annotations

import pytest
import torch

from pytorch_llama2_from_scratch.generate import generate, left_pad
from pytorch_llama2_from_scratch.loading import args_from_hf_config, load_hf_checkpoint
from pytorch_llama2_from_scratch.model import ModelArgs, rope_inv_freq
from tests.numerics import assert_close_to_fp64, to_double

SMALL = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,  # head_dim 16: wavelengths 6.3 (kept), 20 (smoothed), 63+ (scaled)
}
FAMILIES = {
    # name: (transformers config class, config overrides, sequence length of the tests)
    "llama3.2": ("LlamaConfig", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True), 48),
    "smollm2": ("LlamaConfig", dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=100000.0), 24),
    "tinyllama": ("LlamaConfig", dict(num_key_value_heads=1, tie_word_embeddings=False), 24),
    "qwen2.5": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1000000.0), 24),
    "qwen3": ("Qwen3Config", dict(head_dim=32, tie_word_embeddings=True), 24),
    "mistral": ("MistralConfig", dict(sliding_window=8, head_dim=16), 24),
}


def _make_hf(family: str, seed: int = 0):
    import transformers

    cls_name, overrides, _ = FAMILIES[family]
    config = getattr(transformers, cls_name)(**{**SMALL, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # random norms and biases, so that a dropped or mis-permuted one is visible
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """``(name, hf_model, our_model, seq_len)``: our model loaded from the HF model's ``save_pretrained`` folder."""
    name = request.param
    hf = _make_hf(name)
    directory = tmp_path_factory.mktemp(name.replace(".", "_"))
    hf.save_pretrained(directory)
    ours, _ = load_hf_checkpoint(directory, max_batch_size=4)
    return name, hf, ours, FAMILIES[name][2]


def _tokens(b: int, t: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, SMALL["vocab_size"], (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _refs(hf, tokens):
    return to_double(hf)(tokens).logits, hf(tokens).logits


def test_family_is_detected_from_config(family):
    name, hf, ours, _ = family
    a = ours.args
    assert a.tie_embeddings == hf.config.tie_word_embeddings
    assert (ours.output.weight is ours.tok_embeddings.weight) == a.tie_embeddings
    assert a.qkv_bias == name.startswith("qwen2") and a.qk_norm == (name == "qwen3")
    assert a.sliding_window == (8 if name == "mistral" else None)
    assert (a.rope_scaling or {}).get("rope_type") == ("llama3" if name == "llama3.2" else None)
    assert a.head_dim == (32 if name == "qwen3" else 16)
    # parameter count: from the args alone, from our module, and from transformers' module agree
    assert a.num_params() == ours.num_params() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parity
@torch.no_grad()
def test_logits_match_transformers(family):
    name, hf, ours, t = family
    tokens = _tokens(2, t)
    ref64, ref32 = _refs(hf, tokens)
    assert_close_to_fp64(ours(tokens, use_cache=False), ref64, ref32, what=f"{name} without cache")
    ours.reset_cache()
    assert_close_to_fp64(ours(tokens), ref64, ref32, what=f"{name} with cache")


@pytest.mark.parity
@torch.no_grad()
def test_kv_cache_decode_matches_full_forward(family):
    """Prefill 5 tokens, then one token at a time past the window / the original context: HF's full forward."""
    name, hf, ours, t = family
    tokens = _tokens(2, t, seed=5)
    ref64, ref32 = _refs(hf, tokens)
    ours.reset_cache()
    assert_close_to_fp64(ours(tokens[:, :5]), ref64[:, :5], ref32[:, :5], what=f"{name} prefill")
    for pos in range(5, t):
        step = ours(tokens[:, pos : pos + 1], start_pos=pos)[:, 0]
        assert_close_to_fp64(step, ref64[:, pos], ref32[:, pos], what=f"{name} decode at {pos}")


def test_greedy_generation_matches_transformers(family):
    name, hf, ours, t = family
    prompt = _tokens(1, 6, seed=9)[0].tolist()
    n = t - 6
    got = generate(ours, [prompt], n)[0]
    ids = torch.tensor([prompt])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0)
    assert got == ref[0, len(prompt) :].tolist()


@pytest.mark.parity
def test_left_padded_batch_equals_each_prompt_alone(family):
    """Prefill logits of a left-padded batch = HF on each prompt alone; generated tokens = each prompt alone."""
    name, hf, ours, t = family
    prompts = [_tokens(1, n, seed=20 + n)[0].tolist() for n in (11, 4, 7)]
    tokens, mask, positions = left_pad(prompts, 0)
    with torch.no_grad():
        ours.reset_cache()
        logits = ours(tokens, attention_mask=mask, positions=positions)
    for i, p in enumerate(prompts):
        ref64, ref32 = (r[0] for r in _refs(hf, torch.tensor([p])))
        assert_close_to_fp64(logits[i, tokens.shape[1] - len(p) :], ref64, ref32, what=f"{name} row {i}")
    n = t - 11
    batch = generate(ours, prompts, n)
    assert batch == [generate(ours, [p], n)[0] for p in prompts]


def test_llama3_frequencies_match_transformers():
    """Our llama3 inverse frequencies against transformers' own llama3 RoPE initialiser, at the real Llama 3.1
    settings (head_dim 128, theta 500000, factor 8, low 1, high 4, original context 8192)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {**LLAMA3_ROPE, "rope_theta": 500000.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072, rope_parameters=rope)
    ref, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours = rope_inv_freq(128, 500000.0, scaling=rope)
    assert attention_factor == 1.0
    assert torch.allclose(ours, ref.float(), rtol=2e-6, atol=0)
    unscaled = rope_inv_freq(128, 500000.0)
    wavelen = 2 * torch.pi / unscaled
    assert torch.equal(ours[wavelen < 8192 / 4], unscaled[wavelen < 8192 / 4])  # fast dimensions untouched
    assert torch.allclose(ours[wavelen > 8192], unscaled[wavelen > 8192] / 8)  # slow dimensions divided by 8


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (dict(model_type="gemma"), r"model_type 'gemma'; supported: llama, mistral, qwen2, qwen3"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), r"rope type 'yarn' .* supported: default, llama3"),
        (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}), r"llama3 rope scaling lacks low_freq_factor"),
        (dict(rope_parameters={**LLAMA3_ROPE, "factor": 0.0}), r"llama3 rope scaling factor must be a finite number"),
        (dict(rope_parameters={**LLAMA3_ROPE, "high_freq_factor": 0.5}), r"high_freq_factor > low_freq_factor"),
        (dict(model_type="qwen2", use_sliding_window=True), r"use_sliding_window=true"),
        (dict(model_type="llama", attention_bias=True), r"attention_bias=true, which the llama family"),
        (dict(model_type="mistral", sliding_window=0), r"sliding_window must be a positive integer or None, got 0"),
        (dict(model_type="llama", head_dim=32), r"head_dim 32 \* num_attention_heads 4 != hidden_size 64"),
    ],
)
def test_unsupported_family_features_are_named(change, pattern):
    config = {**SMALL, "model_type": "llama", **change}
    with pytest.raises(ValueError, match=pattern):
        args_from_hf_config(config)


def test_sliding_window_mask_in_isolation():
    """With W = 3 the last query sees exactly the last 3 keys: changing an older token changes nothing there,
    changing one inside the window does (our model alone, a property of the definition)."""
    torch.manual_seed(0)
    from pytorch_llama2_from_scratch.model import Transformer

    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=20, max_seq_len=16, max_batch_size=1, sliding_window=3)
    model = Transformer(args).eval()
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        base = model(tokens, use_cache=False)[0, -1]
        old = tokens.clone()
        old[0, 4] = 9  # 3 positions before the last: outside the window of the last query (one layer)
        inside = tokens.clone()
        inside[0, 5] = 9
        assert torch.equal(model(old, use_cache=False)[0, -1], base)
        assert not torch.allclose(model(inside, use_cache=False)[0, -1], base)


_MEMORY_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from pytorch_llama2_from_scratch.loading import measure_loading_memory
r = measure_loading_memory(sys.argv[2], max_seq_len=16)
dtypes = sorted({str(p.dtype) for p in r["model"].parameters()})
print(json.dumps({"ratio": r["ratio"], "weight_bytes": r["weight_bytes"], "dtypes": dtypes}))
"""


@pytest.mark.slow
def test_sharded_bf16_checkpoint_loads_in_place_with_low_peak_memory(tmp_path):
    """A 2-shard bf16 safetensors folder (+ index) of ~5 M parameters, loaded in a fresh process: the weights
    stay bf16 and the peak resident memory grows by at most 1.3x the weights' size (no second copy)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=4000, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=256,
    )  # fmt: skip
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    names, weight_map = list(shapes), {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        tensors = {k: (torch.randn(shapes[k], generator=g) * 0.02).to(torch.bfloat16) for k in part}
        save_file(tensors, str(tmp_path / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(tmp_path)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, root, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dtypes"] == ["torch.bfloat16"]
    assert result["weight_bytes"] == 2 * sum(s.numel() for s in shapes.values())
    assert result["ratio"] <= 1.3, result
