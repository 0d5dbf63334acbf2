"""Weight loading: HF layout (safetensors / .bin, sharded or not) and Meta layout (1 or 2 shards) give the logits
of the Hugging Face reference; broken checkpoints name their keys; tokenizers load from tokenizer.json."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from pytorch_llama2_from_scratch.loading import (
    CheckpointError,
    args_from_hf_config,
    detect_layout,
    load_checkpoint,
    load_hf_checkpoint,
    load_meta_checkpoint,
    load_tokenizer,
    save_meta_checkpoint,
)
from tests.numerics import assert_close_scaled, assert_close_to_fp64, to_double

HEADS = {"mha": 4, "gqa": 2, "mqa": 1}


def _tokens(vocab: int, b: int = 2, t: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _assert_same_logits(model, hf_model, use_cache: bool = True):
    """Policy of the suite: against HF in float64, allowing a multiple of HF's own fp32 error."""
    tokens = _tokens(hf_model.config.vocab_size)
    ref32 = hf_model(tokens).logits
    ref64 = to_double(hf_model)(tokens).logits
    ours = model(tokens, use_cache=use_cache)
    assert ours.shape == ref32.shape and ours.dtype == torch.float32
    assert_close_to_fp64(ours, ref64, ref32)


@pytest.mark.parity
@pytest.mark.parametrize("kind", list(HEADS))
def test_hf_layout_matches_transformers(kind, make_hf_llama, tmp_path):
    hf = make_hf_llama(num_key_value_heads=HEADS[kind], rope_theta=500.0 if kind == "gqa" else 10000.0)
    hf.save_pretrained(tmp_path)
    model, args = load_hf_checkpoint(tmp_path, max_batch_size=2)
    assert (args.n_heads, args.n_kv_heads, args.hidden_dim) == (4, HEADS[kind], 96)
    assert args.max_seq_len == hf.config.max_position_embeddings
    _assert_same_logits(model, hf, use_cache=True)
    _assert_same_logits(model, hf, use_cache=False)


@pytest.mark.parity
@pytest.mark.parametrize(("kind", "n_shards"), [("mha", 1), ("gqa", 2), ("mqa", 1), ("mha", 2)])
def test_meta_layout_matches_transformers(kind, n_shards, make_hf_llama, tmp_path):
    """A Meta checkpoint written from the HF weights with our inverse permutation, possibly split in 2 ranks."""
    hf = make_hf_llama(num_key_value_heads=HEADS[kind], seed=1)
    args = args_from_hf_config(hf.config.to_dict())
    save_meta_checkpoint(hf, args, tmp_path, n_shards=n_shards, include_rope_freqs=True)
    files = sorted(p.name for p in tmp_path.glob("consolidated.*.pth"))
    assert files == [f"consolidated.{i:02d}.pth" for i in range(n_shards)]
    if n_shards == 2:  # really split: column-parallel rows and row-parallel columns halved
        shard = torch.load(tmp_path / "consolidated.01.pth", weights_only=True)
        assert shard["layers.0.attention.wq.weight"].shape == (32, 64)
        assert shard["layers.0.attention.wo.weight"].shape == (64, 32)
        assert shard["tok_embeddings.weight"].shape == (96, 32)
        assert "rope.freqs" in shard
    assert detect_layout(tmp_path) == "meta"
    model, loaded_args = load_checkpoint(tmp_path, max_seq_len=64, max_batch_size=2)
    assert loaded_args.hidden_dim == 96 and loaded_args.n_kv_heads == HEADS[kind]
    _assert_same_logits(model, hf)


