"""Step 12: train a tiny LLaMA on tiny Shakespeare on the CPU, then generate with every decoding strategy.

Meta's weights need a licence and 13 GB, so this lesson makes a model of our own that lessons 10-11 and the
command-line tool can use:

1. a small **BPE tokenizer** (SentencePiece-style ``▁`` for spaces, like LLaMA's, vocabulary 512, with LLaMA's
   special tokens ``<unk>=0 <s>=1 </s>=2``) trained on the text with the ``tokenizers`` library in a second;
2. a ~0.9 M-parameter ``Transformer`` (4 layers, dim 128, 4 query heads sharing 2 key/value heads) trained
   with AdamW on random 128-token windows, each starting with ``<s>``::

       loss = -1/(B T) sum_{b,t} log softmax(model(x)_{b,t})[y_{b,t}],   y = x shifted left by one

3. a checkpoint in Meta's layout (``params.json`` + ``consolidated.00.pth``) plus ``tokenizer.json``, written
   atomically (and also when you press Ctrl-C), which ``generate.py --checkpoint`` loads;
4. samples from the same prompt with greedy, greedy + repetition penalty, beam search, temperature, random,
   top-k, top-p and min-p.

Run (about 2-5 minutes on a laptop CPU; ``--max-minutes`` caps the training time on slow machines)::

    python pytorch_llama2_from_scratch/12_train_tiny_llama.py
    python pytorch_llama2_from_scratch/generate.py --checkpoint out/llama2/tiny_shakespeare --prompt "ROMEO:"
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import matplotlib
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pytorch_basis.common import (
    add_device_argument,
    atomic_write_text,
    nonnegative_int,
    out_dir,
    positive_float,
    positive_int,
    resolve_device,
    run_cli,
    seed_everything,
    seed_int,
    tiny_shakespeare_path,
)
from pytorch_llama2_from_scratch.generate import CLI_ERRORS, beam_search, decode_continuation, generate
from pytorch_llama2_from_scratch.loading import load_tokenizer, save_meta_checkpoint
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer
from pytorch_llama2_from_scratch.sampling import SamplingConfig

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # LLaMA's ids 0, 1, 2

# (label, strategy, settings) for the samples at the end; beam search is handled apart
SAMPLE_STRATEGIES = [
    ("greedy", "greedy", {}),
    ("greedy + repetition penalty 1.3", "greedy", {"repetition_penalty": 1.3}),
    ("beam search (4 beams)", "beam", {}),
    ("temperature 0.7", "temperature", {"temperature": 0.7}),
    ("random (T = 1)", "random", {}),
    ("top-k 40, T 0.8", "top_k", {"top_k": 40, "temperature": 0.8}),
    ("top-p 0.9, T 0.8", "top_p", {"top_p": 0.9, "temperature": 0.8}),
    ("min-p 0.1, T 1.0", "min_p", {"min_p": 0.1, "temperature": 1.0}),
]


def train_tokenizer(text: str, vocab_size: int):
    """A byte-pair-encoding tokenizer with SentencePiece's ``▁`` word-boundary marker (as LLaMA's).

    BPE starts from single characters and repeatedly merges the most frequent adjacent pair into a new token
    until the vocabulary has ``vocab_size`` entries; ``"ROMEO:"`` ends up as a few tokens instead of 6 chars.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(text.split("\n\n"), trainer)  # paragraphs: faster than one huge string
    return tok


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int, bos_id: int, generator: torch.Generator):
    """Random windows: ``x = [<s>, w_0 .. w_{T-2}]``, ``y = [w_0 .. w_{T-1}]``, each ``(B, T)``.

    Starting every window with ``<s>`` teaches the model what a prompt encoded with BOS looks like.
    """
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    y = torch.stack([data[s : s + seq_len] for s in starts.tolist()])  # (B, T)
    x = torch.cat([torch.full((batch_size, 1), bos_id), y[:, :-1]], dim=1)  # (B, T)
    return x, y


