"""Train GPT-2 from scratch: the full training program of chapter 2 (and the repository's main job).

Everything of the chapter in one loop: the GPT module (``model.py``), AdamW with decoupled weight decay on the
2-D tensors, warmup + cosine learning rate, gradient accumulation up to a batch size given in tokens, gradient
clipping, DDP over ``torchrun`` ranks, a validation loss at a fixed cadence, HellaSwag, samples from the model,
a log, checkpoints that resume a run exactly, and a plot.

Presets (``--preset``):

* ``cpu`` (default): a 4-layer, 4-head, 128-wide GPT (block 128) on tiny Shakespeare; a few minutes on a laptop CPU.
* ``speedrun``: Section 5's recipe (``speedrun.py``'s rung ``lean``: ``modern.ModernGPT`` with RoPE, RMSNorm,
  QK-norm, ReLU^2, untied head, embedding skips; Muon + AdamW; B 8 x T 128) for a
  wall-clock budget (``--time-budget``, default 120 s of training steps; the lr follows the elapsed fraction of it).
* ``gpt2-124M``: the GPT-2 small reproduction of "Let's reproduce GPT-2 (124M)": 524,288-token batches (2**19,
  ~0.5M as in GPT-3 Small), max lr 6e-4, 715 warmup steps, 19,073 steps = one epoch of FineWeb-Edu
  ``sample-10BT`` prepared with ``fineweb.py``; bf16 autocast, ``torch.compile``, flash attention, vocab 50304.

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/train_gpt2.py                       # the cpu preset
    python pytorch_gpt2_from_scratch/train_gpt2.py --resume              # continue it from out/.../ckpt.pt
    python pytorch_gpt2_from_scratch/train_gpt2.py --preset speedrun     # Section 5's recipe, 120 s budget
    python pytorch_gpt2_from_scratch/train_gpt2.py --time-budget 60      # the cpu preset for 60 s of steps
    torchrun --standalone --nproc_per_node=2 pytorch_gpt2_from_scratch/train_gpt2.py    # 2 processes, gloo on CPU
    torchrun --standalone --nproc_per_node=8 pytorch_gpt2_from_scratch/train_gpt2.py --preset gpt2-124M

Outputs go to ``out/train_gpt2/<preset>/``: ``log.txt`` (one line per event), ``log.jsonl`` (the same as JSON, read
by the plot), ``ckpt.pt`` (latest checkpoint), ``loss.png``. Ctrl-C stops at the end of the current step and saves
a checkpoint first; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import numpy as np
import torch
import torch.distributed as dist

from pytorch_basis.common import (
    DownloadError,
    add_device_argument,
    data_dir,
    out_dir,
    run_cli,
    seed_everything,
    seed_int,
    synchronize,
    tiny_shakespeare_path,
)
from pytorch_gpt2_from_scratch.data import DataLoaderLite
from pytorch_gpt2_from_scratch.fineweb import ShardedDataLoader, iter_text_documents, list_shards, tokenize_document
from pytorch_gpt2_from_scratch.hellaswag import evaluate as hellaswag_evaluate
from pytorch_gpt2_from_scratch.hellaswag import hellaswag_path, iter_examples
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.modern import ModernConfig, ModernGPT
from pytorch_gpt2_from_scratch.training import (
    cleanup_distributed,
    configure_optimizers,
    estimate_val_loss,
    get_lr,
    grad_accum_steps_for,
    load_checkpoint,
    ramped_grad_accum_steps,
    restore_model,
    restore_rng_state,
    sample_text,
    save_checkpoint,
    setup_distributed,
    train_step,
    wrap_ddp,
)

# Reference figures (FineWeb-Edu validation loss / HellaSwag acc_norm, 10,042 examples), as quoted in
# "Let's reproduce GPT-2 (124M)" (Karpathy, 2024, build-nanogpt) and its llm.c counterpart: the OpenAI GPT-2
# 124M checkpoint scores val 3.2924 and HellaSwag 0.2955; GPT-3 Small (125M) 0.337 (GPT-3 paper, zero-shot).
REF_GPT2_VAL_LOSS = 3.2924
REF_GPT2_HELLASWAG = 0.2955
REF_GPT3_HELLASWAG = 0.337


# --------------------------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    preset: str = "cpu"
    model: str = "cpu-small"  # a GPTConfig preset name; the four fields below override its sizes
    n_layer: int | None = 4
    n_head: int | None = 4
    n_embd: int | None = 128
    block_size: int | None = 128
    pad_vocab_to: int | None = None  # 64 -> 50304 rows (faster kernels on GPUs)
    attn_impl: str = "sdpa"
    data: str | None = None  # shard directory or text/jsonl file; None: the preset's dataset
    val_fraction: float = 0.1  # text-file data: the first 10% of the tokens are the validation split
    batch_size: int = 4  # micro-batch B (sequences per forward, per process)
    seq_len: int = 128  # T
    total_batch_size: int = 4 * 128 * 2  # tokens per optimizer step (all micro-steps, all ranks)
    batch_ramp_steps: int = 0  # > 0: linear batch-size ramp over this many steps (GPT-3)
    max_lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    max_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 25
    val_steps: int = 10  # micro-batches per validation estimate
    hellaswag_every: int = 0  # 0: only at the end
    hellaswag_limit: int | None = 500  # None: all 10,042 examples
    sample_every: int = 100
    sample_prompt: str = "ROMEO:"
    num_samples: int = 2
    sample_length: int = 48
    checkpoint_every: int = 100
    log_every: int = 10
    dtype: str = "auto"  # --precision: auto (CUDA: bf16 + TF32; CPU: the faster of fp32/bf16, measured) | fp32 | bf16
    time_budget: float | None = None  # seconds of training steps; the lr follows the elapsed fraction of it
    recipe: str | None = None  # a speedrun.py rung: its model (modern.py) and optimizer (Muon) replace GPT/AdamW
    split_batch: bool = False  # under torchrun each rank takes B / ranks rows when B*T*ranks exceeds the total batch
    compile: bool = False
    device: str = "auto"
    seed: int = 1337
    out: str | None = None  # output folder; None: out/train_gpt2/<preset>
    resume: str | None = None  # checkpoint path, or "auto" for <out>/ckpt.pt
    stop_after: int | None = None  # stop (and checkpoint) when this many steps are done, as Ctrl-C would
    hellaswag: bool = True
    progress: bool = True


PRESETS: dict[str, dict] = {
    # ~15 tokens/parameter is far from converged; the point is to watch every part of the loop work on a laptop.
    "cpu": dict(),
    "speedrun": dict(
        recipe="lean",  # speedrun.py's last rung, the best measured: B 8 x T 128 in one micro-batch
        batch_size=8,
        split_batch=True,  # torchrun --nproc_per_node=2: B 4 per rank, the same 1,024 tokens per step
        seq_len=128,
        total_batch_size=8 * 128,
        max_lr=4e-3,  # AdamW lr of the gains; the other groups keep their ratios to it (speedrun.RUNGS)
        weight_decay=0.0,
        grad_clip=0.0,
        time_budget=120.0,
    ),
    "gpt2-124M": dict(
        model="gpt2",
        n_layer=None,
        n_head=None,
        n_embd=None,
        block_size=None,
        pad_vocab_to=64,
        data=None,  # $LLM_SCRATCH_DATA/edu_fineweb10B, written by fineweb.py
        batch_size=64,
        seq_len=1024,
        total_batch_size=524_288,  # 2**19 tokens
        max_lr=6e-4,
        warmup_steps=715,  # 375M tokens, as in GPT-3
        max_steps=19_073,  # 10e9 / 524,288: one epoch of sample-10BT
        eval_every=250,
        val_steps=20,
        hellaswag_every=250,
        hellaswag_limit=None,
        sample_every=250,
        sample_prompt="Hello, I'm a language model,",
        num_samples=4,
        sample_length=32,
        checkpoint_every=5000,
        log_every=1,
        compile=True,
    ),
}


_SIZE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")


def make_config(preset: str = "cpu", **overrides) -> TrainConfig:
    """The preset's ``TrainConfig`` with ``overrides`` (``None`` values keep the preset's setting)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("model") is not None:  # another model preset: its own sizes unless given explicitly
        for k in ("n_layer", "n_head", "n_embd", "block_size"):
            values[k] = overrides.get(k)
    cfg = TrainConfig(preset=preset, **values)
    if cfg.time_budget is not None and not cfg.time_budget > 0:
        raise ValueError(f"--time-budget must be > 0 seconds, got {cfg.time_budget}")
    if cfg.time_budget is not None and not math.isfinite(cfg.time_budget):  # inf: the run would never stop
        raise ValueError(f"--time-budget must be a finite number of seconds, got {cfg.time_budget}")
    if cfg.recipe is not None:
        from pytorch_gpt2_from_scratch.speedrun import RUNG_KEYS

        if cfg.recipe not in RUNG_KEYS:
            raise ValueError(f"unknown speedrun recipe {cfg.recipe!r}; choose from {', '.join(RUNG_KEYS)}")
    if not 0 <= cfg.warmup_steps <= cfg.max_steps:
        raise ValueError(f"need 0 <= --warmup-steps <= --max-steps, got {cfg.warmup_steps} and {cfg.max_steps}")
    for name in ("batch_size", "seq_len", "total_batch_size", "max_steps", *_SIZE_FIELDS):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if cfg.stop_after is not None and cfg.stop_after < 0:
        raise ValueError(f"--stop-after must be >= 0, got {cfg.stop_after}")
    for name in ("batch_ramp_steps", "hellaswag_every", "weight_decay", "grad_clip", "max_lr"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.hellaswag_limit is not None and cfg.hellaswag_limit <= 0:
        raise ValueError(f"--hellaswag-limit must be positive, got {cfg.hellaswag_limit}")
    if not 0 < cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")
    for name in ("max_lr", "weight_decay", "min_lr_ratio"):
        if not math.isfinite(getattr(cfg, name)):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(cfg, name)}")
    for name in ("eval_every", "sample_every", "checkpoint_every", "log_every", "val_steps"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    return cfg


# --------------------------------------------------------------------------------------------- data
def default_data(cfg: TrainConfig) -> Path:
    if cfg.preset == "gpt2-124M":
        return data_dir() / "edu_fineweb10B"
    return tiny_shakespeare_path()


def make_loaders(cfg: TrainConfig, rank: int, world: int):
    """Train and validation loaders from a shard directory (``fineweb.py``) or a text/jsonl file."""
    data = Path(cfg.data) if cfg.data else default_data(cfg)
    B, T = cfg.batch_size, cfg.seq_len
    if data.is_dir():
        train = ShardedDataLoader(B, T, list_shards(data, "train"), rank, world)
        val = ShardedDataLoader(B, T, list_shards(data, "val"), rank, world)
        return train, val, f"{data} (shards)"
    if data.is_file():
        tokens = np.concatenate([tokenize_document(d) for d in iter_text_documents([data])]).astype(np.int64)
        n_val = int(len(tokens) * cfg.val_fraction)
        need = B * T * world + 1
        if n_val < need or len(tokens) - n_val < need:
            raise ValueError(
                f"{data} has {len(tokens)} tokens: the {cfg.val_fraction:.0%} validation split ({n_val}) or the "
                f"training split must hold at least B*T*world+1 = {need} tokens; use a smaller --batch-size/--seq-len"
            )
        val = DataLoaderLite(B, T, tokens[:n_val], rank, world)
        train = DataLoaderLite(B, T, tokens[n_val:], rank, world)
        return train, val, f"{data} ({len(tokens) - n_val:,} train / {n_val:,} val tokens)"
    raise FileNotFoundError(
        f"training data {data} not found: pass --data <shard dir or text file>, or prepare FineWeb-Edu with "
        "`python pytorch_gpt2_from_scratch/fineweb.py`"
    )


# --------------------------------------------------------------------------------------------- plot
def plot_history(history: list[dict], path: Path, title: str, fineweb_reference: bool = False) -> Path:
    """:func:`history_figure` written to ``path`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = history_figure(history, title, fineweb_reference)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def history_figure(history: list[dict], title: str, fineweb_reference: bool = False):
    """Train/val loss (and HellaSwag, when it was evaluated) as a matplotlib figure.

    Reference lines only where they are comparable: GPT-2 124M's validation loss is measured on FineWeb-Edu, so it
    is drawn only when ``fineweb_reference`` (the run trains on FineWeb-Edu shards); the HellaSwag panel, with the
    GPT-2 124M and GPT-3 Small (125M) scores, only when the history holds HellaSwag results.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    hs = [(h["step"], h["hellaswag"]) for h in history if "hellaswag" in h]
    fig, axes = plt.subplots(1, 2 if hs else 1, figsize=(12 if hs else 6.5, 4.2), squeeze=False)
    ax1 = axes[0, 0]
    if train:
        ax1.plot(*zip(*train), lw=0.8, alpha=0.7, label="train loss")
    if val:
        ax1.plot(*zip(*val), "o-", ms=3, label="val loss")
    if fineweb_reference:
        ax1.axhline(
            REF_GPT2_VAL_LOSS, color="r", ls="--", lw=1, label=f"GPT-2 124M val ({REF_GPT2_VAL_LOSS}, FineWeb-Edu)"
        )
        ax1.set_ylim(bottom=min([REF_GPT2_VAL_LOSS - 0.3] + [v for _, v in val]))
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("cross-entropy loss (nats/token)")
    ax1.legend()
    ax1.set_title(title)
    if hs:
        ax2 = axes[0, 1]
        ax2.plot(*zip(*hs), "o-", ms=3, label="ours (acc_norm)")
        ax2.axhline(REF_GPT2_HELLASWAG, color="r", ls="--", lw=1, label=f"GPT-2 124M ({REF_GPT2_HELLASWAG})")
        ax2.axhline(REF_GPT3_HELLASWAG, color="g", ls="--", lw=1, label=f"GPT-3 Small (125M) ({REF_GPT3_HELLASWAG})")
        ax2.axhline(0.25, color="gray", ls=":", lw=1, label="chance (0.25)")
        ax2.set_ylim(0.2, 0.4)
        ax2.set_xlabel("optimizer step")
        ax2.set_ylabel("HellaSwag acc_norm (fraction correct)")
        ax2.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- the loop
def scheduled_lr(cfg: TrainConfig, recipe, step: int, clock: float) -> float:
    """The step's learning rate: of the step (warmup + cosine) or, with ``--time-budget``, of the elapsed time."""
    if cfg.time_budget is None:
        return get_lr(
            step,
            max_lr=cfg.max_lr,
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
            min_lr_ratio=cfg.min_lr_ratio,
        )
    from pytorch_gpt2_from_scratch.speedrun import time_lr

    if recipe is not None:  # the recipe's time schedule (speedrun.py)
        return time_lr(
            clock / cfg.time_budget,
            max_lr=cfg.max_lr,
            schedule=recipe.schedule,
            warmup_frac=recipe.warmup_frac,
            cooldown_frac=recipe.cooldown_frac,
            min_lr_ratio=recipe.min_lr_ratio,
        )
    return time_lr(
        clock / cfg.time_budget,
        max_lr=cfg.max_lr,
        schedule="cosine",
        warmup_frac=cfg.warmup_steps / cfg.max_steps if cfg.max_steps else 0.0,
        min_lr_ratio=cfg.min_lr_ratio,
    )


class StopFlag:
    """Ctrl-C / SIGTERM ask the loop to stop at the next step boundary; a second Ctrl-C aborts at once.

    SIGTERM never aborts: ``torchrun`` answers a Ctrl-C by sending SIGTERM to its workers (and SIGKILL 30 s
    later), which must still let them finish the step and save.
    """

    def __init__(self) -> None:
        self.requested = False
        self._interrupts = 0
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt
        if not self.requested:
            print("\nstop requested: finishing this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)
        self.requested = True

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _agreed(flag: bool, device) -> bool:
    """``True`` on every rank if any rank's ``flag`` is set (so all ranks stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@dataclass
class TrainResult:
    steps_done: int
    history: list[dict] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    out: Path | None = None
    checkpoint: Path | None = None
    plot: Path | None = None
    interrupted: bool = False
    model: torch.nn.Module | None = None


def train(cfg: TrainConfig) -> TrainResult:
    env = setup_distributed(cfg.device)
    try:
        return _train(cfg, env)
    finally:
        cleanup_distributed(env)


def _train(cfg: TrainConfig, env) -> TrainResult:  # noqa: C901 - the training loop reads best in one piece
    from tqdm.auto import tqdm

    device, master = env.device, env.master
    out = Path(cfg.out) if cfg.out else out_dir("train_gpt2", cfg.preset)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    log_txt, log_jsonl = out / "log.txt", out / "log.jsonl"

    def log(msg: str) -> None:
        if master:
            tqdm.write(msg)
            with open(log_txt, "a") as f:
                f.write(msg + "\n")

    if cfg.dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {cfg.dtype!r}")
    autocast_dtype = torch.bfloat16 if cfg.dtype == "bf16" else None
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls

    if cfg.split_batch and env.world_size > 1 and cfg.batch_size * cfg.seq_len * env.world_size > cfg.total_batch_size:
        if cfg.batch_size % env.world_size == 0:  # keep the tokens per step: the ranks share the micro-batch
            cfg = replace(cfg, batch_size=cfg.batch_size // env.world_size)
    train_loader, val_loader, data_desc = make_loaders(cfg, env.rank, env.world_size)
    seed_everything(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    sizes = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size") if getattr(cfg, k)}
    model_config = GPTConfig.preset(cfg.model, pad_vocab_to=cfg.pad_vocab_to, attn_impl=cfg.attn_impl, **sizes)
    if cfg.seq_len > model_config.block_size:
        raise ValueError(f"--seq-len {cfg.seq_len} exceeds the model's block_size {model_config.block_size}")
    recipe = None
    if cfg.recipe:  # Section 5: the modern model and Muon + AdamW of a speedrun.py rung
        from pytorch_gpt2_from_scratch.speedrun import build_optimizer
        from pytorch_gpt2_from_scratch.speedrun import recipe as speedrun_recipe

        recipe = speedrun_recipe(cfg.recipe)
        mc = model_config
        model_config = ModernConfig(
            block_size=mc.block_size,
            vocab_size=mc.vocab_size,
            n_layer=mc.n_layer,
            n_head=mc.n_head,
            n_embd=mc.n_embd,
            **recipe.modern,
        )
        raw_model = ModernGPT(model_config).to(device)
        optimizer = build_optimizer(recipe, raw_model, device)
        for g in optimizer.param_groups:  # train_step sets one lr for all groups: keep the recipe's ratios
            g["lr_scale"] = g["max_lr"] / cfg.max_lr
    else:
        raw_model = GPT(model_config).to(device)
        optimizer = configure_optimizers(
            raw_model, weight_decay=cfg.weight_decay, learning_rate=cfg.max_lr, device_type=device.type, verbose=False
        )
    grad_accum = grad_accum_steps_for(cfg.total_batch_size, cfg.batch_size, cfg.seq_len, env.world_size)

    start_step, history, clock, precision_saved = 0, [], 0.0, None
    if cfg.resume:
        path = ckpt_path if cfg.resume == "auto" else Path(cfg.resume)
        ckpt = load_checkpoint(path, map_location=device)
        restore_model(raw_model, ckpt, model_config)
        optimizer.load_state_dict(ckpt["optimizer"])
        train_loader.load_state_dict(ckpt["loader"])
        restore_rng_state(ckpt["rng"])
        start_step = int(ckpt["step"])
        history = [h for h in ckpt["extra"].get("history", []) if h["step"] < start_step]
        clock = float(ckpt["extra"].get("clock", 0.0))  # training seconds already spent of --time-budget
        precision_saved = ckpt["extra"].get("precision")  # a resumed run keeps the precision it started with
        del ckpt
        log(f"resumed from {path} at step {start_step}")
        if master:  # the log on disk may hold steps after the checkpoint (a crash): rewrite it from the history
            log_jsonl.write_text("".join(json.dumps(h) + "\n" for h in history))
    elif master:
        log_jsonl.write_text("")
        log_txt.write_text("")

    precision_line = f"precision {cfg.dtype}"
    if precision_saved is not None:
        autocast_dtype = torch.bfloat16 if precision_saved == "bf16" else None
        precision_line = f"precision {precision_saved} (from the checkpoint)"
    elif cfg.dtype == "auto":
        from pytorch_gpt2_from_scratch.speed_ladder import keep_freed_memory
        from pytorch_gpt2_from_scratch.speedrun import choose_precision

        if device.type == "cpu":
            keep_freed_memory(True)  # lesson 11's allocator setting
        position = train_loader.state_dict()
        x, y = train_loader.next_batch()
        train_loader.load_state_dict(position)
        autocast_dtype, precision_line = choose_precision("auto", raw_model, x.to(device), y.to(device), device)
        if env.ddp:  # every rank uses rank 0's choice
            flag = torch.tensor([int(autocast_dtype is not None)], device=device)
            dist.broadcast(flag, 0)
            autocast_dtype = torch.bfloat16 if flag.item() else None
    precision = "bf16" if autocast_dtype is not None else "fp32"
    log(precision_line)

    model = torch.compile(raw_model) if cfg.compile else raw_model
    model = wrap_ddp(model, env)
    eval_model = model.module if env.ddp else model  # compiled (if asked) but outside DDP: forward only

    n_params = raw_model.num_params()
    mc = model_config
    kind = f"ModernGPT (recipe {cfg.recipe})" if cfg.recipe else "GPT"
    log(
        f"preset {cfg.preset}: {kind} {mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide, block {mc.block_size} "
        f"({n_params:,} parameters); data {data_desc}"
    )
    log(f"device {device}, {env.world_size} process(es), autocast {autocast_dtype}, compile {cfg.compile}")
    log(
        f"total batch {cfg.total_batch_size:,} tokens = B {cfg.batch_size} x T {cfg.seq_len} x {env.world_size} "
        f"rank(s) x {grad_accum} micro-steps; "
        + (f"time budget {cfg.time_budget:g} s" if cfg.time_budget else f"{cfg.max_steps} steps")
        + f", max lr {cfg.max_lr}"
    )

    hellaswag_file = None
    if cfg.hellaswag:  # every rank resolves the file (the download is atomic); if any rank cannot, all skip
        try:
            hellaswag_file = hellaswag_path("val")
        except DownloadError as e:
            log(f"HellaSwag skipped: {str(e).splitlines()[0]}")
        if _agreed(hellaswag_file is None, device):
            hellaswag_file = None

    def record(entry: dict) -> None:
        history.append(entry)
        if master:
            with open(log_jsonl, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def checkpoint(step: int) -> Path | None:
        if not master:
            return None
        return save_checkpoint(
            ckpt_path,
            model=raw_model,
            optimizer=optimizer,
            step=step,
            config=model_config,
            loader_state=train_loader.state_dict(),
            extra={"history": history, "train_config": asdict(cfg), "clock": clock, "precision": precision},
        )

    result = TrainResult(steps_done=start_step, out=out, model=raw_model)
    total = None if cfg.time_budget else cfg.max_steps
    bar = tqdm(total=total, initial=start_step, desc="train", disable=not (master and cfg.progress))
    with StopFlag() as stop:
        for step in itertools.count(start_step):
            # the run ends at max_steps or, with --time-budget (warmup_steps / max_steps then only set the warmup
            # fraction), at the first step boundary at or after the budget
            if cfg.time_budget is None:
                last = step == cfg.max_steps
            else:
                last = _agreed(clock >= cfg.time_budget, device)
            # 1. stop requests (Ctrl-C on any rank, or --stop-after) and periodic checkpoints
            stopping = _agreed(stop.requested or (cfg.stop_after is not None and step >= cfg.stop_after), device)
            if step > start_step and (stopping or last or step % cfg.checkpoint_every == 0):
                result.checkpoint = checkpoint(step)
                log(f"step {step}: checkpoint saved to {ckpt_path}")
            if stopping and not last:
                result.interrupted = True
                break
            # 2. evaluation: validation loss, HellaSwag, samples (at step 0 too: the untrained baseline)
            if step % cfg.eval_every == 0 or last:
                val = estimate_val_loss(eval_model, val_loader, cfg.val_steps, device, autocast_dtype)
                record({"step": step, "val_loss": val})
                log(f"step {step:5d} | val loss {val:.4f}")
            due = (cfg.hellaswag_every and step % cfg.hellaswag_every == 0) or last
            if hellaswag_file is not None and due:
                res = hellaswag_evaluate(
                    raw_model,
                    iter_examples(hellaswag_file),
                    device=device,
                    limit=cfg.hellaswag_limit,
                    rank=env.rank,
                    world_size=env.world_size,
                    autocast_dtype=autocast_dtype,
                )
                record({"step": step, "hellaswag": res.acc_norm, "hellaswag_acc": res.acc, "n": res.num_total})
                log(f"step {step:5d} | HellaSwag acc_norm {res.acc_norm:.4f} ({res.num_correct_norm}/{res.num_total})")
            if master and cfg.num_samples and ((step > 0 and step % cfg.sample_every == 0) or last):
                samples = sample_text(
                    raw_model, cfg.sample_prompt, cfg.num_samples, cfg.sample_length, device, seed=cfg.seed + step
                )
                for i, s in enumerate(samples):
                    log(f"step {step:5d} | sample {i}: {s!r}")
                record({"step": step, "samples": samples})
                result.samples = samples
            if last:
                break
            # 3. one optimizer step
            t0 = time.perf_counter()
            lr = scheduled_lr(cfg, recipe, step, clock)
            accum = ramped_grad_accum_steps(step, full_steps=grad_accum, ramp_steps=cfg.batch_ramp_steps)
            stats = train_step(
                model,
                optimizer,
                train_loader.next_batch,
                grad_accum_steps=accum,
                lr=lr,
                device=device,
                grad_clip=cfg.grad_clip,
                autocast_dtype=autocast_dtype,
            )
            synchronize(device)
            dt = time.perf_counter() - t0
            clock += dt
            if not math.isfinite(stats.loss):
                log(f"step {step}: loss is {stats.loss}; stopping (lower --max-lr?)")
                result.interrupted = True
                break
            entry = {
                "step": step,
                "clock_s": clock,
                "train_loss": stats.loss,
                "lr": lr,
                "norm": stats.grad_norm,
                "dt_ms": dt * 1000,
                "tok_per_s": stats.tokens / dt,
                "batch_tokens": stats.tokens,
            }
            record(entry)
            result.steps_done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}")
            if step % cfg.log_every == 0 or step == cfg.max_steps - 1:
                log(
                    f"step {step:5d} | loss {stats.loss:.6f} | lr {lr:.4e} | norm {stats.grad_norm:.4f} | "
                    f"dt {dt * 1000:.0f} ms | tok/s {stats.tokens / dt:,.0f}"
                )
    bar.close()
    if master:
        title = f"preset {cfg.preset}: {mc.n_layer}L/{mc.n_head}H/{mc.n_embd}C, {n_params / 1e6:.1f}M params"
        on_fineweb = Path(cfg.data if cfg.data else default_data(cfg)).is_dir()  # shards: FineWeb(-Edu)
        result.plot = plot_history(history, out / "loss.png", title, fineweb_reference=on_fineweb)
        log(f"wrote {out / 'loss.png'}, {log_txt}, {log_jsonl}")
    result.history = history
    return result


# --------------------------------------------------------------------------------------------- CLI
_HELP = {
    "model": "GPTConfig preset (gpt2, gpt2-medium, cpu-small, tiny, ...) with its own sizes",
    "n_layer": "transformer blocks L",
    "n_head": "attention heads per block",
    "n_embd": "embedding width C",
    "block_size": "longest sequence the model has positions for",
    "data": "a fineweb.py shard directory or a .txt/.jsonl file",
    "batch_size": "micro-batch B (sequences per forward, per process)",
    "seq_len": "sequence length T",
    "total_batch_size": "tokens per optimizer step (all micro-steps, all ranks); a multiple of B*T*ranks",
    "batch_ramp_steps": "linear batch-size ramp length in steps (0: off)",
    "max_lr": "peak learning rate after warmup",
    "warmup_steps": "linear warmup steps",
    "max_steps": "optimizer steps in all",
    "weight_decay": "AdamW weight decay on the 2-D tensors",
    "eval_every": "validation loss every N steps",
    "val_steps": "micro-batches per validation estimate",
    "hellaswag_every": "HellaSwag every N steps (0: only at the end)",
    "hellaswag_limit": "HellaSwag examples per evaluation (none: all 10,042)",
    "hellaswag": "skip HellaSwag entirely",
    "sample_every": "print samples every N steps",
    "checkpoint_every": "save a checkpoint every N steps",
    "log_every": "log a training line every N steps",
    "time_budget": "seconds of training steps; the run ends there and the lr follows the elapsed fraction",
    "compile": "torch.compile the model",
    "seed": "random seed (weights, data order, samples)",
    "out": "output folder",
    "resume": "continue from a checkpoint (no value: <out>/ckpt.pt)",
    "stop_after": "stop and checkpoint after this many steps, as Ctrl-C would",
}


def _preset_defaults(name: str) -> str:
    """``(default: 4)`` or, where the presets differ, ``(default: 4; gpt2-124M: preset's sizes)``."""

    def show(v) -> str:
        if v is None:
            return "the model preset's" if name in ("n_layer", "n_head", "n_embd", "block_size") else "none"
        return str(v)

    base = getattr(TrainConfig(), name)
    text = f"default: {show(base)}"
    others = [f"{p}: {show(PRESETS[p][name])}" for p in PRESETS if p != "cpu" and name in PRESETS[p]]
    others = [o for o in others if o.split(": ", 1)[1] != show(base)]
    return f"({text}; {'; '.join(others)})" if others else f"({text})"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def option(name: str, default_text: str | None = None, **kwargs) -> None:
        """``--name-with-dashes`` with its help text and default (the cpu preset's, and where others differ)."""
        text = f"(default: {default_text})" if default_text else _preset_defaults(name)
        p.add_argument(f"--{name.replace('_', '-')}", default=None, help=f"{_HELP[name]} {text}", **kwargs)

    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="settings to start from (default: cpu)")
    option("model", "cpu-small with the preset's sizes")
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        option(name, type=int)
    option("data", "tiny Shakespeare; gpt2-124M: $LLM_SCRATCH_DATA/edu_fineweb10B")
    for name in ("batch_size", "seq_len", "total_batch_size", "batch_ramp_steps"):
        option(name, type=int)
    option("max_lr", type=float)
    option("warmup_steps", type=int)
    option("max_steps", type=int)
    option("weight_decay", type=float)
    for name in ("eval_every", "val_steps", "hellaswag_every", "hellaswag_limit"):
        option(name, type=int)
    p.add_argument(
        "--no-hellaswag",
        dest="hellaswag",
        action="store_false",
        default=None,
        help=f"{_HELP['hellaswag']} (default: evaluate it when the dataset is available)",
    )
    for name in ("sample_every", "checkpoint_every", "log_every"):
        option(name, type=int)
    p.add_argument(
        "--precision",
        "--dtype",
        dest="dtype",
        default=None,
        choices=["auto", "fp32", "bf16"],
        help="autocast precision (default: auto = bf16 autocast + TF32 on CUDA; on a CPU the faster of fp32 and "
        "bf16, measured at the start of the run)",
    )
    option("time_budget", type=float)
    option("compile", action=argparse.BooleanOptionalAction)
    option("seed", type=seed_int)
    option("out", "out/train_gpt2/<preset>")
    option("resume", "start anew", nargs="?", const="auto")
    option("stop_after", type=int)
    add_device_argument(p)
    return p.parse_args(argv)


def main(preset: str = "cpu", **overrides) -> TrainResult:
    return train(make_config(preset, **overrides))


def cli() -> None:
    main(**vars(parse_args()))


if __name__ == "__main__":
    run_cli(cli)