@pytest.mark.parity
def test_bin_shards_and_index(hf_llama_dir, tmp_path):
    """The older pytorch_model-0000N-of-0000M.bin + index json layout."""
    src, hf = hf_llama_dir
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    state = hf.state_dict()
    names = list(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    weight_map = {}
    for fname, keys in halves.items():
        torch.save({k: state[k] for k in keys}, tmp_path / fname)
        weight_map.update({k: fname for k in keys})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model, _ = load_checkpoint(tmp_path, max_batch_size=2)
    _assert_same_logits(model, hf)


@pytest.mark.parity
def test_sharded_safetensors(make_hf_llama, tmp_path):
    hf = make_hf_llama(seed=2)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, _ = load_hf_checkpoint(tmp_path, max_batch_size=2)
    _assert_same_logits(model, hf)


@pytest.mark.parity
def test_dtype_and_defaults(hf_llama_dir):
    src, hf = hf_llama_dir
    model, _ = load_hf_checkpoint(src, dtype=torch.float16, max_seq_len=32)
    assert model.tok_embeddings.weight.dtype == torch.float16
    assert model.layers[0].attention.cache_k.dtype == torch.float16
    assert model.layers[0].attention.cache_k.shape == (1, 32, 2, 16)
    assert not model.training
    tokens = _tokens(96, b=1, t=12)
    with torch.no_grad():
        ref64 = to_double(hf)(tokens).logits
        ours = model(tokens)
    # fp16 weights and activations against the float64 reference: a few fp16 ulps of the logit scale
    assert_close_scaled(ours, ref64, ulps=16, dtype=torch.float16)


# ------------------------------------------------------------------------------------------------ errors
def _resave(src, dst, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(str(src / "model.safetensors"))
    edit(state)
    dst.mkdir(exist_ok=True)
    save_file(state, str(dst / "model.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_missing_key_is_named(hf_llama_dir, tmp_path):
    src, _ = hf_llama_dir
    bad = _resave(src, tmp_path / "bad", lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_checkpoint(bad)


def test_unexpected_key_is_named(hf_llama_dir, tmp_path):
    src, _ = hf_llama_dir
    bad = _resave(src, tmp_path / "bad", lambda s: s.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): model\.layers\.0\.self_attn\.q_proj\.bias"):
        load_hf_checkpoint(bad)


def test_shape_mismatch_is_named(hf_llama_dir, tmp_path):
    src, _ = hf_llama_dir
    bad = _resave(src, tmp_path / "bad", lambda s: None)
    config = json.loads((bad / "config.json").read_text())
    config["vocab_size"] = 100
    (bad / "config.json").write_text(json.dumps(config))
    expected = r"model\.embed_tokens\.weight: checkpoint \(96, 64\) vs model \(100, 64\)"
    with pytest.raises(CheckpointError, match=expected):
        load_hf_checkpoint(bad)


def test_meta_missing_key_and_bad_dirs(make_hf_llama, tmp_path):
    hf = make_hf_llama(seed=3)
    args = args_from_hf_config(hf.config.to_dict())
    save_meta_checkpoint(hf, args, tmp_path / "meta")
    state = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    del state["layers.0.ffn_norm.weight"]
    torch.save(state, tmp_path / "meta" / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): layers\.0\.ffn_norm\.weight"):
        load_meta_checkpoint(tmp_path / "meta")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face checkpoint"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no Hugging Face weights"):
        (tmp_path / "cfg").mkdir()
        (tmp_path / "cfg" / "config.json").write_text(json.dumps(hf.config.to_dict()))
        load_hf_checkpoint(tmp_path / "cfg")


def test_unsupported_config_is_rejected(hf_llama_dir):
    _, hf = hf_llama_dir
    config = hf.config.to_dict()
    with pytest.raises(ValueError, match="attention_bias"):
        args_from_hf_config({**config, "attention_bias": True})
    with pytest.raises(ValueError, match="rope type 'linear'"):
        args_from_hf_config({**config, "rope_parameters": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        args_from_hf_config({**config, "model_type": "gpt2"})


# ------------------------------------------------------------------------------------------------ tokenizers
def test_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    text = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer"] * 20
    tok.train_from_iterator(text, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}}))

    loaded = load_tokenizer(tmp_path)
    assert (loaded.bos_id, loaded.eos_id) == (tok.token_to_id("<s>"), tok.token_to_id("</s>"))
    ids = loaded.encode("to be or not", bos=True, eos=True)
    assert ids[0] == loaded.bos_id and ids[-1] == loaded.eos_id
    assert ids[1:-1] == tok.encode("to be or not").ids
    assert loaded.decode(ids) == "to be or not"  # special tokens are skipped
    assert loaded.vocab_size == tok.get_vocab_size()


def test_tokenizer_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="expected tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if the package were not installed
    with pytest.raises(ImportError, match="needs the 'sentencepiece' package"):
        load_tokenizer(tmp_path)


_SP_TEXT = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles, 1601",
] * 30


def _train_sentencepiece(directory) -> None:
    """A tiny BPE tokenizer.model trained offline with Llama's settings (byte fallback, identity normalisation,
    a dummy prefix space, digits split)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SP_TEXT),
        model_writer=buf,
        vocab_size=400,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(buf.getvalue())


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    """``tokenizer.model`` through SentencePiece against transformers' ``LlamaTokenizer`` on the same file (which
    converts the pieces into its own BPE implementation): the same ids after BOS, the same text back."""
    from transformers import LlamaTokenizer

    _train_sentencepiece(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "sentencepiece" and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, None)
    assert tok.vocab_size == 400
    ref = LlamaTokenizer.from_pretrained(str(tmp_path))
    # texts that start with a non-space (HF and SentencePiece treat leading spaces differently, by design)
    texts = ["To be or not", "Whether the question \u00e9 \u00fcn\u00efcode \U0001f642", "a\nb  c", "x 12345 y"]
    for text in texts:
        ids = tok.encode(text, bos=True, eos=True)
        assert ids == [1, *ref(text, add_special_tokens=False)["input_ids"], 2], text
        assert tok.decode(ids) == text == ref.decode(ids, skip_special_tokens=True)
    assert any(i >= 3 and i < 3 + 256 for i in tok.encode("\U0001f642"))  # unseen emoji -> byte-fallback pieces


def test_published_llama2_configs_map_to_the_presets():
    """The fields of meta-llama/Llama-2-7b-hf config.json and of Meta's 7B / 70B params.json (as published)."""
    from pytorch_llama2_from_scratch.model import ModelArgs

    hf_7b = {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 11008,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "vocab_size": 32000,
    }
    preset = ModelArgs.preset("llama2-7b", max_batch_size=1)
    assert args_from_hf_config(hf_7b, max_batch_size=1).num_params() == preset.num_params()
    got = args_from_hf_config(hf_7b, max_batch_size=1)
    assert (got.dim, got.n_layers, got.n_heads, got.n_kv_heads, got.ffn_hidden, got.max_seq_len) == (
        4096,
        32,
        32,
        32,
        11008,
        4096,
    )
    assert got.rope_theta == 10000.0 and got.norm_eps == 1e-5

    from pytorch_llama2_from_scratch.loading import args_from_meta_params

    meta_7b = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}
    assert args_from_meta_params(meta_7b, vocab_size=32000).num_params() == preset.num_params()
    meta_70b = {
        "dim": 8192,
        "multiple_of": 4096,
        "ffn_dim_multiplier": 1.3,
        "n_heads": 64,
        "n_kv_heads": 8,
        "n_layers": 80,
        "norm_eps": 1e-05,
        "vocab_size": -1,
    }
    a70 = args_from_meta_params(meta_70b, vocab_size=32000)
    assert a70.ffn_hidden == 28672 and a70.num_params() == ModelArgs.preset("llama2-70b").num_params()
    with pytest.raises(ValueError, match="vocab_size -1"):
        args_from_meta_params(meta_7b)
