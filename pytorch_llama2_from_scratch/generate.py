"""Text generation with the KV cache: batched sampling, streaming, beam search, and a command-line tool (lesson 11).

Two entry points, both driving :class:`pytorch_llama2_from_scratch.model.Transformer`:

* :func:`generate` / :func:`stream_generate` decode a **batch of prompts of different lengths** with any
  per-token strategy of :mod:`pytorch_llama2_from_scratch.sampling` (greedy, temperature, random, top-k, top-p,
  min-p, repetition penalty). Prompts are *left*-padded so that every row's last prompt token sits in the same
  column ``L - 1``; the padding is hidden by an attention mask and every row gets its own positions
  ``0, 1, ...`` starting at its first real token, so a padded row computes exactly what it would compute alone.
  One forward over the prompts fills the cache (prefill), then each step feeds one token per row (decode). A row
  stops at its own EOS; the loop stops when every row has stopped or ``max_new_tokens`` is reached.
* :func:`beam_search` keeps the ``num_beams`` most likely partial continuations of one prompt, with Hugging
  Face's rules for length penalty, early stopping and EOS, so that its sequences and scores equal
  ``LlamaForCausalLM.generate(num_beams=k, do_sample=False, ...)``.

Command line (any checkpoint ``loading.load_checkpoint`` understands, e.g. the one lesson 12 trains)::

    python pytorch_llama2_from_scratch/generate.py --checkpoint out/llama2/tiny_shakespeare \\
        --prompt "ROMEO:" --prompt "JULIET:" --strategy top_p --top-p 0.9 --temperature 0.8
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script

from pytorch_basis.common import (
    EXPECTED_CLI_ERRORS,
    add_device_argument,
    resolve_device,
    run_cli,
    seed_everything,
    seed_int,
)
from pytorch_llama2_from_scratch.sampling import (
    STRATEGIES,
    SamplingConfig,
    check_num_beams,
    next_token,
)

NEG_INF = -1.0e9  # Hugging Face's "impossible" score; kept identical so that ties break the same way


# --------------------------------------------------------------------------------------------- helpers
def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_prompts(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if not prompts or isinstance(prompts[0], int):
        raise ValueError("prompts must be a non-empty list of token-id lists, e.g. [[1, 306, 763]]")
    prompts = [list(map(int, p)) for p in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (add the BOS token for an unconditional sample)")
    return prompts


def eos_list(eos_id: int | Sequence[int] | None) -> list[int]:
    """``eos_id`` as a list: ``None`` -> ``[]``, ``2`` -> ``[2]``, ``[128001, 128009]`` -> the same (Llama 3 has
    several ids that end a turn; generation stops on any of them)."""
    if eos_id is None:
        return []
    if isinstance(eos_id, torch.Tensor):
        eos_id = eos_id.tolist()
    ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise ValueError(f"eos_id must be an int, a list of ints or None, got {eos_id!r}")
    return ids


def _check_capacity(model: torch.nn.Module, batch: int, total_len: int, use_cache: bool) -> None:
    args = model.args
    if total_len > args.max_seq_len:
        raise ValueError(
            f"prompt + max_new_tokens = {total_len} tokens exceeds the model's max_seq_len {args.max_seq_len}"
        )
    if use_cache and batch > args.max_batch_size:
        raise ValueError(f"batch of {batch} sequences exceeds the KV cache's max_batch_size {args.max_batch_size}")


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``tokens, mask, positions``, each ``(B, L)``.

    ``mask`` is 1 on real tokens and 0 on padding; ``positions`` counts from 0 at each row's first real token
    (padding gets position 0, it is masked anyway)::

        prompt lengths 3 and 5, L = 5:   tokens    [p p a b c]   mask [0 0 1 1 1]   positions [0 0 0 1 2]
                                                   [a b c d e]        [1 1 1 1 1]             [0 1 2 3 4]
    """
    L = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, L - len(p) :] = torch.tensor(p)
        mask[i, L - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return tokens, mask, positions


def reorder_cache(model: torch.nn.Module, index: torch.Tensor) -> None:
    """Row ``i`` of every KV-cache buffer becomes old row ``index[i]`` (beam search keeps the survivors' caches)."""
    for name, buf in model.named_buffers():
        if "cache" in name:
            buf[: index.numel()] = buf[index]


# --------------------------------------------------------------------------------------------- sampling loop
@torch.inference_mode()
def stream_generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield, after every decoding step, the ``(B,)`` tokens chosen for each row (``-1`` for rows already done).

    A row is done after it produced ``eos_id`` -- or any of them when it is a list (the EOS token itself is
    yielded). ``use_cache=False`` recomputes the whole sequence at every step (the slow baseline of lesson 13);
    the tokens are the same.
    """
    sampling = sampling or SamplingConfig()
    prompts = _check_prompts(prompts)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    eos_ids = eos_list(eos_id)
    device = _device_of(model)
    prompt_tokens, prompt_mask, prompt_positions = left_pad(prompts, pad_id)
    B, L = prompt_tokens.shape
    total = L + max_new_tokens
    _check_capacity(model, B, total, use_cache)

    # One (B, total) buffer each for tokens, mask and positions, filled as we go (no concatenation per step).
    # Generated slots are real tokens (mask 1) at each row's next positions; a row that finished keeps going
    # with pad tokens whose results are ignored.
    tokens = torch.full((B, total), pad_id, dtype=torch.long)
    tokens[:, :L] = prompt_tokens
    mask = torch.ones((B, total), dtype=torch.long)
    mask[:, :L] = prompt_mask
    lengths = prompt_mask.sum(-1, keepdim=True)  # (B, 1) real prompt tokens = position of the first new token
    positions = torch.cat([prompt_positions, lengths + torch.arange(max_new_tokens)], dim=1)  # (B, total)
    tokens, mask, positions = tokens.to(device), mask.to(device), positions.to(device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    eos_t = torch.tensor(eos_ids, dtype=torch.long, device=device)
    # Without padding, slot == position and nothing needs masking, so the model can take its mask-free path.
    padded = bool((prompt_mask == 0).any())

    def forward(start: int, end: int) -> torch.Tensor:
        """Logits for slots start..end-1 (with the cache) or for the whole sequence 0..end-1 (without)."""
        if use_cache:
            extra = {"attention_mask": mask[:, :end], "positions": positions[:, start:end]} if padded else {}
            return model(tokens[:, start:end], start_pos=start, use_cache=True, **extra)
        extra = {"attention_mask": mask[:, :end], "positions": positions[:, :end]} if padded else {}
        return model(tokens[:, :end], use_cache=False, **extra)

    logits = forward(0, L)  # prefill: the logits of the last column predict each row's next token
    for step in range(max_new_tokens):
        slot = L + step
        x = next_token(logits[:, -1], sampling, tokens[:, :slot], mask[:, :slot], generator)  # (B,)
        if not eos_ids:
            yield x
        else:
            x = x.masked_fill(done, pad_id)
            yield x.masked_fill(done, -1)
            done |= torch.isin(x, eos_t)
        tokens[:, slot] = x
        if step == max_new_tokens - 1 or (eos_ids and bool(done.all())):
            break
        # decode: feed only the new token (the cache holds keys/values of everything before it), or, without
        # the cache, the whole sequence again
        logits = forward(slot, slot + 1)


def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Generate continuations for a batch of prompts; returns the new tokens of each row (EOS included if hit).

    ``on_token(row, token_id)`` is called as soon as a token is chosen (streaming to a terminal or a socket).
    """
    steps = stream_generate(model, prompts, max_new_tokens, sampling, eos_id, pad_id, use_cache, generator)
    if on_token is None:  # no per-token work: collect the steps and convert once at the end
        columns = list(steps)
        rows = torch.stack(columns, dim=1).tolist() if columns else [[] for _ in prompts]
        return [[t for t in row if t >= 0] for row in rows]
    out: list[list[int]] = [[] for _ in prompts]
    for step_tokens in steps:
        for row, tok in enumerate(step_tokens.tolist()):
            if tok >= 0:
                out[row].append(tok)
                on_token(row, tok)
    return out


# --------------------------------------------------------------------------------------------- beam search
@dataclass
class Hypothesis:
    """A finished beam: its generated tokens (EOS included when it ended on EOS) and its length-normalised score
    ``sum_t log p(y_t | y_<t, prompt) / len(tokens) ** length_penalty``."""

    tokens: list[int]
    score: float


@torch.inference_mode()
def beam_search(
    model: torch.nn.Module,
    prompt: Sequence[int],
    num_beams: int,
    max_new_tokens: int,
    eos_id: int | Sequence[int] | None = None,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int | None = None,
    use_cache: bool = True,
) -> list[Hypothesis]:
    """Beam search for one prompt; returns the best ``num_return_sequences`` (default ``num_beams``) hypotheses.

    When to use it: when you want the single most likely *sequence* rather than a sample - translation,
    summarisation, short answers. It finds better sequences than greedy (which commits to the best *token*), costs
    ``num_beams`` times more compute, and on open-ended text it produces bland, repetitive output.

    The algorithm (Hugging Face's version, so the results match ``generate(num_beams=k, do_sample=False)``):

    1. Every running beam ``b`` has a score ``s_b = sum of log-probabilities of its tokens``. All ``k x V``
       extensions are scored ``s_b + log p(v | beam b)`` and the best ``2k`` are kept (``2k`` so that ``k`` beams
       that do not end in EOS always remain).
    2. Among these, an extension that ends in EOS (or reaches ``max_new_tokens``) *and* ranks in the top ``k`` is a
       finished hypothesis with score ``s / n ** length_penalty`` (``n`` generated tokens, EOS included); the
       ``k`` best finished ones are kept. ``length_penalty > 0`` favours longer sequences, ``< 0`` shorter ones.
    3. The ``k`` best extensions that did not finish become the new running beams.
    4. Stop when the ``k`` finished slots are full and either ``early_stopping=True``, or the best running beam
       cannot beat the worst finished one any more: its score divided by the current length ** length_penalty
       (``early_stopping=False``, a heuristic) or by the longest possible length ** length_penalty when that is
       the best case (``early_stopping="never"``, exact for ``length_penalty > 0``).

    ``num_beams=1`` is greedy decoding (as in Hugging Face), returned with its length-normalised score.
    """
    num_beams = check_num_beams(num_beams)
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    n_return = num_beams if num_return_sequences is None else num_return_sequences
    if not 1 <= n_return <= num_beams:
        raise ValueError(f"num_return_sequences must be in [1, num_beams={num_beams}], got {n_return}")
    prompt = _check_prompts([prompt])[0]
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    eos_t = torch.tensor(eos_list(eos_id), dtype=torch.long)
    P, k = len(prompt), num_beams
    _check_capacity(model, k, P + max_new_tokens, use_cache)
    device = _device_of(model)
    if k == 1:
        tokens = generate(model, [prompt], max_new_tokens, eos_id=eos_id, use_cache=use_cache)[0]
        seq = torch.tensor([prompt + tokens], device=device)
        logp = F.log_softmax(model(seq, use_cache=False)[0, P - 1 : -1].float(), dim=-1)  # predicts tokens
        total = float(logp.gather(-1, seq[0, P:, None]).sum())
        return [Hypothesis(tokens=tokens, score=total / len(tokens) ** length_penalty)]

    seqs = torch.tensor([prompt] * k, device=device)  # (k, P) running beams, all starting as the prompt
    scores = torch.full((k,), NEG_INF, device=device)
    scores[0] = 0.0  # only beam 0 is live at first, so the k beams do not pick the same tokens
    finished: list[tuple[float, list[int]]] = []  # (normalised score, generated tokens), best first, at most k
    can_improve = True

    logits = model(seqs, start_pos=0, use_cache=use_cache)[:, -1].float()  # (k, V)
    V = logits.size(-1)
    for step in range(max_new_tokens):
        n_gen = step + 1  # tokens generated once this step's token is appended
        cand = (F.log_softmax(logits, dim=-1) + scores[:, None]).view(-1)  # (k * V,)
        cand_scores, cand_idx = torch.topk(cand, 2 * k)  # best first
        beam_of, token_of = cand_idx // V, cand_idx % V
        hits_stop = torch.isin(token_of, eos_t.to(token_of.device))  # all False without an EOS
        if n_gen == max_new_tokens:
            hits_stop = torch.ones_like(hits_stop)

        # 2. finished hypotheses: only from the top k, and only while the finished list can still change
        if can_improve and not (len(finished) == k and early_stopping is True):
            for r in range(k):
                if hits_stop[r]:
                    tokens = seqs[beam_of[r], P:].tolist() + [int(token_of[r])]
                    finished.append((float(cand_scores[r]) / n_gen**length_penalty, tokens))
            finished = sorted(finished, key=lambda h: -h[0])[:k]
        if bool(hits_stop.all()):
            break

        # 3. the k best unfinished extensions continue
        keep = (~hits_stop).nonzero().squeeze(-1)[:k]
        beam_idx, scores = beam_of[keep], cand_scores[keep]
        seqs = torch.cat([seqs[beam_idx], token_of[keep][:, None]], dim=1)  # (k, P + n_gen)

        # 4. stopping rules
        if len(finished) == k:
            best_len = max_new_tokens if (early_stopping == "never" and length_penalty > 0) else n_gen
            can_improve = can_improve and float(scores[0]) / best_len**length_penalty > finished[-1][0]
            if not can_improve or early_stopping is True:
                break

        if use_cache:
            reorder_cache(model, beam_idx)
            logits = model(seqs[:, -1:], start_pos=P + step, use_cache=True)[:, -1].float()
        else:
            logits = model(seqs, use_cache=False)[:, -1].float()
    return [Hypothesis(tokens=t, score=s) for s, t in finished[:n_return]]


# --------------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (Hugging Face or Meta layout)")
    p.add_argument("--prompt", action="append", help="a prompt; repeat for a batch (default: one empty prompt)")
    p.add_argument("--strategy", choices=STRATEGIES, default="top_p", help="decoding strategy (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="for the sampling strategies")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--num-beams", type=int, default=4, help="for --strategy beam")
    p.add_argument("--length-penalty", type=float, default=1.0, help="for --strategy beam")
    p.add_argument("--early-stopping", choices=["false", "true", "never"], default="false", help="for --strategy beam")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step (slow)")
    p.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    p.add_argument("--seed", type=seed_int, default=1337)
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="default: as stored in the files"
    )
    add_device_argument(p)
    return p.parse_args(argv)


