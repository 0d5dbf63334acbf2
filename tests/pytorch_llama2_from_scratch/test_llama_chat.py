"""Tokenizers with special tokens and several EOS ids, chat templates and ``chat.py``, against ``transformers``.

The tokenizer files are built offline with the ``tokenizers`` trainers (byte-level BPE as in Llama 3, Qwen and
SmolLM2); the reference is ``transformers.AutoTokenizer`` loading the same folder: its ``encode``/``decode`` and
its ``apply_chat_template(..., add_generation_prompt=True)`` for a Llama-3-style, a ChatML (Qwen) and a
Llama-2-chat template (templates written here in each format).
"""

from __future__ import annotations

import json

import pytest
import torch

from pytorch_llama2_from_scratch.chat import ChatSession, render_chat, sampling_from
from pytorch_llama2_from_scratch.chat import main as chat_main
from pytorch_llama2_from_scratch.loading import load_hf_checkpoint, load_tokenizer
from pytorch_llama2_from_scratch.sampling import SamplingConfig

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>", "<s>", "</s>"]  # fmt: skip
VOCAB = 320

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML = """{% if messages[0]['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif %}
{% for message in messages %}
    {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}
{% endfor %}
{% if add_generation_prompt %}
    {{ '<|im_start|>assistant\\n' }}
{% endif %}"""
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = none %}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant/user/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}"
    "{% else %}{{ bos_token + '[INST] ' }}{% endif %}{{ message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)
TEMPLATES = {
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "chatml": (CHATML, None, "<|im_end|>"),
    "llama2": (LLAMA2, "<s>", "</s>"),
}
CONVERSATION = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "What colour is the sky?  "},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And grass? Ünïcödé 🙂"},
]


def _write_tokenizer(directory, template_name: str = "llama3") -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 10,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [m["content"] for m in CONVERSATION] + ["You are a helpful assistant.", "Green, of course."]
    tok.train_from_iterator(text * 20, trainer)
    tok.save(str(directory / "tokenizer.json"))
    template, bos, eos = TEMPLATES[template_name]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "chat_template": template}
    if bos is not None:
        config["bos_token"] = bos
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_chat_prompt_equals_apply_chat_template(tmp_path, name):
    from transformers import AutoTokenizer

    _write_tokenizer(tmp_path, name)
    tok = load_tokenizer(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    for messages in (CONVERSATION, CONVERSATION[1:2]):
        text = render_chat(tok.chat_template, messages, True, tok.bos_token, tok.eos_token)
        assert text == ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert tok.encode(text, bos=False) == list(ids)  # special tokens in the text become their single ids
        no_gen = render_chat(tok.chat_template, messages, False, tok.bos_token, tok.eos_token)
        assert no_gen == ref.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)


def test_tokenizer_json_equals_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    _write_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [1, 4], "bos_token_id": 0}))
    tok = load_tokenizer(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.vocab_size == len(ref)
    for text in ["What colour is the sky?", "  leading spaces\tand tabs\n", "Ünïcödé 🙂 <|eot_id|> x", ""]:
        ids = tok.encode(text, bos=False)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    # EOS: tokenizer_config's eos_token first, then every id of config.json
    assert tok.eos_ids == (ref.convert_tokens_to_ids("<|eot_id|>"), 1)
    assert (tok.bos_token, tok.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")


def test_chat_template_errors(tmp_path):
    _write_tokenizer(tmp_path, "llama2")
    tok = load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="the conversation is empty"):
        render_chat(tok.chat_template, [])
    with pytest.raises(ValueError, match="refused the conversation: roles must alternate"):
        render_chat(tok.chat_template, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="message 0 has role 'robot'"):
        render_chat(tok.chat_template, [{"role": "robot", "content": "a"}])
    with pytest.raises(ValueError, match="message 0 content must be text"):
        render_chat(tok.chat_template, [{"role": "user", "content": 3}])
    with pytest.raises(ValueError, match="no chat template"):
        render_chat(None, CONVERSATION)
    with pytest.raises(ValueError, match="does not render: TemplateSyntaxError"):
        render_chat("{% for m in messages %}", CONVERSATION)


def test_sampling_defaults_from_generation_config():
    gen = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 0}
    assert sampling_from(gen) == SamplingConfig(do_sample=True, temperature=0.6, top_p=0.9)
    assert sampling_from(gen, temperature=1.2).temperature == 1.2
    assert sampling_from(gen, do_sample=False) == SamplingConfig()
    assert sampling_from({}) == SamplingConfig()  # no generation_config.json: greedy
    assert sampling_from({}, top_k=5) == SamplingConfig(do_sample=True, top_k=5)


