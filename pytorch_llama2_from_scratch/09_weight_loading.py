"""Step 09 - loading real weights: the Hugging Face layout, Meta's layout, and the tokenizer.

``loading.load_checkpoint(dir)`` detects the layout:

* Hugging Face: ``config.json`` + ``model.safetensors`` (or shards with ``model.safetensors.index.json``, or the
  older ``pytorch_model*.bin``). Keys are renamed to ours and the q/k rows are un-permuted
  (``unpermute_from_hf``), because HF's conversion permuted them for its half-split RoPE (lesson 03).
* Meta: ``params.json`` + ``consolidated.NN.pth``, one file per model-parallel rank (7B: 1, 13B: 2, 70B: 8);
  they are concatenated along each weight's split dimension; ``rope.freqs`` is ignored.

A checkpoint that does not fit raises an error naming the missing, unexpected or mismatched keys.
``loading.load_tokenizer(dir)`` reads SentencePiece's ``tokenizer.model`` (needs ``pip install sentencepiece``)
or ``tokenizer.json`` (the ``tokenizers`` package that comes with transformers).

Without arguments (no download; Meta's weights need a licence) the lesson writes a **tiny random** HF
checkpoint with ``transformers`` (``LlamaConfig`` / ``LlamaForCausalLM.save_pretrained``) plus a small BPE
``tokenizer.json`` into ``out/llama2/tiny_hf``, converts it to a 2-shard Meta checkpoint in
``out/llama2/tiny_meta`` with our own inverse permutation, loads both and compares the logits with the
``transformers`` model. With a real checkpoint it loads it and shows the most likely next tokens of a prompt:

Run:  python pytorch_llama2_from_scratch/09_weight_loading.py
      python pytorch_llama2_from_scratch/09_weight_loading.py --checkpoint ~/models/Llama-2-7b-hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import add_device_argument, out_dir, positive_int, resolve_device, seed_everything, seed_int
from pytorch_llama2_from_scratch.loading import (
    args_from_hf_config,
    detect_layout,
    load_checkpoint,
    load_tokenizer,
    save_meta_checkpoint,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_tiny_tokenizer(directory: Path, vocab_size: int = 320) -> int:
    """Train a byte-level BPE ``tokenizer.json`` with <unk>, <s>, </s> on this lesson's text; return its size."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([__doc__] * 4, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return tok.get_vocab_size()


def write_tiny_hf_checkpoint(directory: Path, seed: int = 0, n_kv_heads: int = 2):
    """A random tiny LLaMA saved the way the Hub stores Llama-2 (config.json + model.safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = write_tiny_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        initializer_range=0.2,  # large random weights: a wrong permutation would be obvious
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


def top_next_tokens(model, tok, prompt: str, device, k: int = 5) -> list[tuple[str, float]]:
    ids = torch.tensor([tok.encode(prompt, bos=True)], device=device)
    with torch.no_grad():
        probs = model(ids, use_cache=False)[0, -1].softmax(-1)
    p, idx = probs.topk(k)
    return [(tok.decode([i]), float(q)) for i, q in zip(idx.tolist(), p.tolist())]


def inspect_checkpoint(
    checkpoint: str,
    prompt: str = "The capital of France is",
    dtype: str = "float32",
    max_seq_len: int = 512,
    device: str = "cpu",
) -> dict:
    """``--checkpoint DIR``: load a real HF or Meta checkpoint, print its arguments and the 5 likeliest next tokens."""
    dev = resolve_device(device)
    t0 = time.perf_counter()
    model, args = load_checkpoint(checkpoint, max_seq_len=max_seq_len, device=dev, dtype=DTYPES[dtype])
    print(f"loaded {detect_layout(checkpoint)} checkpoint {checkpoint} in {time.perf_counter() - t0:.1f} s")
    print(f"  {args}")
    print(f"  {model.num_params():,} parameters (args say {args.num_params():,})")
    result = {"args": args, "num_params": model.num_params()}
    try:
        tok = load_tokenizer(checkpoint)
    except (FileNotFoundError, ImportError) as e:
        print(f"  no tokenizer: {e}")
        return result
    print(f"  {tok}; prompt {prompt!r} -> {tok.encode(prompt)}")
    result["top"] = top_next_tokens(model, tok, prompt, dev)
    for piece, p in result["top"]:
        print(f"    next {piece!r:>14}  p={p:.3f}")
    return result


def main(seed: int = 0, out: str | None = None) -> dict:
    """Write a random tiny LLaMA in both layouts, load each back, and compare the logits with ``transformers``."""
    seed_everything(seed)
    base = Path(out) if out is not None else out_dir("llama2")
    hf_dir, meta_dir = base / "tiny_hf", base / "tiny_meta"
    hf = write_tiny_hf_checkpoint(hf_dir, seed)
    args = args_from_hf_config(hf.config.to_dict())
    save_meta_checkpoint(hf, args, meta_dir, n_shards=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(hf_dir / name, meta_dir / name)
    print(f"wrote a random tiny HF checkpoint to {hf_dir}: {sorted(p.name for p in hf_dir.iterdir())}")
    print(f"and its 2-shard Meta copy to {meta_dir}: {sorted(p.name for p in meta_dir.iterdir())}")

    from_hf, _ = load_checkpoint(hf_dir, max_seq_len=128, dtype=torch.float32)
    from_meta, _ = load_checkpoint(meta_dir, max_seq_len=128, dtype=torch.float32)
    tok = load_tokenizer(hf_dir)
    ids = torch.tensor([tok.encode("Meta's layout and the Hugging Face layout hold the same weights.")])
    with torch.no_grad():
        ref = hf(ids).logits
        hf_err = (from_hf(ids) - ref).abs().max().item()
        meta_err = (from_meta(ids) - ref).abs().max().item()
    print(f"{tok}; {ids.shape[1]} prompt tokens")
    print(f"logits vs transformers.LlamaForCausalLM: HF-layout loader {hf_err:.1e}, Meta-layout loader {meta_err:.1e}")
    print(f"(scale of the logits: {ref.abs().max().item():.1f})")
    with torch.no_grad():
        logits = {"hf": from_hf(ids), "meta": from_meta(ids)}
    return {
        "hf_err": hf_err,
        "meta_err": meta_err,
        "hf_dir": hf_dir,
        "meta_dir": meta_dir,
        "n_tokens": ids.shape[1],
        "ids": ids,
        "logits": logits,
        "hf_model": hf,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="an HF or Meta LLaMA directory (default: make a tiny random one)")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--max-seq-len", dest="max_seq_len", type=positive_int, default=512)
    add_device_argument(p, default="cpu")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default=None, help="where to write the tiny checkpoints (default: out/llama2)")
    return p.parse_args(argv)


def cli(argv=None) -> None:
    """``--checkpoint DIR`` inspects that checkpoint; without it, the lesson writes and compares tiny ones."""
    options = vars(parse_args(argv))
    if options["checkpoint"] is not None:
        inspect_checkpoint(**{k: options[k] for k in ("checkpoint", "prompt", "dtype", "max_seq_len", "device")})
    else:
        main(seed=options["seed"], out=options["out"])


if __name__ == "__main__":
    from pytorch_basis.common import run_cli
    from pytorch_llama2_from_scratch.generate import CLI_ERRORS

    run_cli(cli, CLI_ERRORS, join_lines=True)  # a bad directory or checkpoint: one clear line
