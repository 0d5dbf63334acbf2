"""Step 16: distributed data parallel (DDP) with ``torchrun`` — gloo on the CPU, NCCL on GPUs.

What this step adds: several processes train *one* model. Each process (rank) holds a full copy of the model and
reads its own slice of every batch; after ``backward`` DDP all-reduces the gradients (their mean over ranks), so
every copy takes the same optimizer step and the copies never drift apart.

    world_size = W processes, rank r ∈ {0..W-1};  rank r reads tokens [p + r·B·T, p + (r+1)·B·T] of the stream
    g = (1/W) Σ_r ∇ L_r  (all-reduce in backward)  ==  ∇ of the mean loss over the union of the W micro-batches

``torchrun --standalone --nproc_per_node=W script.py`` starts W copies of the script with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment and a rendezvous on localhost; ``setup_distributed``
(training.py) reads them and calls ``init_process_group`` with NCCL on CUDA, gloo on CPU. With gradient
accumulation the all-reduce is only needed in the *last* micro-step: the earlier ones run under
``model.no_sync()``, which has to be entered before the forward. The logged loss is averaged over ranks with an
``all_reduce``, and only rank 0 prints and saves.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/16_ddp.py            # launches torchrun with 2 CPU processes itself
    torchrun --standalone --nproc_per_node=2 pytorch_gpt2_from_scratch/16_ddp.py --worker --out out/ddp.pt

The plain run launches the 2-process training, then trains one process on the union of the two ranks' batches
and prints the largest difference between the two results (it should be ~1e-7: float round-off only).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import atomic_torch_save, out_dir, positive_int, run_cli, seed_everything
from pytorch_gpt2_from_scratch.data import DataLoaderLite
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.training import (
    cleanup_distributed,
    configure_optimizers,
    setup_distributed,
    train_step,
    unwrap_model,
    wrap_ddp,
)

VOCAB = 128  # a small vocabulary keeps the toy model tiny


def toy_model_config() -> GPTConfig:
    return GPTConfig.preset("tiny", vocab_size=VOCAB, block_size=16)


def toy_tokens(seed: int = 0, n: int = 4096) -> torch.Tensor:
    """The same synthetic token stream on every rank."""
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def run_training(B: int, T: int, steps: int, grad_accum: int, lr: float = 1e-3, seed: int = 0) -> dict:
    """Train the toy model ``steps`` steps in this process (as one rank under torchrun, or alone)."""
    env = setup_distributed("cpu")
    try:
        seed_everything(seed)  # same init everywhere; DDP also broadcasts rank 0's weights at wrap time
        model = wrap_ddp(GPT(toy_model_config()), env)
        optimizer = configure_optimizers(unwrap_model(model), weight_decay=0.1, learning_rate=lr, device_type="cpu")
        loader = DataLoaderLite(B, T, toy_tokens(seed), env.rank, env.world_size)
        losses = []
        for step in range(steps):
            stats = train_step(
                model, optimizer, loader.next_batch, grad_accum_steps=grad_accum, lr=lr, device=env.device
            )
            losses.append(stats.loss)
            if env.master:
                print(f"[rank 0 of {env.world_size}] step {step}: loss {stats.loss:.6f}  norm {stats.grad_norm:.4f}")
        return {"losses": losses, "state": unwrap_model(model).state_dict(), "world_size": env.world_size}
    finally:
        cleanup_distributed(env)


def launch(
    out: str | os.PathLike,
    nproc: int = 2,
    B: int = 2,
    T: int = 16,
    steps: int = 3,
    grad_accum: int = 2,
    timeout: float = 180,
) -> dict:
    """Run this file under ``torchrun`` with ``nproc`` CPU processes; return rank 0's saved result."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(Path(__file__).resolve()),
        "--worker",
        "--out",
        str(out),
        "--B",
        str(B),
        "--T",
        str(T),
        "--steps",
        str(steps),
        "--grad-accum",
        str(grad_accum),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"torchrun exited with code {proc.returncode}:\n{tail}")
    print(proc.stdout, end="")
    return torch.load(out, weights_only=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help="run as one torchrun rank (used by the plain run)")
    p.add_argument("--out", default=None, help="where rank 0 saves its losses and weights")
    p.add_argument("--nproc", type=positive_int, default=2)
    p.add_argument("--B", type=positive_int, default=2)
    p.add_argument("--T", type=positive_int, default=16)
    p.add_argument("--steps", type=positive_int, default=3)
    p.add_argument("--grad-accum", type=positive_int, default=2)
    return p.parse_args(argv)


def run_worker(out, B: int, T: int, steps: int, grad_accum: int) -> dict:
    """One rank of the ``torchrun`` launch that :func:`main` starts (``--worker``): train; rank 0 saves to ``out``."""
    res = run_training(B, T, steps, grad_accum)
    if int(os.environ.get("RANK", 0)) == 0:
        atomic_torch_save(res, result_path(out))
    return res


def result_path(out) -> Path:
    """Where rank 0 saves its losses and weights (``--out``; default ``out/16_ddp/ddp_result.pt``)."""
    return Path(out) if out else out_dir("16_ddp") / "ddp_result.pt"


def main(out=None, nproc=2, B=2, T=16, steps=3, grad_accum=2) -> dict:
    ddp = launch(result_path(out), nproc=nproc, B=B, T=T, steps=steps, grad_accum=grad_accum)

    # one process, micro-batch nproc*B: each micro-step reads exactly the union of the ranks' micro-batches
    single = run_training(nproc * B, T, steps, grad_accum)
    loss_diff = max(abs(a - b) for a, b in zip(ddp["losses"], single["losses"]))
    weight_diff = max((ddp["state"][k] - v).abs().max().item() for k, v in single["state"].items())
    print(f"{nproc} processes vs 1 process on the union of their batches, {steps} steps:")
    print(f"  losses (DDP)   : {[round(x, 6) for x in ddp['losses']]}")
    print(f"  losses (single): {[round(x, 6) for x in single['losses']]}")
    print(f"  max |loss diff| = {loss_diff:.2e}, max |weight diff| = {weight_diff:.2e}")
    return {"ddp": ddp, "single": single, "loss_diff": loss_diff, "weight_diff": weight_diff}


def cli() -> None:
    options = vars(parse_args())
    if options.pop("worker"):  # this process is one rank of the torchrun launch that main() starts
        options.pop("nproc")  # torchrun decided how many processes there are
        run_worker(**options)
    else:
        main(**options)


if __name__ == "__main__":
    run_cli(cli)