# ============================================================================================ chat.py on a tiny model
@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory, make_hf_llama):
    """A tiny random Llama with a Llama-3-style tokenizer, chat template and generation_config (greedy)."""
    directory = tmp_path_factory.mktemp("chat_ck")
    hf = make_hf_llama(vocab_size=VOCAB, max_position_embeddings=128, seed=8)
    hf.save_pretrained(directory)
    _write_tokenizer(directory)
    eot = json.loads((directory / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in eot["added_tokens"]}
    config = json.loads((directory / "config.json").read_text())
    config["eos_token_id"] = [ids["<|end_of_text|>"], ids["<|eot_id|>"]]
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    return directory, hf


def test_chat_one_shot_answer_equals_transformers(chat_checkpoint, capsys):
    from transformers import AutoTokenizer

    directory, hf = chat_checkpoint
    messages = chat_main(str(directory), prompt="What colour is the sky?", max_new_tokens=12, device="cpu")
    assert [m["role"] for m in messages] == ["user", "assistant"]
    ref_tok = AutoTokenizer.from_pretrained(str(directory))
    prompt = ref_tok.apply_chat_template(
        messages[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    eos = json.loads((directory / "config.json").read_text())["eos_token_id"]
    out = hf.generate(**prompt, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    ref = ref_tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert messages[1]["content"] == ref
    assert ref in capsys.readouterr().out  # streamed to the terminal


def test_chat_interactive_reset_and_exit(chat_checkpoint, capsys):
    directory, _ = chat_checkpoint
    lines = iter(["hello", "", "/reset", "again", "/exit"])
    messages = chat_main(str(directory), max_new_tokens=4, device="cpu", input_fn=lambda _: next(lines))
    assert [m["content"] for m in messages if m["role"] == "user"] == ["again"]  # /reset forgot "hello"
    assert "(conversation cleared)" in capsys.readouterr().out
    lines = iter(["hi"])

    def eof_after_one(_):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    messages = chat_main(str(directory), max_new_tokens=3, device="cpu", input_fn=eof_after_one)  # Ctrl-D quits
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_ctrl_c_stops_the_answer_and_keeps_the_conversation(chat_checkpoint):
    directory, _ = chat_checkpoint
    model, _ = load_hf_checkpoint(directory, max_seq_len=128)
    session = ChatSession(model, load_tokenizer(directory), SamplingConfig(), max_new_tokens=20)
    calls = []

    def interrupt_after_two(text):
        calls.append(text)
        if len(calls) == 2:
            raise KeyboardInterrupt

    answer, interrupted = session.ask("What colour is the sky?", interrupt_after_two)
    full, _ = ChatSession(model, load_tokenizer(directory), SamplingConfig(), 20).ask("What colour is the sky?")
    assert interrupted and full.startswith(answer) and len(answer) < len(full)
    assert session.messages[-1] == {"role": "assistant", "content": answer}
    answer2, interrupted2 = session.ask("And grass?")  # the conversation goes on
    assert not interrupted2 and len(session.messages) == 4


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--prompt", " "], r"--prompt is empty"),
        (["--max-new-tokens", "0", "--prompt", "x"], r"--max-new-tokens must be an integer >= 1, got 0"),
        (["--temperature", "nan", "--prompt", "x"], r"--temperature must be a finite number > 0"),
        (["--top-p", "2", "--prompt", "x"], r"--top-p must be in \(0, 1\]"),
        (["--context", "-1", "--prompt", "x"], r"--context must be an integer >= 1"),
    ],
)
def test_chat_cli_bad_options(chat_checkpoint, capsys, argv, pattern):
    import re

    from pytorch_llama2_from_scratch.chat import cli

    with pytest.raises(SystemExit) as exc:
        cli(["--checkpoint", str(chat_checkpoint[0]), "--device", "cpu", *argv])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(pattern, err), err


def test_chat_refuses_a_checkpoint_without_template(chat_checkpoint, tmp_path, capsys):
    from pytorch_llama2_from_scratch.chat import cli

    directory, _ = chat_checkpoint
    for f in directory.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        cli(["--checkpoint", str(tmp_path), "--prompt", "x", "--device", "cpu"])
    assert "has no chat template" in capsys.readouterr().err
    torch.manual_seed(0)  # (keeps the module's later tests independent of this one's RNG use)
