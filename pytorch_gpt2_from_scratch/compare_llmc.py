"""Side by side with llm.c on this CPU: one training step of the same tiny GPT-2, tokens/s of both.

llm.c (https://github.com/karpathy/llm.c) trains GPT-2 in plain C (CPU reference ``train_gpt2.c``) and CUDA, with
no framework: every layer's forward and backward is written out by hand, the whole model lives in one flat float
array, activations are allocated once up front, and (on the GPU) kernels are fused and the run can be made
bitwise deterministic. Nothing of llm.c is in this repository: this script takes the path of a checkout *you*
cloned, builds its CPU trainer with its own Makefile, and feeds it files in llm.c's documented binary formats:

* ``gpt2_124M.bin``: a header of 256 int32 (magic 20240326, version 3, max_seq_len, vocab_size, n_layer, n_head,
  n_embd, padded_vocab_size) followed by the fp32 parameters tensor by tensor (wte padded to the padded vocabulary,
  wpe, then each per-layer tensor stacked over layers: ln_1 w/b, c_attn w/b, attn.c_proj w/b, ln_2 w/b, c_fc w/b,
  mlp.c_proj w/b; then ln_f w/b), Linear weights as (out, in) -- here *our* randomly initialised model of the
  ``cpu`` preset's size, not GPT-2's weights (llm.c's trainer reads the sizes from the header);
* ``dev/data/tinyshakespeare/tiny_shakespeare_{train,val}.bin``: a header of 256 int32 (magic 20240520, version 1,
  token count) followed by uint16 GPT-2 tokens.

``train_gpt2.c`` then trains with B=4, T=64, AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, no weight decay) and
prints the milliseconds of each step. Ours runs the same step (same weights, same B, T and AdamW settings, fp32,
eager PyTorch) in this process. The two programs alternate for ``--rounds`` rounds, so both see the same machine
load, and the report gives the median and the spread of every round. As a correctness cross-check, llm.c's
validation loss before training (5 batches of the validation file, in order) is compared with ours on the same
batches -- the same weights must give the same loss up to fp32 rounding.

Run (from the repo root)::

    git clone https://github.com/karpathy/llm.c ~/llm.c
    python pytorch_gpt2_from_scratch/compare_llmc.py --llmc ~/llm.c --threads 2
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import numpy as np
import torch

from pytorch_basis.common import run_cli, seed_everything, seed_int
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

LLMC_B, LLMC_T = 4, 64  # fixed in llm.c's train_gpt2.c main()
MODEL_MAGIC, MODEL_VERSION = 20240326, 3
DATA_MAGIC, DATA_VERSION = 20240520, 1
STEP_LINE = re.compile(r"step (\d+): train loss ([-\d.naif]+) \(took ([\d.]+) ms\)")
VAL_LINE = re.compile(r"val loss ([-\d.naif]+)")


def write_llmc_model(model: GPT, path: Path, padded_vocab: int = 50304) -> Path:
    """Our GPT's weights in llm.c's checkpoint layout (see the module docstring)."""
    c = model.config
    if padded_vocab < c.vocab_size:
        raise ValueError(f"padded_vocab {padded_vocab} < vocab_size {c.vocab_size}")
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [MODEL_MAGIC, MODEL_VERSION, c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, padded_vocab]
    t = model.transformer
    wte = torch.zeros(padded_vocab, c.n_embd)
    wte[: c.vocab_size] = t.wte.weight.detach()[: c.vocab_size]

    def stacked(get) -> torch.Tensor:  # one tensor per layer -> (L, ...)
        return torch.stack([get(block).detach() for block in t.h])

    tensors = [
        wte, t.wpe.weight.detach(),
        stacked(lambda b: b.ln_1.weight), stacked(lambda b: b.ln_1.bias),
        stacked(lambda b: b.attn.c_attn.weight), stacked(lambda b: b.attn.c_attn.bias),
        stacked(lambda b: b.attn.c_proj.weight), stacked(lambda b: b.attn.c_proj.bias),
        stacked(lambda b: b.ln_2.weight), stacked(lambda b: b.ln_2.bias),
        stacked(lambda b: b.mlp.c_fc.weight), stacked(lambda b: b.mlp.c_fc.bias),
        stacked(lambda b: b.mlp.c_proj.weight), stacked(lambda b: b.mlp.c_proj.bias),
        t.ln_f.weight.detach(), t.ln_f.bias.detach(),
    ]  # fmt: skip
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for x in tensors:
            f.write(x.float().contiguous().numpy().tobytes())
    return path


def write_llmc_tokens(tokens: np.ndarray, path: Path) -> Path:
    """uint16 tokens in llm.c's data-file layout."""
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [DATA_MAGIC, DATA_VERSION, len(tokens)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())
    return path


