"""Step 15: gradient accumulation — a batch given in tokens, reached with as many micro-batches as needed.

GPT-3 Small trained with 0.5M-token batches; a GPU holds perhaps B=16 sequences of T=1024 (16k tokens). So
each optimizer step runs ``grad_accum_steps = total_batch_size / (B · T · world_size)`` forward/backward passes and
adds up their gradients before stepping (524,288 / (16·1024) = 32 on one GPU).

The model's loss is a *mean* over its micro-batch, so the micro-batch gradients must be scaled by
``1 / grad_accum_steps`` for their sum to be the gradient of the mean over the whole batch:

    ∇ (1/K Σ_k L_k) = Σ_k ∇ (L_k / K)         (K = grad_accum_steps, all micro-batches the same size)

Without the scaling the gradient is K times too large. This step checks both against one big batch, then trains
a few steps with :func:`training.train_step`.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/15_gradient_accumulation.py --total-batch-size 2048 --batch-size 4 --seq-len 64
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
    accumulate_gradients,
    configure_optimizers,
    grad_accum_steps_for,
    train_step,
)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total-batch-size", type=positive_int, default=2048, help="tokens per optimizer step")
    p.add_argument("--batch-size", type=positive_int, default=4, help="micro-batch B")
    p.add_argument("--seq-len", type=positive_int, default=64, help="T")
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--seed", type=seed_int, default=1337)
    add_device_argument(p)
    return p.parse_args(argv)


def main(total_batch_size=2048, batch_size=4, seq_len=64, steps=5, seed=1337, device="auto", tokens=None) -> dict:
    dev = resolve_device(device)
    seed_everything(seed)
    K = grad_accum_steps_for(total_batch_size, batch_size, seq_len)
    print(f"total batch {total_batch_size} tokens = B {batch_size} x T {seq_len} x {K} micro-steps")
    model = GPT(GPTConfig.preset("tiny", block_size=max(64, seq_len))).to(dev)
    tokens = load_tinyshakespeare_tokens() if tokens is None else tokens

    # 1. one big batch of K*B sequences
    big = DataLoaderLite(K * batch_size, seq_len, tokens)
    x, y = big.next_batch()
    _, loss = model(x.to(dev), y.to(dev))
    loss.backward()
    ref = grads(model)
    # 2. K micro-batches of B sequences with loss / K (the same tokens)
    model.zero_grad(set_to_none=True)
    micro = DataLoaderLite(batch_size, seq_len, tokens)
    acc_loss, _ = accumulate_gradients(model, micro.next_batch, K, device=dev)
    acc = grads(model)
    max_diff = max((acc[n] - ref[n]).abs().max().item() for n in ref)

    # 3. the same without the 1/K: K times the gradient
    def norm(g: dict) -> float:
        return torch.linalg.vector_norm(torch.stack([t.norm() for t in g.values()])).item()

    ratio = K * norm(acc) / norm(ref)
    print(f"big-batch loss {loss.item():.6f}, accumulated loss {acc_loss.item():.6f}")
    print(f"max |grad(accumulated) - grad(big batch)| = {max_diff:.2e}")
    print(f"without the 1/K scaling the gradient norm would be {ratio:.2f}x too large (K = {K})")

    model.zero_grad(set_to_none=True)
    optimizer = configure_optimizers(model, learning_rate=1e-3, device_type=dev.type)
    losses = []
    for step in range(steps):
        stats = train_step(model, optimizer, micro.next_batch, grad_accum_steps=K, lr=1e-3, device=dev)
        losses.append(stats.loss)
        print(f"step {step} | loss {stats.loss:.4f} | norm {stats.grad_norm:.3f} | {stats.tokens} tokens")
    return {"grad_accum_steps": K, "max_diff": max_diff, "unscaled_ratio": ratio, "losses": losses, "grads": acc}


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