@torch.no_grad()
def evaluate(model: Transformer, batches: list[tuple[torch.Tensor, torch.Tensor]], device) -> float:
    model.eval()
    losses = [
        F.cross_entropy(model(x.to(device), use_cache=False).flatten(0, 1), y.to(device).flatten()).item()
        for x, y in batches
    ]
    model.train()
    return sum(losses) / len(losses)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to lr / 10."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_checkpoint(model: Transformer, args: ModelArgs, tokenizer_json: str, directory: Path, log: dict) -> None:
    save_meta_checkpoint(model, args, directory)  # params.json + consolidated.00.pth, atomically
    atomic_write_text(tokenizer_json, directory / "tokenizer.json")
    atomic_write_text(json.dumps(log, indent=1) + "\n", directory / "train_log.json")


def sample_every_strategy(
    model, tok, prompt: str, max_new_tokens: int, seed: int, strategies=SAMPLE_STRATEGIES
) -> dict[str, str]:
    ids = tok.encode(prompt)  # with <s>
    samples = {}
    for label, strategy, settings in strategies:
        generator = torch.Generator().manual_seed(seed)
        if strategy == "beam":
            out = beam_search(model, ids, num_beams=4, max_new_tokens=max_new_tokens, eos_id=tok.eos_id)[0].tokens
        else:
            cfg = SamplingConfig.from_strategy(strategy, **settings)
            out = generate(model, [ids], max_new_tokens, cfg, eos_id=tok.eos_id, generator=generator)[0]
        samples[label] = prompt + decode_continuation(tok, ids, out)
    return samples


