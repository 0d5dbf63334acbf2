"""Step 22 — capstone: chapter 2's GPT-2 trains with this chapter's Triton kernel as its attention.

What this step adds: nothing new in the kernel — the proof that it is a drop-in replacement. Chapter 2's
``GPTConfig(attn_impl="triton")`` makes every ``CausalSelfAttention`` call ``flash_attention(q, k, v, causal=True)``
from ``triton_flash.py`` (forward *and* backward through ``FlashAttentionFunction``) instead of
``F.scaled_dot_product_attention``. Two copies of the same model (same seed, same initial weights) train on the
same batches with AdamW; the lesson prints both losses step by step and their largest difference, which stays at
float32 rounding level (the two attentions sum in different orders), and checks it against a tolerance.

The data is synthetic and offline: token ids drawn from a fixed random first-order Markov chain over a small
vocabulary, so there is something to learn and the loss visibly falls. On the CPU the kernel runs under Triton's
interpreter: the default model is chapter 2's ``tiny`` preset (2 layers, 2 heads, width 64, T = 64) and a few
steps take about a minute or less; on a GPU pass ``--preset cpu-small`` or more steps.

Run:  python triton_flash_attention_scratch/22_capstone_gpt2_with_triton_attention.py [--steps 5]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import (
    add_device_argument,
    positive_float,
    positive_int,
    seed_everything,
    seed_int,
    synchronize,
)
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from triton_flash_attention_scratch.triton_flash import INTERPRET, resolve_kernel_device


def markov_batches(
    steps: int, batch: int, seq_len: int, n_symbols: int = 64, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` (x, y) pairs of shape (batch, seq_len): sequences of a random Markov chain, y = x shifted by one."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_symbols, n_symbols, generator=g) * 3  # peaked transition rows: learnable structure
    probs = torch.softmax(logits, dim=-1)
    batches = []
    for _ in range(steps):
        seq = torch.empty(batch, seq_len + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(n_symbols, (batch,), generator=g)
        for t in range(seq_len):
            seq[:, t + 1] = torch.multinomial(probs[seq[:, t]], 1, generator=g).squeeze(1)
        batches.append((seq[:, :-1], seq[:, 1:]))  # (B, T) inputs, (B, T) next-token targets
    return batches


def train(attn_impl: str, batches, preset: str, lr: float, dev: torch.device, seed: int) -> tuple[list[float], float]:
    """Train a fresh model (same seed -> same init) on ``batches``; return per-step losses and seconds per step."""
    seed_everything(seed)
    model = GPT(GPTConfig.preset(preset, attn_impl=attn_impl)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    losses = []
    synchronize(dev)
    t0 = time.perf_counter()
    for x, y in batches:
        _, loss = model(x.to(dev), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    synchronize(dev)
    return losses, (time.perf_counter() - t0) / max(1, len(batches))


def main(
    steps: int = 5,
    batch: int = 2,
    seq_len: int = 64,
    preset: str = "tiny",
    lr: float = 3e-3,
    tol: float = 1e-4,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    dev = resolve_kernel_device(device)
    block = GPTConfig.preset(preset).block_size
    if seq_len > block:
        raise ValueError(f"seq_len {seq_len} exceeds the {preset!r} preset's block_size {block}")
    batches = markov_batches(steps, batch, seq_len, seed=seed)
    print(f"GPT-2 preset {preset!r}, {steps} AdamW steps of {batch}x{seq_len} tokens on {dev}")
    losses = {}
    secs = {}
    how = {
        "sdpa": f"PyTorch's compiled kernels on {dev.type}",
        "triton": "Triton's CPU interpreter (NumPy emulation of every program: a correctness run, not a speed)"
        if INTERPRET
        else "compiled Triton kernels",
    }
    for impl in ("sdpa", "triton"):
        losses[impl], secs[impl] = train(impl, batches, preset, lr, dev, seed)
        print(f"  attn_impl={impl!r:<9} {secs[impl]:.2f} s/step  ({how[impl]})")
    diffs = [abs(a - b) for a, b in zip(losses["sdpa"], losses["triton"])]
    print(f"\n{'step':>4} {'loss sdpa':>12} {'loss triton':>12} {'|diff|':>10}")
    for i, (a, b, d) in enumerate(zip(losses["sdpa"], losses["triton"], diffs)):
        print(f"{i:>4} {a:>12.6f} {b:>12.6f} {d:>10.2e}")
    ok = max(diffs) < tol
    print(f"\nmax |loss difference| = {max(diffs):.2e} -> {'MATCH' if ok else 'MISMATCH'} (tolerance {tol:g})")
    return {"losses": losses, "max_diff": max(diffs), "ok": ok, "sec_per_step": secs}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--batch", type=positive_int, default=2)
    p.add_argument("--seq-len", type=positive_int, default=64)
    p.add_argument("--preset", default="tiny", help="a GPTConfig preset of chapter 2 (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--tol", type=positive_float, default=1e-4, help="largest allowed per-step loss difference")
    p.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(p)
    return p.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    def _cli():
        out = main(**vars(parse_args()))
        raise SystemExit(0 if out["ok"] else 1)

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(_cli, EXPECTED_CLI_ERRORS + (TypeError,))
