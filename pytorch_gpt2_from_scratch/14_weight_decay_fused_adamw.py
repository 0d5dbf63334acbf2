"""Step 14: weight decay on the 2-D tensors only, fused AdamW, and GPT-3's batch-size ramp.

* **Decay groups.** AdamW's decoupled decay ``θ ← θ − lr · wd · θ`` (wd = 0.1 as in GPT-3) regularizes the
  matrices that do the work (every Linear weight and the embeddings: the tensors with ``dim() >= 2``). Biases and
  LayerNorm gains/shifts (1-D) are not decayed: shrinking them towards 0 only removes offsets and scales the
  network needs. :func:`training.configure_optimizers` builds the two parameter groups and prints their sizes.
* **Fused AdamW.** By default PyTorch updates parameters with ``foreach`` kernels (a few launches per group of
  tensors); ``fused=True`` does the whole update of all tensors in one kernel. It is supported on CUDA and, in
  recent PyTorch, on the CPU too; :func:`training.fused_adamw_supported` tries it once on the device.
* **Batch-size ramp.** GPT-3 grew the batch linearly from 32k tokens to the full size over the first 4-12B
  tokens. Here the micro-batch is fixed, so the ramp grows the number of accumulated micro-batches per step
  (:func:`training.ramped_grad_accum_steps`). It is off by default (``--batch-ramp-steps`` in train_gpt2.py): the
  video skips it because it complicates the arithmetic for little gain.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/14_weight_decay_fused_adamw.py                 # counts for GPT-2 124M
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import (
    add_device_argument,
    positive_int,
    resolve_device,
    run_cli,
    seed_everything,
    synchronize,
)
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.training import (
    configure_optimizers,
    fused_adamw_supported,
    ramped_grad_accum_steps,
    split_decay_params,
)


def time_optimizer_step(model: torch.nn.Module, device: torch.device, repeats: int, **kind) -> float:
    """Mean seconds of one AdamW step over all parameters (random gradients), for one implementation."""
    decay, no_decay = split_decay_params(model)
    groups = [{"params": list(decay.values()), "weight_decay": 0.1}, {"params": list(no_decay.values())}]
    opt = torch.optim.AdamW(groups, lr=1e-4, weight_decay=0.0, **kind)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()  # allocates the moment buffers (not timed)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        opt.step()
    synchronize(device)
    return (time.perf_counter() - t0) / repeats


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", help="GPTConfig preset whose parameter groups are counted")
    p.add_argument("--bench-model", default="cpu-small", help="GPTConfig preset used to time the optimizer step")
    p.add_argument("--repeats", type=positive_int, default=3)
    add_device_argument(p)
    return p.parse_args(argv)


def main(model="gpt2", bench_model="cpu-small", repeats=3, device="auto") -> dict:
    dev = resolve_device(device)
    seed_everything(0)
    net = GPT(GPTConfig.preset(model))
    print(f"{model}: {net.num_params():,} parameters")
    configure_optimizers(net, weight_decay=0.1, learning_rate=6e-4, device_type=dev.type, verbose=True)
    decay, no_decay = split_decay_params(net)
    print("  decayed (examples):    ", ", ".join(list(decay)[:3]), "...")
    print("  not decayed (examples):", ", ".join(list(no_decay)[:4]), "...")
    del net

    bench = GPT(GPTConfig.preset(bench_model)).to(dev)
    kinds = {"for-loop": dict(foreach=False, fused=False), "foreach": dict(foreach=True, fused=False)}
    if fused_adamw_supported(dev.type):
        kinds["fused"] = dict(fused=True)
    print(f"\none AdamW step over {bench.num_params():,} parameters ({bench_model}) on {dev}:")
    times = {}
    for name, kind in kinds.items():
        times[name] = time_optimizer_step(bench, dev, repeats, **kind)
        print(f"  {name:9s} {times[name] * 1000:8.1f} ms")

    # The 124M recipe with a GPT-3-style ramp: micro-batch 16 x 1024 tokens on 1 GPU -> 32 micro-steps at full size.
    full, ramp = 32, 300
    print(f"\nbatch-size ramp over {ramp} steps (micro-batch 16,384 tokens, full batch {full} micro-batches):")
    schedule = {
        s: ramped_grad_accum_steps(s, full_steps=full, ramp_steps=ramp, start_steps=2)
        for s in (0, 50, 100, 150, 200, 250, 299, 300)
    }
    for s, k in schedule.items():
        print(f"  step {s:4d}: {k:2d} micro-batches = {k * 16 * 1024:>9,} tokens")
    return {
        "decay_tensors": len(decay),
        "decay_params": sum(p.numel() for p in decay.values()),
        "no_decay_tensors": len(no_decay),
        "no_decay_params": sum(p.numel() for p in no_decay.values()),
        "step_seconds": times,
        "ramp": schedule,
    }


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
