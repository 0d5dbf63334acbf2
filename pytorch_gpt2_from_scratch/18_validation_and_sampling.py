"""Step 18: a validation loss at a fixed cadence, and samples from the model during training.

* **Validation.** The training loss is measured on the batch the model is about to learn from; it cannot show
  overfitting. Every ``eval_every`` steps the loop rewinds the validation loader (the held-out split: shard 0,
  or the first 10% of a text) and averages the loss of ``val_steps`` micro-batches under ``torch.no_grad()``,
  averaged over DDP ranks too (:func:`training.estimate_val_loss`). Same batches every time: the curve is
  comparable from point to point.
* **Sampling** (step 5's top-k loop) every ``sample_every`` steps shows in words what the loss says in numbers.
* **torch.compile.** The compiled model is specialised to the training shapes; sampling feeds ever-growing
  sequences and HellaSwag odd-length batches, which would recompile again and again. So evaluation and sampling
  go through the *uncompiled* module (``training.unwrap_model``: the same parameters, no copy), and only the
  training step (and the fixed-shape validation loss) runs compiled.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/18_validation_and_sampling.py --steps 30
    python pytorch_gpt2_from_scratch/18_validation_and_sampling.py --steps 30 --compile   # needs a C++ compiler
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import add_device_argument, positive_int, resolve_device, run_cli, seed_everything, seed_int
from pytorch_gpt2_from_scratch.data import DataLoaderLite, load_tinyshakespeare_tokens
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.training import (
    configure_optimizers,
    estimate_val_loss,
    get_lr,
    sample_text,
    train_step,
    unwrap_model,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_int, default=30)
    p.add_argument("--eval-every", type=positive_int, default=10)
    p.add_argument("--sample-every", type=positive_int, default=15)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--seq-len", type=positive_int, default=64)
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--seed", type=seed_int, default=1337)
    add_device_argument(p)
    return p.parse_args(argv)


def main(
    steps=30,
    eval_every=10,
    sample_every=15,
    batch_size=4,
    seq_len=64,
    compile=False,
    seed=1337,  # noqa: A002
    device="auto",
    tokens=None,
) -> dict:
    dev = resolve_device(device)
    seed_everything(seed)
    tokens = load_tinyshakespeare_tokens() if tokens is None else tokens
    n_val = len(tokens) // 10
    val_loader = DataLoaderLite(batch_size, seq_len, tokens[:n_val])  # the first 10% are held out
    train_loader = DataLoaderLite(batch_size, seq_len, tokens[n_val:])
    raw = GPT(GPTConfig.preset("tiny", n_layer=4, n_head=4, n_embd=128, block_size=128)).to(dev)
    model = torch.compile(raw) if compile else raw
    assert unwrap_model(model) is raw  # evaluation and sampling use the plain module
    optimizer = configure_optimizers(raw, learning_rate=2e-3, device_type=dev.type)
    train_losses, val_losses, samples = [], [], {}
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            val = estimate_val_loss(model, val_loader, 4, dev, None)
            val_losses.append((step, val))
            print(f"step {step:3d} | val loss {val:.4f}")
        if (step > 0 and step % sample_every == 0) or step == steps:
            samples[step] = sample_text(unwrap_model(model), "ROMEO:", 2, 24, dev, seed=seed + step)
            for s in samples[step]:
                print(f"step {step:3d} | sample: {s!r}")
        if step == steps:
            break
        lr = get_lr(step, max_lr=2e-3, warmup_steps=max(1, steps // 10), max_steps=steps)
        stats = train_step(model, optimizer, train_loader.next_batch, grad_accum_steps=1, lr=lr, device=dev)
        train_losses.append(stats.loss)
    return {"train_losses": train_losses, "val_losses": val_losses, "samples": samples}


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