def decode_continuation(tok, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text that ``new_ids`` add after the prompt. Decoding them alone can lose a leading space (SentencePiece
    drops the ``▁`` of the first piece), so decode prompt + continuation and cut the prompt's text off."""
    stops = set(getattr(tok, "eos_ids", ())) | ({tok.eos_id} if tok.eos_id is not None else set())
    new_ids = [t for t in new_ids if t not in stops]
    head, full = tok.decode(prompt_ids), tok.decode(list(prompt_ids) + new_ids)
    return full[len(head) :] if full.startswith(head) else full


class _Streamer:
    """Print a row's text as it grows: decode prompt + tokens so far and print the new suffix (one token can be
    part of a multi-byte character, and decoding pieces one at a time loses spaces)."""

    def __init__(self, tok, prompt_ids: list[int]):
        self.tok, self.prompt_ids = tok, prompt_ids
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, row: int, token: int) -> None:
        self.tokens.append(token)
        text = decode_continuation(self.tok, self.prompt_ids, self.tokens)
        if text.startswith(self.printed) and not text.endswith("\ufffd"):
            print(text[len(self.printed) :], end="", flush=True)
            self.printed = text

    def flush(self) -> None:
        """Print what was held back at the end (a last token that left a multi-byte character unfinished)."""
        text = decode_continuation(self.tok, self.prompt_ids, self.tokens)
        if text.startswith(self.printed) and len(text) > len(self.printed):
            print(text[len(self.printed) :], end="", flush=True)
            self.printed = text