def build_llmc(checkout: Path) -> Path:
    """``make train_gpt2`` in the user's checkout (llm.c's own Makefile); the path of the binary."""
    if not (checkout / "train_gpt2.c").is_file():
        raise FileNotFoundError(f"--llmc {checkout}: no train_gpt2.c there; pass the root of a clone of llm.c")
    done = subprocess.run(["make", "train_gpt2"], cwd=checkout, capture_output=True, text=True)
    binary = checkout / "train_gpt2"
    if done.returncode != 0 or not binary.is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"building llm.c's train_gpt2 failed: {last[0]}")
    return binary


def run_llmc(binary: Path, workdir: Path, threads: int) -> tuple[list[float], float]:
    """Run llm.c's trainer in ``workdir``; (ms of every training step, validation loss before training)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([str(binary)], cwd=workdir, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"llm.c's train_gpt2 exited with {done.returncode}: {done.stdout.strip()[-200:]}")
    steps = [float(m.group(3)) for m in STEP_LINE.finditer(done.stdout)]
    vals = [float(m.group(1)) for m in VAL_LINE.finditer(done.stdout)]
    if not steps or not vals:
        raise RuntimeError("could not find 'step N: train loss ... (took ... ms)' in llm.c's output")
    return steps, vals[0]


def run_ours(model: GPT, train: np.ndarray, steps: int) -> list[float]:
    """ms of each of ``steps`` eager fp32 training steps with llm.c's B, T and AdamW settings."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    B, T = LLMC_B, LLMC_T
    data = torch.from_numpy(train.astype(np.int64))
    times = []
    for s in range(steps):
        start = (s * B * T) % (len(data) - B * T - 1)
        buf = data[start : start + B * T + 1]
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        t0 = time.perf_counter()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


@torch.no_grad()
def our_val_loss(model: GPT, val: np.ndarray, batches: int = 5) -> float:
    B, T = LLMC_B, LLMC_T
    data = torch.from_numpy(val.astype(np.int64))
    losses = []
    for i in range(batches):
        buf = data[i * B * T : (i + 1) * B * T + 1]
        losses.append(model(buf[:-1].view(B, T), buf[1:].view(B, T))[1].item())
    return sum(losses) / batches


def spread(ms: list[float]) -> str:
    return f"{statistics.median(ms):.1f} ms (min {min(ms):.1f}, max {max(ms):.1f})"


def main(llmc: str, rounds: int = 2, threads: int = 2, seed: int = 1337) -> dict:
    if rounds < 1 or threads < 1:
        raise ValueError(f"--rounds and --threads must be positive, got {rounds} and {threads}")
    from pytorch_gpt2_from_scratch.data import load_tinyshakespeare_tokens

    binary = build_llmc(Path(llmc).expanduser())
    torch.set_num_threads(threads)
    tokens = load_tinyshakespeare_tokens().numpy()
    n_val = len(tokens) // 10
    val, train = tokens[:n_val], tokens[n_val:]
    seed_everything(seed)
    config = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128)  # the cpu preset's model
    with tempfile.TemporaryDirectory(prefix="llmc_") as tmp:
        work = Path(tmp)
        init = GPT(config)
        write_llmc_model(init, work / "gpt2_124M.bin")
        write_llmc_tokens(train, work / "dev/data/tinyshakespeare/tiny_shakespeare_train.bin")
        write_llmc_tokens(val, work / "dev/data/tinyshakespeare/tiny_shakespeare_val.bin")
        ours_ms, llmc_ms, llmc_val = [], [], None
        for r in range(rounds):  # alternate the two programs so both see the same load
            steps, llmc_val = run_llmc(binary, work, threads)
            llmc_ms += steps[1:]  # step 0 includes first-touch allocation
            model = GPT(config)
            model.load_state_dict(init.state_dict())
            ours_ms += run_ours(model, train, len(steps))[1:]
            print(f"round {r}: llm.c {spread(steps[1:])}/step, ours {spread(ours_ms[-(len(steps) - 1) :])}/step")
        ours_val = our_val_loss(init, val)
    tok = LLMC_B * LLMC_T
    res = {
        "llmc_tok_s": tok / statistics.median(llmc_ms) * 1e3,
        "ours_tok_s": tok / statistics.median(ours_ms) * 1e3,
        "llmc_ms": llmc_ms,
        "ours_ms": ours_ms,
        "llmc_val_loss": llmc_val,
        "ours_val_loss": ours_val,
    }
    print(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide; B={LLMC_B}, T={LLMC_T}; "
          f"{threads} thread(s); torch {torch.__version__}")  # fmt: skip
    print(f"llm.c train_gpt2 (C, CPU): {spread(llmc_ms)}/step = {res['llmc_tok_s']:,.0f} tokens/s")
    print(f"ours (eager PyTorch fp32): {spread(ours_ms)}/step = {res['ours_tok_s']:,.0f} tokens/s")
    print(f"val loss before training, same weights and batches: llm.c {llmc_val:.6f}, ours {ours_val:.6f}")
    return res


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llmc", required=True, help="path of your clone of https://github.com/karpathy/llm.c")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each program (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="OpenMP / torch threads for both (default: %(default)s)")
    p.add_argument("--seed", type=seed_int, default=1337, help="seed of the initial weights (default: %(default)s)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())), expected=(ValueError, OSError, RuntimeError))
