"""Step 17 - tokenizers and chat templates: how text becomes the ids an instruct model was trained on.

Two tokenizer kinds cover the families of this chapter (``loading.load_tokenizer`` reads both):

* **SentencePiece** ``tokenizer.model`` (Llama 2, TinyLlama): pieces with ``▁`` for spaces, byte fallback for
  characters outside the vocabulary;
* **byte-level BPE** ``tokenizer.json`` through the ``tokenizers`` library (Llama 3, Qwen, SmolLM2, Mistral's
  newer models): text is UTF-8 bytes, merged by learned pair merges, so *any* text encodes without an unknown token.

On top sit **special tokens**, each one id that never comes out of ordinary text: ``<|begin_of_text|>``, role
markers, and the end-of-turn / end-of-text ids. A checkpoint can have *several* EOS ids (Llama 3.x: ``<|eot_id|>``
ends an answer, ``<|end_of_text|>`` a document): ``eos_token_id`` in ``config.json`` / ``generation_config.json``
is then a list, and generation must stop on any of them (``Tokenizer.eos_ids``).

An instruct model only answers well in the exact format it was fine-tuned on; its **chat template** (Jinja, in
``tokenizer_config.json``) writes that format. ``chat.render_chat`` renders it; with ``add_generation_prompt`` it
ends with the header of the assistant's turn, which is where the model starts writing.

This lesson trains a tiny byte-level BPE offline (with Llama-3-style special tokens), shows how a sentence and the
special tokens encode, and renders one conversation in three formats: Llama 3, ChatML (Qwen, SmolLM2), Llama-2-chat.

Run:  python pytorch_llama2_from_scratch/17_tokenizers_and_chat_templates.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import positive_int, run_cli
from pytorch_llama2_from_scratch.chat import EXAMPLE_TEMPLATES, render_chat
from pytorch_llama2_from_scratch.loading import load_tokenizer

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>", "<s>", "</s>"]  # fmt: skip
CORPUS = [
    "A tokenizer turns text into ids; a chat template turns a conversation into text.",
    "Byte-level BPE starts from the 256 byte values and merges the most frequent pairs.",
    "Special tokens mark the roles: system, user and assistant.",
]
CONVERSATION = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What does a chat template do?"},
]
FORMAT_TOKENS = {  # which special tokens each format uses as BOS / end of turn
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "chatml": (None, "<|im_end|>"),
    "llama2": ("<s>", "</s>"),
}


def build_tokenizer(directory: Path, vocab_size: int = 400, template: str = "llama3") -> Path:
    """Train a byte-level BPE on ``CORPUS`` and write ``tokenizer.json`` + ``tokenizer_config.json`` (+ config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 50, trainer)
    tok.save(str(directory / "tokenizer.json"))
    bos, eos = FORMAT_TOKENS[template]
    config = {"eos_token": eos, "chat_template": EXAMPLE_TEMPLATES[template]}
    if bos:
        config["bos_token"] = bos
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    ids = [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]
    (directory / "config.json").write_text(json.dumps({"eos_token_id": ids}))  # as Llama 3.x checkpoints list them
    return directory


def main(vocab_size: int = 400) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lesson17_"))
    tok = load_tokenizer(build_tokenizer(tmp, vocab_size))
    shutil.rmtree(tmp)  # everything is in memory now
    print(f"{tok}; EOS ids {list(tok.eos_ids)} (tokenizer_config's eos_token first, then config.json's list)")
    text = "A chat template turns a conversation into text: ünïcode too 🙂"
    ids = tok.encode(text, bos=False)
    pieces = [tok.backend.id_to_token(i) for i in ids]
    print(f"\n{text!r}\n -> {len(ids)} ids: {ids}\n -> pieces {pieces}")
    print(f" -> decoded back: {tok.decode(ids)!r}")
    special = tok.encode("<|start_header_id|>user<|end_header_id|>", bos=False)
    print(f"special tokens in text are single ids: '<|start_header_id|>user<|end_header_id|>' -> {special}")

    rendered = {}
    for name in EXAMPLE_TEMPLATES:
        bos, eos = FORMAT_TOKENS[name]
        rendered[name] = render_chat(EXAMPLE_TEMPLATES[name], CONVERSATION, True, bos, eos)
        print(f"\n--- {name} (add_generation_prompt=True): {len(tok.encode(rendered[name], bos=False))} tokens")
        print(rendered[name])
    return {"ids": ids, "text": text, "decoded": tok.decode(ids), "special": special, "rendered": rendered,
            "eos_ids": tok.eos_ids}  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-size", dest="vocab_size", type=positive_int, default=400, help="BPE vocabulary (>= 266)")
    args = p.parse_args(argv)
    if args.vocab_size < 256 + len(SPECIALS):
        p.error(f"--vocab-size must be >= {256 + len(SPECIALS)} (256 bytes + the special tokens)")
    return args


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