def check_options(
    strategy: str = "top_p",
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 0.9,
    min_p: float = 0.05,
    repetition_penalty: float = 1.0,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    prompt: list[str] | None = None,
) -> None:
    """Check the command-line options before anything is loaded; a bad one raises ``ValueError`` naming it."""

    def positive_int(name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def finite(name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)

    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    positive_int("--max-new-tokens", max_new_tokens)
    if strategy == "beam":
        positive_int("--num-beams", num_beams)
        finite("--length-penalty", length_penalty)
    if strategy not in ("greedy", "beam") and not finite("--temperature", temperature) > 0:
        raise ValueError(f"--temperature must be > 0 for --strategy {strategy}, got {temperature!r}")
    if strategy == "top_k":
        positive_int("--top-k", top_k)
    if strategy == "top_p" and not 0 < finite("--top-p", top_p) <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p!r}")
    if strategy == "min_p" and not 0 <= finite("--min-p", min_p) <= 1:
        raise ValueError(f"--min-p must be in [0, 1], got {min_p!r}")
    if strategy != "beam" and not finite("--repetition-penalty", repetition_penalty) > 0:
        raise ValueError(f"--repetition-penalty must be > 0 (1.0 = off), got {repetition_penalty!r}")
    if prompt is not None and (not isinstance(prompt, list) or not all(isinstance(p, str) for p in prompt)):
        raise ValueError(f"--prompt must be text, got {prompt!r}")


