"""Step 12 (Section 3): AdamW with GPT-3's betas and eps, and gradient clipping at a global norm of 1.0.

What this step adds to the training loop of step 7:

* **AdamW** (Loshchilov & Hutter) keeps a running mean ``m`` and a running mean of squares ``v`` of every
  gradient and steps ``θ ← θ − lr · (m̂ / (sqrt(v̂) + eps) + wd · θ)``. GPT-3 used ``β1 = 0.9, β2 = 0.95`` (PyTorch's
  default β2 = 0.999 averages squares over ~1000 steps; 0.95 over ~20, so ``v`` follows the quickly changing
  gradient scale of early training) and ``eps = 1e-8``.
* **Gradient clipping**: with ``g`` all gradients flattened into one vector, ``‖g‖ = sqrt(Σ g_i²)``; if
  ``‖g‖ > 1.0`` every gradient is multiplied by ``1.0 / ‖g‖``. One unlucky batch then cannot shock the model.
  The norm is worth printing: it is large at the start, settles, and a sudden climb signals trouble.

Run (from the repo root; tiny Shakespeare and the GPT-2 BPE files come from the data cache)::

    python pytorch_gpt2_from_scratch/12_adamw_and_clipping.py --steps 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import (
    add_device_argument,
    nonnegative_float,
    positive_float,
    positive_int,
    resolve_device,
    run_cli,
    seed_everything,
    seed_int,
)
from pytorch_gpt2_from_scratch.data import DataLoaderLite, load_tinyshakespeare_tokens
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.training import train_step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--seq-len", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--clip", type=nonnegative_float, default=1.0, help="max global gradient norm (0: no clipping)")
    p.add_argument("--seed", type=seed_int, default=1337)
    add_device_argument(p)
    return p.parse_args(argv)


def main(steps=20, batch_size=4, seq_len=64, lr=1e-3, clip=1.0, seed=1337, device="auto", tokens=None) -> dict:
    dev = resolve_device(device)
    seed_everything(seed)
    model = GPT(GPTConfig.preset("tiny", block_size=max(64, seq_len))).to(dev)
    # All parameters in one group for now; step 14 splits them into decayed / not decayed.
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    loader = DataLoaderLite(batch_size, seq_len, load_tinyshakespeare_tokens() if tokens is None else tokens)
    losses, norms = [], []
    print(f"AdamW(lr={lr}, betas=(0.9, 0.95), eps=1e-8), clip_grad_norm_ at {clip or 'off'}")
    for step in range(steps):
        stats = train_step(model, optimizer, loader.next_batch, grad_accum_steps=1, lr=lr, device=dev, grad_clip=clip)
        losses.append(stats.loss)
        norms.append(stats.grad_norm)
        clipped = " (clipped to 1.0)" if clip and stats.grad_norm > clip else ""
        print(f"step {step:3d} | loss {stats.loss:.4f} | grad norm {stats.grad_norm:8.4f}{clipped}")
    # after clipping, the gradients the optimizer used have norm min(‖g‖, clip)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    print(f"norm of the last step's gradients after clipping: {after.item():.4f}")
    return {"losses": losses, "norms": norms, "clipped_norm": after.item()}


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
