"""Chat with an instruct checkpoint: its own chat template, streaming answers, several EOS ids (lesson 17).

An instruct model was fine-tuned on conversations written in one exact format -- role markers and special tokens
around every message, e.g. Llama 3's ``<|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|>`` or Qwen's
ChatML ``<|im_start|>user\\n...<|im_end|>``. The checkpoint ships that format as a Jinja template
(``chat_template`` in ``tokenizer_config.json`` or ``chat_template.jinja``); :func:`render_chat` renders it the way
the ecosystem does (a sandboxed Jinja environment with ``trim_blocks`` and ``lstrip_blocks``), so the prompt is
the one the model was trained on. ``add_generation_prompt=True`` appends the header of the assistant's turn; the
model then writes the answer and ends it with one of its EOS ids (Llama 3: ``<|eot_id|>``).

Command line::

    python pytorch_llama2_from_scratch/chat.py --checkpoint DIR              # interactive; /reset, /exit
    python pytorch_llama2_from_scratch/chat.py --checkpoint DIR --prompt "Name three colours."   # one answer

Sampling defaults come from the checkpoint's ``generation_config.json`` (``do_sample``, ``temperature``,
``top_p``, ``top_k``, ``repetition_penalty``); the options override them. Ctrl-C during an answer stops that
answer and keeps the conversation; Ctrl-C or Ctrl-D at the prompt quits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script

from pytorch_basis.common import add_device_argument, resolve_device, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.generate import CLI_ERRORS, decode_continuation, generate
from pytorch_llama2_from_scratch.sampling import SamplingConfig

ROLES = ("system", "user", "assistant", "tool")

# Three prompt formats, written as Jinja templates in the style checkpoints ship them (lesson 17 renders them; the
# tests compare our rendering with transformers' apply_chat_template). A real checkpoint's own template wins.
_LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_CHATML = """{%- if messages[0]['role'] != 'system' %}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
_LLAMA2 = (
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
EXAMPLE_TEMPLATES = {
    "llama3": _LLAMA3,  # Llama 3.x: header markers per role, <|eot_id|> ends a turn
    "chatml": _CHATML,  # Qwen2/2.5/3, SmolLM2: <|im_start|>role ... <|im_end|>, a default system message
    "llama2": _LLAMA2,  # Llama-2-chat: [INST] ... [/INST], the system message inside <<SYS>>
}


# --------------------------------------------------------------------------------------------- templates
def check_messages(messages: Sequence[Mapping]) -> list[dict]:
    """A conversation is a non-empty list of ``{"role": ..., "content": str}`` dicts."""
    if isinstance(messages, Mapping) or not isinstance(messages, Sequence) or isinstance(messages, str):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError("the conversation is empty: give at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; roles are {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} content must be text, got {type(m['content']).__name__}")
        out.append(dict(m))
    return out


def render_chat(
    template: str | None,
    messages: Sequence[Mapping],
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **variables,
) -> str:
    """Render a chat template (Jinja) for ``messages``: the prompt text, special tokens included as text.

    The environment matches what checkpoints are written for: sandboxed, ``trim_blocks`` and ``lstrip_blocks``
    (a block tag eats its newline and the indentation before it), ``loopcontrols``, a ``tojson`` filter that keeps
    non-ASCII text, ``raise_exception(msg)`` for templates that reject a conversation, and ``strftime_now(fmt)``.
    """
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need the 'jinja2' package: pip install jinja2") from None
    if not isinstance(template, str) or not template.strip():
        raise ValueError("this checkpoint has no chat template (tokenizer_config.json chat_template is missing)")
    messages = check_messages(messages)

    def raise_exception(message: str):
        raise ValueError(f"the chat template refused the conversation: {message}")

    def tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        compiled = env.from_string(template)
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            **variables,
        )
    except jinja2.TemplateError as e:
        raise ValueError(f"the chat template does not render: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------- sampling defaults
def generation_defaults(directory: str | Path) -> dict:
    """The sampling settings of ``generation_config.json`` that :class:`SamplingConfig` understands."""
    path = Path(directory) / "generation_config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    keys = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty")
    return {k: config[k] for k in keys if isinstance(config, dict) and config.get(k) is not None}