def main(
    checkpoint: str,
    prompt: list[str] | None = None,
    strategy: str = "top_p",
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 0.9,
    min_p: float = 0.05,
    repetition_penalty: float = 1.0,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: str = "false",
    no_cache: bool = False,
    no_stream: bool = False,
    seed: int = 1337,
    device: str = "auto",
    dtype: str | None = None,
) -> dict:
    """Load a checkpoint and its tokenizer, generate, print; returns ``{"prompts", "completions", "tokens"}``.

    The options are checked first (:func:`check_options`); a prompt that does not fit the checkpoint's context
    (``max_position_embeddings``) together with ``max_new_tokens`` is refused before the weights are read.
    Generation stops on every EOS id the checkpoint names (``config.json``, ``generation_config.json``,
    ``tokenizer_config.json``).
    """
    from pytorch_llama2_from_scratch.loading import checkpoint_context_length, load_checkpoint, load_tokenizer

    options = dict(strategy=strategy, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
    options.update(top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, num_beams=num_beams)
    check_options(**options, length_penalty=length_penalty, prompt=prompt)
    generator = seed_everything(seed)
    dev = resolve_device(device)
    context = checkpoint_context_length(checkpoint)
    tok = load_tokenizer(checkpoint)
    prompts = prompt or [""]
    ids = [tok.encode(p) for p in prompts]  # with the BOS token
    eos_id = list(tok.eos_ids) or None
    longest = max(len(i) for i in ids)
    if longest + max_new_tokens > context:
        raise ValueError(
            f"prompt of {longest} tokens + --max-new-tokens {max_new_tokens} = {longest + max_new_tokens} tokens "
            f"exceeds the model's context of {context} tokens (max_position_embeddings of {checkpoint})"
        )
    # size the KV cache for this request only: rows = prompts (or beams), slots = longest prompt + new tokens
    rows = num_beams if strategy == "beam" else len(prompts)
    model, _ = load_checkpoint(
        checkpoint,
        max_batch_size=rows,
        max_seq_len=longest + max_new_tokens,
        device=dev,
        dtype=getattr(torch, dtype) if dtype else None,
    )
    if tok.vocab_size > model.args.vocab_size:
        raise ValueError(
            f"the tokenizer of {checkpoint} has {tok.vocab_size} tokens but the model's vocabulary has "
            f"{model.args.vocab_size}: tokenizer and weights come from different models"
        )
    print(f"checkpoint {checkpoint} | strategy {strategy} | {len(prompts)} prompt(s) | device {dev}")

    if strategy == "beam":
        stop = {"false": False, "true": True, "never": "never"}[early_stopping]
        outs = []
        for p_ids in ids:
            hyps = beam_search(
                model, p_ids, num_beams, max_new_tokens, eos_id, length_penalty, stop, 1, use_cache=not no_cache
            )
            outs.append(hyps[0].tokens)
    else:
        sampling = SamplingConfig.from_strategy(strategy, temperature, top_k, top_p, min_p, repetition_penalty)
        stream = not no_stream and len(prompts) == 1
        streamer = _Streamer(tok, ids[0]) if stream else None
        if stream:
            print(prompts[0], end="", flush=True)
        outs = generate(
            model,
            ids,
            max_new_tokens,
            sampling,
            eos_id=eos_id,
            pad_id=tok.pad_id if tok.pad_id is not None else 0,
            use_cache=not no_cache,
            generator=generator,
            on_token=streamer,
        )
        if stream:
            streamer.flush()
            print()
    completions = [decode_continuation(tok, i, o) for i, o in zip(ids, outs)]
    if strategy == "beam" or no_stream or len(prompts) > 1:
        for p, c in zip(prompts, completions):
            print(f"--- {p!r}\n{p}{c}")
    return {"prompts": prompts, "completions": completions, "tokens": outs}


# Every error a bad file, a bad config or a bad option is expected to raise: run_cli's own list, plus TypeError
# (configs) and RuntimeError/EOFError (torch.load). The chapter's command lines pass it to ``run_cli`` with
# ``join_lines=True``, so a message of several lines (a checkpoint that does not fit) stays whole on one line.
CLI_ERRORS = EXPECTED_CLI_ERRORS + (TypeError, RuntimeError, EOFError)


def cli(argv: Sequence[str] | None = None) -> None:
    """The command-line tool: ``python pytorch_llama2_from_scratch/generate.py --checkpoint DIR ...``."""
    run_cli(lambda: main(**vars(parse_args(argv))), CLI_ERRORS, join_lines=True)


if __name__ == "__main__":
    cli()
