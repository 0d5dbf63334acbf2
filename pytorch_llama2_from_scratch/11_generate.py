"""Step 11: coding the inference - batched generation with the KV cache, padding, EOS, streaming, and the CLI.

``generate.py`` turns the samplers of lesson 10 into a decoding loop around our ``Transformer``:

1. **Left padding.** Prompts of different lengths are padded on the *left* to a common length ``L``, so every
   row's last prompt token is in column ``L - 1`` and all rows decode in lock-step. An attention mask hides the
   padding and each row counts its RoPE positions from its first real token.
2. **Prefill, then decode.** One forward over the ``(B, L)`` prompts fills the KV cache; each following step
   feeds one ``(B, 1)`` token per row at ``start_pos = L + step``.
3. **Per-row EOS.** A row that produced EOS is done: its later tokens are ignored, the loop ends when all rows
   are done (or after ``max_new_tokens``).
4. **Streaming.** ``stream_generate`` yields every step's tokens; ``generate(on_token=...)`` calls back per token.

The lesson checks each claim on a small random model (a padded batch gives each prompt's tokens alone, the KV
cache gives the no-cache tokens) and shows the timings. With ``--checkpoint`` (e.g. the model lesson 12
trains) it uses real text::

    python pytorch_llama2_from_scratch/11_generate.py
    python pytorch_llama2_from_scratch/11_generate.py --checkpoint out/llama2/tiny_shakespeare
    python pytorch_llama2_from_scratch/generate.py --checkpoint out/llama2/tiny_shakespeare \\
        --prompt "ROMEO:" --prompt "JULIET:" --strategy top_p       # the command-line tool
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import add_device_argument, positive_int, resolve_device, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.generate import (
    CLI_ERRORS,
    decode_continuation,
    generate,
    left_pad,
    stream_generate,
)
from pytorch_llama2_from_scratch.loading import load_checkpoint, load_tokenizer
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer
from pytorch_llama2_from_scratch.sampling import SamplingConfig

TEXT_PROMPTS = ["ROMEO:", "First Citizen:\nWe are", "KING"]


def random_model(device: torch.device) -> Transformer:
    """The ``tiny`` preset with large random weights (std 0.2), so that it has strong token preferences."""
    model = Transformer(ModelArgs.preset("tiny", max_batch_size=4, max_seq_len=64))
    model.init_weights(std=0.2)
    return model.to(device).eval()


def main(checkpoint: str | None = None, max_new_tokens: int = 12, seed: int = 1337, device: str = "auto") -> dict:
    seed_everything(seed)
    dev = resolve_device(device)
    if checkpoint:
        tok = load_tokenizer(checkpoint)
        prompts = [tok.encode(p) for p in TEXT_PROMPTS]
        model, _ = load_checkpoint(checkpoint, max_batch_size=4, device=dev)
        eos_id = tok.eos_id
    else:
        tok = None
        prompts = [[1, 17, 42, 5], [1, 8], [1, 60, 33, 21, 9, 70, 11]]
        model = random_model(dev)
        eos_id = None
    pad_id = 0

    # 1. left padding
    tokens, mask, positions = left_pad(prompts, pad_id)
    print("left-padded batch (B, L) =", tuple(tokens.shape))
    for name, t in (("tokens", tokens), ("mask", mask), ("positions", positions)):
        print(f"{name:>10s}: " + "\n            ".join(str(row) for row in t.tolist()))

    # 2. a padded batch gives every prompt exactly what it gives alone
    batch = generate(model, prompts, max_new_tokens, eos_id=eos_id)
    alone = [generate(model, [p], max_new_tokens, eos_id=eos_id)[0] for p in prompts]
    print(f"\ngreedy, padded batch == each prompt alone: {batch == alone}")

    # 3. the KV cache changes the cost, not the result (lesson 13 measures the cost)
    no_cache = generate(model, prompts, max_new_tokens, eos_id=eos_id, use_cache=False)
    print(f"KV cache == no cache (full re-forward every step): {batch == no_cache}")

    # 4. per-row EOS: pretend the token row 0 emits third is EOS - row 0 stops there, the others go on
    eos_demo = batch[0][2] if eos_id is None else eos_id
    stopped = generate(model, prompts, max_new_tokens, eos_id=eos_demo)
    print(f"\nwith eos_id={eos_demo}: generated lengths per row {[len(r) for r in stopped]}")
    for row in stopped:
        print("   ", row)

    # 5. streaming: one line per decoding step (-1 = that row is already done)
    print("\nstreaming (top-p 0.9, T 0.8), tokens per step:")
    sampling = SamplingConfig.from_strategy("top_p", temperature=0.8, top_p=0.9)
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for step, step_tokens in enumerate(
        stream_generate(model, prompts, max_new_tokens, sampling, eos_id=eos_demo, generator=gen)
    ):
        steps.append(step_tokens.tolist())
        print(f"  step {step:2d}: {steps[-1]}")

    texts = None
    if tok is not None:
        texts = [p + decode_continuation(tok, ids, out) for p, ids, out in zip(TEXT_PROMPTS, prompts, batch)]
        print("\ngreedy continuations:")
        for t in texts:
            print(f"--- {t!r}")
    print(
        "\ncommand line: python pytorch_llama2_from_scratch/generate.py --checkpoint DIR --prompt 'ROMEO:' "
        "--strategy greedy|beam|temperature|random|top_k|top_p|min_p"
    )
    return {
        "padded_equals_alone": batch == alone,
        "cache_equals_no_cache": batch == no_cache,
        "outputs": batch,
        "eos_id": eos_demo,
        "stopped": stopped,
        "stream_steps": steps,
        "texts": texts,
        "model": model,
        "prompts": prompts,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: a small random model)")
    p.add_argument("--max-new-tokens", type=positive_int, default=12)
    p.add_argument("--seed", type=seed_int, default=1337)
    add_device_argument(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())), CLI_ERRORS, join_lines=True)