def sampling_from(defaults: Mapping, **overrides) -> SamplingConfig:
    """``generation_config.json`` values, overridden by the non-None command-line values."""
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = {**defaults, **given}
    if "do_sample" in given:
        do_sample = bool(given["do_sample"])
    elif any(k in given for k in ("temperature", "top_k", "top_p", "min_p")):
        do_sample = True  # asking for a temperature or a filter means sampling
    else:
        do_sample = bool(defaults.get("do_sample", False))
    top_k = settings.get("top_k")
    top_p = settings.get("top_p")
    return SamplingConfig(
        do_sample=do_sample,
        temperature=float(settings.get("temperature", 1.0)) if do_sample else 1.0,
        top_k=int(top_k) if do_sample and top_k else None,  # 0 = off, as in transformers
        top_p=float(top_p) if do_sample and top_p is not None and top_p < 1.0 else None,
        min_p=float(settings["min_p"]) if do_sample and settings.get("min_p") else None,
        repetition_penalty=float(settings.get("repetition_penalty", 1.0)),
    )


# --------------------------------------------------------------------------------------------- a conversation
class ChatSession:
    """One conversation with a model: ``ask(text)`` renders the whole history with the chat template, generates
    the answer (streamed to ``on_text``), and appends both turns. ``reset()`` forgets everything but the system
    message. A ``KeyboardInterrupt`` during an answer stops it; the partial answer is kept in the history."""

    def __init__(
        self,
        model,
        tok,
        sampling: SamplingConfig,
        max_new_tokens: int = 256,
        system: str | None = None,
        generator: torch.Generator | None = None,
    ):
        if tok.chat_template is None:
            raise ValueError("this checkpoint has no chat template (tokenizer_config.json chat_template is missing)")
        self.model, self.tok, self.sampling = model, tok, sampling
        self.max_new_tokens, self.system, self.generator = max_new_tokens, system, generator
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self) -> list[int]:
        text = render_chat(self.tok.chat_template, self.messages, True, self.tok.bos_token, self.tok.eos_token)
        return self.tok.encode(text, bos=False)  # the template writes the BOS token itself when it wants one

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> tuple[str, bool]:
        """Answer ``text``; returns ``(answer, interrupted)``."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty message: type something, or /reset, /exit")
        self.messages.append({"role": "user", "content": text})
        ids = self.prompt_ids()
        budget = self.model.args.max_seq_len - len(ids)
        if budget < 1:
            self.messages.pop()
            raise ValueError(
                f"the conversation is {len(ids)} tokens, the model's context is {self.model.args.max_seq_len}: /reset"
            )
        new: list[int] = []
        printed = ""

        def on_token(row: int, token: int) -> None:
            nonlocal printed
            new.append(token)
            shown = decode_continuation(self.tok, ids, new)
            if on_text is not None and shown.startswith(printed) and not shown.endswith("\ufffd"):
                on_text(shown[len(printed) :])
                printed = shown

        interrupted = False
        try:
            generate(
                self.model,
                [ids],
                min(self.max_new_tokens, budget),
                self.sampling,
                eos_id=list(self.tok.eos_ids) or None,
                pad_id=self.tok.pad_id if self.tok.pad_id is not None else 0,
                generator=self.generator,
                on_token=on_token,
            )
        except KeyboardInterrupt:
            interrupted = True
        answer = decode_continuation(self.tok, ids, new)
        if on_text is not None and answer.startswith(printed) and len(answer) > len(printed):
            on_text(answer[len(printed) :])  # what was held back (an unfinished multi-byte character)
        self.messages.append({"role": "assistant", "content": answer})
        return answer, interrupted


# --------------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint folder of an instruct model")
    p.add_argument("--prompt", default=None, help="answer this one message and exit (default: interactive)")
    p.add_argument("--system", default=None, help="a system message (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer (default: %(default)s)")
    p.add_argument("--context", type=int, default=4096, help="KV-cache length, at most the model's (default: 4096)")
    p.add_argument("--temperature", type=float, default=None, help="default: generation_config.json, else greedy")
    p.add_argument("--top-k", type=int, default=None, help="default: generation_config.json (0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="default: generation_config.json")
    p.add_argument("--repetition-penalty", type=float, default=None, help="default: generation_config.json or 1.0")
    p.add_argument("--greedy", action="store_true", help="argmax decoding, whatever generation_config.json says")
    p.add_argument("--seed", type=seed_int, default=1337, help="default: %(default)s")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="default: as stored")
    add_device_argument(p)
    return p.parse_args(argv)


def _check_options(max_new_tokens, context, temperature, top_k, top_p, repetition_penalty, prompt) -> None:
    for name, value in (("--max-new-tokens", max_new_tokens), ("--context", context)):
        if value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value}")
    if temperature is not None and not (0 < temperature < math.inf):
        raise ValueError(f"--temperature must be a finite number > 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0 = off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if repetition_penalty is not None and not (0 < repetition_penalty < math.inf):
        raise ValueError(f"--repetition-penalty must be a finite number > 0, got {repetition_penalty}")
    if prompt is not None and not prompt.strip():
        raise ValueError("--prompt is empty")


def main(
    checkpoint: str,
    prompt: str | None = None,
    system: str | None = None,
    max_new_tokens: int = 256,
    context: int = 4096,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    greedy: bool = False,
    seed: int = 1337,
    dtype: str | None = None,
    device: str = "auto",
    input_fn: Callable[[str], str] = input,
) -> list[dict]:
    """Load, then answer ``prompt`` (one-shot) or chat interactively; returns the conversation."""
    from pytorch_llama2_from_scratch.loading import checkpoint_context_length, load_checkpoint, load_tokenizer

    _check_options(max_new_tokens, context, temperature, top_k, top_p, repetition_penalty, prompt)
    generator = seed_everything(seed)
    tok = load_tokenizer(checkpoint)
    if tok.chat_template is None:
        raise ValueError(f"{checkpoint} has no chat template (tokenizer_config.json chat_template): not a chat model?")
    overrides = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    if greedy:
        overrides["do_sample"] = False
    sampling = sampling_from(generation_defaults(checkpoint), **overrides)
    max_seq_len = min(context, checkpoint_context_length(checkpoint))
    dev = resolve_device(device)
    model, _ = load_checkpoint(
        checkpoint,
        max_seq_len=max_seq_len,
        max_batch_size=1,
        device=dev,
        dtype=getattr(torch, dtype) if dtype else None,
    )
    if tok.vocab_size > model.args.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary has {model.args.vocab_size}"
        )
    session = ChatSession(model, tok, sampling, max_new_tokens, system, generator)

    def show(text: str) -> None:
        print(text, end="", flush=True)

    if prompt is not None:
        session.ask(prompt, show)
        print()
        return session.messages
    print(f"{checkpoint} on {dev}, context {max_seq_len} tokens, {sampling}. /reset clears, /exit or Ctrl-D quits.")
    while True:
        try:
            line = input_fn("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return session.messages
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return session.messages
        if command == "/reset":
            session.reset()
            print("(conversation cleared)")
            continue
        try:
            _, interrupted = session.ask(line, show)
        except ValueError as e:  # e.g. the conversation outgrew the context: say so, keep chatting
            print(f"error: {e}")
            continue
        print(" [stopped]" if interrupted else "")


def cli(argv: Sequence[str] | None = None) -> None:
    run_cli(lambda: main(**vars(parse_args(argv))), CLI_ERRORS, join_lines=True)


if __name__ == "__main__":
    cli()