def main(
    out: str | None = None,
    steps: int = 400,
    batch_size: int = 16,
    seq_len: int = 128,
    dim: int = 128,
    n_layers: int = 4,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    vocab_size: int = 512,
    lr: float = 3e-3,
    warmup: int = 20,
    eval_every: int = 100,
    eval_batches: int = 8,
    max_minutes: float | None = 6.0,
    max_chars: int | None = None,
    prompt: str = "ROMEO:",
    sample_tokens: int = 80,
    seed: int = 1337,
    device: str = "auto",
) -> dict:
    """Train, save, sample. Returns losses, timings, the checkpoint folder and one sample per strategy."""
    seed_everything(seed)
    dev = resolve_device(device)
    directory = Path(out) if out else out_dir("llama2", "tiny_shakespeare")
    text = tiny_shakespeare_path().read_text()
    if max_chars:
        text = text[:max_chars]

    # 1. tokenizer and data
    t0 = time.perf_counter()
    hf_tok = train_tokenizer(text, vocab_size)
    data = torch.tensor(hf_tok.encode(text).ids, dtype=torch.long)
    n_val = max(len(data) // 10, seq_len + 1)
    train_data, val_data = data[:-n_val], data[-n_val:]
    bos_id = hf_tok.token_to_id("<s>")
    print(
        f"tokenizer: {hf_tok.get_vocab_size()} BPE tokens in {time.perf_counter() - t0:.1f}s; "
        f"{len(text):,} chars -> {len(data):,} tokens ({len(text) / len(data):.2f} chars/token); "
        f"train {len(train_data):,} / val {len(val_data):,}"
    )

    # 2. model
    args = ModelArgs(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=hf_tok.get_vocab_size(),
        multiple_of=32,
        max_seq_len=seq_len,
        max_batch_size=4,  # the KV cache is only used for sampling (beam search needs 4 rows)
    )
    model = Transformer(args).to(dev)
    print(f"model: {model.num_params():,} parameters, {args}")
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no weight decay on the RMSNorm gains
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )
    gen = torch.Generator().manual_seed(seed)
    val_gen = torch.Generator().manual_seed(seed + 1)
    val_batches = [get_batch(val_data, batch_size, seq_len, bos_id, val_gen) for _ in range(eval_batches)]

    # 3. training
    log = {"train": [], "val": [], "args": args.to_dict()}
    val_before = evaluate(model, val_batches, dev)
    log["val"].append((0, val_before))
    print(
        f"val loss before training {val_before:.3f} (uniform guess: ln {args.vocab_size} = "
        f"{math.log(args.vocab_size):.3f})"
    )
    model.train()
    t_start, step = time.perf_counter(), 0
    bar = tqdm(range(steps), desc="train", leave=False)
    try:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup)
            x, y = get_batch(train_data, batch_size, seq_len, bos_id, gen)
            logits = model(x.to(dev), use_cache=False)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), y.to(dev).flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            log["train"].append((step, loss.item()))
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if (step + 1) % eval_every == 0 and step + 1 < steps:
                log["val"].append((step + 1, evaluate(model, val_batches, dev)))
                tqdm.write(f"step {step + 1:5d}  train {loss.item():.3f}  val {log['val'][-1][1]:.3f}")
                save_checkpoint(model, args, hf_tok.to_str(), directory, log)
            if max_minutes is not None and time.perf_counter() - t_start > 60 * max_minutes:
                tqdm.write(f"stopping after {step + 1} steps: --max-minutes {max_minutes} reached")
                break
        steps_done = step + 1
    except KeyboardInterrupt:
        steps_done = step
        print(f"\ninterrupted after {steps_done} steps; saving what was trained")
    bar.close()
    train_seconds = time.perf_counter() - t_start
    model.eval()
    val_after = evaluate(model, val_batches, dev)
    log["val"].append((steps_done, val_after))
    log["seconds"] = train_seconds
    save_checkpoint(model, args, hf_tok.to_str(), directory, log)
    print(
        f"trained {steps_done} steps in {train_seconds:.0f}s ({train_seconds / max(steps_done, 1):.2f} s/step): "
        f"val loss {val_before:.3f} -> {val_after:.3f}; checkpoint in {directory}"
    )

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in log["train"]], [v for _, v in log["train"]], lw=0.8, label="train")
    ax.plot([s for s, _ in log["val"]], [v for _, v in log["val"]], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "loss.png", dpi=110)
    plt.close(fig)

    # 4. samples, through the same loader the command-line tool uses
    tok = load_tokenizer(directory)
    samples = sample_every_strategy(model, tok, prompt, min(sample_tokens, seq_len - 8), seed)
    for label, sample in samples.items():
        print(f"\n=== {label}\n{sample}")
    return {
        "losses": [v for _, v in log["train"]],
        "val_before": val_before,
        "val_after": val_after,
        "steps": steps_done,
        "train_seconds": train_seconds,
        "checkpoint": directory,
        "samples": samples,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="checkpoint folder (default: out/llama2/tiny_shakespeare)")
    p.add_argument("--steps", type=positive_int, default=400)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seq-len", type=positive_int, default=128)
    p.add_argument("--dim", type=positive_int, default=128)
    p.add_argument("--n-layers", type=positive_int, default=4)
    p.add_argument("--n-heads", type=positive_int, default=4)
    p.add_argument("--n-kv-heads", type=positive_int, default=2)
    p.add_argument("--vocab-size", type=positive_int, default=512)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--warmup", type=nonnegative_int, default=20)
    p.add_argument("--eval-every", type=positive_int, default=100)
    p.add_argument("--eval-batches", type=positive_int, default=8)
    p.add_argument("--max-minutes", type=positive_float, default=6.0, help="stop training after this long (default 6)")
    p.add_argument("--max-chars", type=positive_int, default=None, help="use only the first N characters (quick tests)")
    p.add_argument("--prompt", default="ROMEO:")
    p.add_argument("--sample-tokens", type=positive_int, default=80)
    p.add_argument("--seed", type=seed_int, default=1337)
    add_device_argument(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())), CLI_ERRORS, join_lines=True)
