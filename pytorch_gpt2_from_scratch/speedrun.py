"""Section 5's harness: train a recipe for a fixed *wall-clock budget* and measure it, rung by rung.

A speedrun asks "how low does the validation loss get in S seconds?", not "in N steps?": a change that makes a
step slower must pay for itself in better steps. So the run is defined by the budget:

* the **clock** counts only training steps (``time.perf_counter`` around each step); evaluation pauses it.
  ``clock="cpu"`` (``--clock cpu``, with ``--threads 1``) counts the CPU time of the one thread that does the work
  (``time.thread_time``) instead: on a machine that other programs load, it is still the time the steps would take
  on a free core (shared caches and memory bandwidth still interfere a little), so rungs stay comparable;
* the **learning rate is a function of the elapsed fraction** ``f = clock / budget`` (:func:`time_lr`), so warmup
  and decay happen at fractions of the budget whatever the speed of the machine;
* the run **stops before the first step that would start at or after the budget**, so it ends within one step of
  it;
* the validation loss is measured at ``eval_points`` evenly spaced clock times and at the end, on the same
  ``val_tokens`` tokens (the start of tiny Shakespeare's validation split, the first 10%, as in ``train_gpt2.py``).

A :class:`Recipe` is everything that defines a run; :data:`RUNGS` is the ladder of Section 5, each rung one change
on top of the previous one (lessons 20 onward each run one rung next to the one before it). :func:`run_ladder`
runs rungs x seeds *interleaved* (seed 0 of every rung, then seed 1, ...), so a change of the machine's load hits
all rungs alike, and :func:`summarise` makes the table: val loss at the budget (mean +- half the seed range), the
time at which the baseline's final val loss was first reached, tokens/s, and whether the rung beat the previous
one by more than the seed spread ("kept") or not ("within noise").

Run the whole ladder (from the repo root)::

    python pytorch_gpt2_from_scratch/speedrun.py --time-budget 120 --seeds 0 1     # table + plot in out/speedrun
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import (
    add_device_argument,
    nonnegative_int,
    out_dir,
    positive_int,
    resolve_device,
    run_cli,
    synchronize,
)
from pytorch_gpt2_from_scratch.data import DataLoaderLite, load_tinyshakespeare_tokens
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.modern import ModernConfig, ModernGPT
from pytorch_gpt2_from_scratch.muon import Muon, muon_param_groups
from pytorch_gpt2_from_scratch.speed_ladder import keep_freed_memory  # lesson 11's allocator setting
from pytorch_gpt2_from_scratch.training import autocast_context, configure_optimizers

DEFAULT_BUDGET = 120.0  # seconds of training per run: ~2 min per rung and seed on 2 quiet cores
SCHEDULES = ("cosine", "wsd")
PRECISIONS = ("auto", "fp32", "bf16")


# --------------------------------------------------------------------------------------------- the schedule
def time_lr(
    frac: float,
    *,
    max_lr: float,
    schedule: str = "cosine",
    warmup_frac: float = 0.1,
    cooldown_frac: float = 0.5,
    min_lr_ratio: float = 0.1,
) -> float:
    """Learning rate when a fraction ``frac`` of the budget has elapsed (``frac`` >= 0; >= 1 gives ``min_lr``).

    With ``min_lr = min_lr_ratio * max_lr`` and ``w = warmup_frac``:

    * warmup, ``frac < w``: ``lr = max_lr * frac / w`` (linear from 0);
    * ``"cosine"`` (GPT-2/GPT-3): ``lr = min_lr + (1 + cos(pi r)) / 2 * (max_lr - min_lr)``, ``r = (frac-w)/(1-w)``;
    * ``"wsd"`` (warmup-stable-decay, the speedruns' trapezoid): ``max_lr`` until ``1 - cooldown_frac``, then
      linear down to ``min_lr`` at ``frac = 1``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= warmup_frac < 1 or not 0 <= cooldown_frac <= 1:
        raise ValueError(f"need 0 <= warmup_frac < 1 and 0 <= cooldown_frac <= 1, got {warmup_frac}, {cooldown_frac}")
    min_lr = min_lr_ratio * max_lr
    if frac >= 1:
        return min_lr
    if frac < warmup_frac:
        return max_lr * frac / warmup_frac
    if schedule == "cosine":
        r = (frac - warmup_frac) / (1 - warmup_frac)
        return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (max_lr - min_lr)
    start = 1 - cooldown_frac
    if frac < start:
        return max_lr
    return max_lr + (min_lr - max_lr) * (frac - start) / cooldown_frac


# --------------------------------------------------------------------------------------------- a recipe
@dataclass
class Recipe:
    """Everything that defines a run except the budget and the seed. Defaults: ``train_gpt2.py``'s cpu preset."""

    name: str = "baseline"
    arch: str = "gpt2"  # "gpt2": model.GPT (Sections 1-4) | "modern": modern.ModernGPT
    modern: dict = field(default_factory=dict)  # ModernConfig switches (arch="modern")
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    batch_size: int = 4
    seq_len: int = 128
    grad_accum: int = 2  # micro-steps per optimizer step: 4 x 128 x 2 = 1,024 tokens
    optimizer: str = "adamw"  # "adamw" (all parameters) | "muon" (block matrices; AdamW for the rest)
    lr: float = 2e-3  # AdamW max lr (with Muon: the gains and scalars)
    embed_lr: float | None = None  # Muon recipe: AdamW lr of the embedding tables (None: lr)
    head_lr: float | None = None  # Muon recipe: AdamW lr of lm_head (None: lr)
    muon_lr: float = 0.02
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0: no clipping
    schedule: str = "cosine"
    warmup_frac: float = 0.1  # 20 of the cpu preset's 200 steps
    cooldown_frac: float = 0.5
    min_lr_ratio: float = 0.1
    precision: str = "fp32"  # "auto" measures fp32 and bf16 for a few steps and keeps the faster
    keep_freed_memory: bool = False  # glibc keeps freed memory (lesson 11's allocator rung)

    def __post_init__(self) -> None:
        if self.arch not in ("gpt2", "modern"):
            raise ValueError(f"arch must be 'gpt2' or 'modern', got {self.arch!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for k in ("batch_size", "seq_len", "grad_accum", "n_layer", "n_head", "n_embd"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum

    def lr_multiplier(self, frac: float) -> float:
        """The schedule's value at ``frac`` relative to its maximum (applied to every group's ``max_lr``)."""
        return time_lr(
            frac,
            max_lr=1.0,
            schedule=self.schedule,
            warmup_frac=self.warmup_frac,
            cooldown_frac=self.cooldown_frac,
            min_lr_ratio=self.min_lr_ratio,
        )


EVAL_T = 128  # every recipe is evaluated on sequences of this length, whatever it trains on


def build_model(recipe: Recipe, vocab_size: int = 50257) -> torch.nn.Module:
    block = max(recipe.seq_len, EVAL_T)
    sizes = dict(n_layer=recipe.n_layer, n_head=recipe.n_head, n_embd=recipe.n_embd, block_size=block)
    if recipe.arch == "gpt2":
        return GPT(GPTConfig(vocab_size=vocab_size, **sizes))
    return ModernGPT(ModernConfig(vocab_size=vocab_size, **sizes, **recipe.modern))


def build_optimizer(recipe: Recipe, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as in Sections 3-4 (``training.configure_optimizers``), or Muon + AdamW; every group gets ``max_lr``."""
    if recipe.optimizer == "adamw":
        opt = configure_optimizers(
            model, weight_decay=recipe.weight_decay, learning_rate=recipe.lr, device_type=device.type
        )
        for g in opt.param_groups:
            g["max_lr"] = recipe.lr
        return opt
    groups = muon_param_groups(
        model, muon_lr=recipe.muon_lr, adam_lr=recipe.lr, head_lr=recipe.head_lr, embed_lr=recipe.embed_lr
    )
    return Muon(groups)


# --------------------------------------------------------------------------------------------- precision
CLOCKS = ("wall", "cpu")


def clock_fn(clock: str = "wall"):
    """The timer of a run: ``wall`` = ``time.perf_counter``; ``cpu`` = this thread's CPU time (needs 1 torch thread).

    With ``torch.set_num_threads(1)`` every kernel runs in the calling thread, so ``time.thread_time`` counts all the
    work of a step and none of the time other processes took from the core.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if clock == "wall":
        return time.perf_counter
    if torch.get_num_threads() != 1:
        raise ValueError(f"--clock cpu needs --threads 1 (torch uses {torch.get_num_threads()} threads)")
    return time.thread_time


def _time_fwd_bwd(model, x, y, device, rounds: int, now, stop_ratio: float | None = None) -> dict[str, list]:
    """Seconds of forward + backward per round, fp32 and bf16 autocast interleaved; round 0 is a warm-up.
    ``stop_ratio``: stop after the first timed round if one precision is that many times slower."""
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(rounds + 1):
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            synchronize(device)
            t0 = now()
            with autocast_context(device, dtype):
                _, loss = model(x, y)
            loss.backward()
            synchronize(device)
            times[name].append(now() - t0)
        a, b = times["fp32"][-1], times["bf16"][-1]
        if i == 1 and stop_ratio and max(a, b) > stop_ratio * min(a, b):
            break
    model.zero_grad(set_to_none=True)
    return {k: v[1:] for k, v in times.items()}


def measure_precisions(model, x, y, device, rounds: int = 2, clock: str = "wall") -> dict[str, float]:
    """Median seconds of a forward + backward of ``(x, y)`` in fp32 and in bf16 autocast, interleaved.

    Two stages. First one row of at most 64 tokens: where bf16 is emulated (10-50x slower without bf16
    instructions) it is more than 3x slower already there, and the check ends cheaply. Otherwise the whole
    micro-batch decides: at a tiny shape the casts that autocast adds hide what the bf16 matmuls gain (on a CPU
    with AMX the 1 x 64 slice measured the two within 10% of each other, while training steps at B 4 x T 128 ran
    ~1.4x faster in bf16), and a close call on the slice flipped from run to run.
    The gradients are cleared afterwards and no random number is drawn, so training is not disturbed.
    """
    now = clock_fn(clock)
    slice_ = _time_fwd_bwd(model, x[:1, :64], y[:1, :64], device, rounds, now, stop_ratio=2.0)  # (B, T) -> (1, 64)
    t = {k: statistics.median(v) for k, v in slice_.items()}
    if t["bf16"] > 3 * t["fp32"] or x.shape[0] * x.shape[1] <= 64:
        return t
    full = _time_fwd_bwd(model, x, y, device, rounds, now)
    return {k: statistics.median(v) for k, v in full.items()}


def choose_precision(precision: str, model, x, y, device, clock: str = "wall") -> tuple[torch.dtype | None, str]:
    """``(autocast dtype or None, log line)``. ``auto``: CUDA -> bf16 + TF32; CPU/MPS -> the faster, measured."""
    if precision == "fp32":
        return None, "precision fp32 (as asked)"
    if precision == "bf16":
        return torch.bfloat16, "precision bf16 autocast (as asked)"
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        return torch.bfloat16, "precision auto on CUDA: bf16 autocast + TF32 matmuls"
    t = measure_precisions(model, x, y, device, clock=clock)
    pick = "bf16" if t["bf16"] < t["fp32"] else "fp32"
    line = f"precision auto: forward+backward fp32 {t['fp32'] * 1e3:.0f} ms, bf16 {t['bf16'] * 1e3:.0f} ms -> {pick}"
    return (torch.bfloat16 if pick == "bf16" else None), line


# --------------------------------------------------------------------------------------------- one run
@dataclass
class RunResult:
    name: str
    seed: int
    budget: float
    curve: list[tuple[float, int, float]]  # (training seconds, tokens seen, val loss), starting at (0, 0, init)
    steps: int
    tokens: int
    clock: float  # training seconds at the stop (>= budget, < budget + last step)
    last_step_s: float
    precision: str
    samples: list[str] = field(default_factory=list)

    @property
    def final_val(self) -> float:
        return self.curve[-1][2]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.clock if self.clock else 0.0

    def time_to(self, target: float) -> float | None:
        """First training time at which the val loss reached ``target`` (linear between evaluations), or None."""
        prev = None
        for t, _, v in self.curve:
            if v <= target:
                if prev is None or prev[1] == v:
                    return t
                (t0, v0) = prev
                return t0 + (t - t0) * (v0 - target) / (v0 - v)
            prev = (t, v)
        return None


def split_tokens(tokens: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: the first ``val_fraction`` of the tokens is validation (as ``train_gpt2.py``)."""
    n_val = int(len(tokens) * val_fraction)
    return tokens[n_val:], tokens[:n_val]


@torch.no_grad()
def val_loss(model, val: torch.Tensor, n_tokens: int, device, dtype, rows_per_batch: int = 16) -> float:
    """Mean loss over the first ``n_tokens`` validation tokens, in sequences of ``EVAL_T``."""
    rows = max(1, n_tokens // EVAL_T)
    if rows * EVAL_T + 1 > len(val):
        raise ValueError(f"--val-tokens {n_tokens} exceeds the validation split ({len(val)} tokens)")
    buf = val[: rows * EVAL_T + 1]
    x, y = buf[:-1].view(rows, EVAL_T), buf[1:].view(rows, EVAL_T)  # (rows*T,) -> (rows, T)
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, rows, rows_per_batch):
        xb, yb = x[i : i + rows_per_batch].to(device), y[i : i + rows_per_batch].to(device)
        with autocast_context(device, dtype):
            _, loss = model(xb, yb)
        total += loss.float().item() * len(xb)
    model.train(was)
    return total / rows


def run(
    recipe: Recipe,
    *,
    budget: float,
    seed: int = 0,
    tokens: torch.Tensor | None = None,
    device="auto",
    eval_points: int = 8,
    val_tokens: int = 4096,
    num_samples: int = 0,
    sample_length: int = 48,
    progress: bool = True,
    clock: str = "wall",
    log=print,
) -> RunResult:
    """Train ``recipe`` for ``budget`` seconds of training steps; val loss at ``eval_points`` times and the end.

    ``seed`` sets the initial weights and where in the training split the data stream starts; ``clock`` is
    ``"wall"`` or ``"cpu"`` (:func:`clock_fn`).
    """
    from tqdm.auto import tqdm

    if not budget > 0:
        raise ValueError(f"--time-budget must be > 0 seconds, got {budget}")
    if eval_points < 0:
        raise ValueError(f"--eval-points must be >= 0, got {eval_points}")
    device = resolve_device(device) if isinstance(device, str) else device
    now = clock_fn(clock)
    if clock == "cpu" and device.type != "cpu":
        raise ValueError(f"--clock cpu measures CPU work; use --clock wall on {device.type}")
    if tokens is None:
        tokens = load_tinyshakespeare_tokens()
    train_tokens, val_tokens_t = split_tokens(tokens)
    if recipe.keep_freed_memory and device.type == "cpu":
        keep_freed_memory(True)
    torch.manual_seed(seed)
    model = build_model(recipe).to(device)
    optimizer = build_optimizer(recipe, model, device)
    loader = DataLoaderLite(recipe.batch_size, recipe.seq_len, train_tokens)
    loader.position = (seed * 104_729) % loader.num_tokens  # each seed starts at another place of the stream
    x0, y0 = (t.to(device) for t in DataLoaderLite(recipe.batch_size, recipe.seq_len, train_tokens).next_batch())
    dtype, line = choose_precision(recipe.precision, model, x0, y0, device, clock=clock)
    log(f"[{recipe.name} seed {seed}] {line}")

    def evaluate() -> float:
        return val_loss(model, val_tokens_t, val_tokens, device, dtype)

    curve = [(0.0, 0, evaluate())]
    next_eval = [budget * (i + 1) / (eval_points + 1) for i in range(eval_points)]
    clock, step, seen, dt = 0.0, 0, 0, 0.0
    bar = tqdm(total=round(budget, 1), desc=f"{recipe.name} s{seed}", unit="s", disable=not progress, leave=False)
    while clock < budget:
        t0 = now()
        mult = recipe.lr_multiplier(clock / budget)
        for g in optimizer.param_groups:
            g["lr"] = g["max_lr"] * mult
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(recipe.grad_accum):
            x, y = loader.next_batch()
            x, y = x.to(device), y.to(device)
            with autocast_context(device, dtype):
                _, loss = model(x, y)
            (loss / recipe.grad_accum).backward()
            loss_sum += loss.detach()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        synchronize(device)
        dt = now() - t0
        clock += dt
        step += 1
        seen += recipe.tokens_per_step
        bar.update(round(min(clock, budget), 1) - bar.n)
        if not math.isfinite(float(loss_sum)):
            log(f"[{recipe.name} seed {seed}] loss is not finite at step {step}; stopping")
            break
        while next_eval and clock >= next_eval[0]:
            next_eval.pop(0)
            if clock < budget:
                curve.append((clock, seen, evaluate()))
    bar.close()
    curve.append((clock, seen, evaluate()))
    samples = []
    if num_samples:
        samples = sample_play(model, num_samples, sample_length, device, seed)
    return RunResult(recipe.name, seed, budget, curve, step, seen, clock, dt, "bf16" if dtype else "fp32", samples)


def sample_play(model, num_samples: int, length: int, device, seed: int, prompt: str = "ROMEO:") -> list[str]:
    """``num_samples`` top-k-50 continuations of ``prompt`` (seeded generator), as in ``train_gpt2.py``."""
    from pytorch_gpt2_from_scratch.data import gpt2_encoding
    from pytorch_gpt2_from_scratch.sampling import generate

    enc = gpt2_encoding()
    idx = torch.tensor(enc.encode(prompt), dtype=torch.long).unsqueeze(0).repeat(num_samples, 1).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    out = generate(model, idx, max_new_tokens=length, top_k=50, generator=gen)  # (n, T0) -> (n, T0 + length)
    return [enc.decode(row.tolist()) for row in out]


# --------------------------------------------------------------------------------------------- the ladder
BASELINE = Recipe()

# (key, what changes, the recipe fields it sets). Cumulative: each rung is the previous one plus its change.
RUNGS: list[tuple[str, str, dict]] = [
    ("baseline", "GPT-2 recipe of Sections 1-4 (train_gpt2.py's cpu preset): fp32, AdamW, warmup + cosine", {}),
    (
        "fast-step",
        "the fastest step on this device: precision auto (fp32 vs bf16 measured), glibc keeps memory",
        dict(precision="auto", keep_freed_memory=True),
    ),
    ("rope", "rotary position embeddings instead of the learned wpe", dict(arch="modern", modern=dict(rope=True))),
    ("rmsnorm", "RMSNorm instead of LayerNorm, no biases", dict(modern=dict(norm="rmsnorm", bias=False))),
    ("qk-norm", "RMS-normalised queries and keys", dict(modern=dict(qk_norm=True))),
    ("relu2", "ReLU^2 MLP instead of tanh-GELU", dict(modern=dict(mlp="relu2"))),
    ("untied", "separate lm_head and wte", dict(modern=dict(tie_weights=False))),
    ("zero-init", "output projections and lm_head start at zero", dict(modern=dict(zero_init=True))),
    ("softcap", "logit soft-cap 15 * tanh(logits / 15)", dict(modern=dict(softcap=15.0))),
    (
        "muon",
        "Muon for the block matrices, AdamW for embeddings/head/gains; lrs retuned; wsd schedule, no clip",
        dict(
            optimizer="muon",
            muon_lr=0.05,
            lr=4e-3,
            embed_lr=0.01,
            head_lr=4e-3,
            weight_decay=0.0,
            grad_clip=0.0,
            schedule="wsd",
            warmup_frac=0.0,
            cooldown_frac=0.6,
        ),
    ),
    (
        "value-embed",
        "value embeddings: a second token table added to every layer's values",
        dict(modern=dict(value_embed=True)),
    ),
    ("x0-skip", "every block reads a * x + b * x_0 (skip from the embedding)", dict(modern=dict(x0_skip=True))),
    ("batch", "batch and sequence for the budget: B 8 x T 128, no accumulation", dict(batch_size=8, grad_accum=1)),
    (
        "lean",
        "drop what did not pay at this budget: soft-cap (28% of the tokens/s), value embeddings (6.4 M more "
        "parameters to update), zero-init (measured worse)",
        dict(modern=dict(softcap=None, value_embed=False, zero_init=False)),
    ),
]
RUNG_KEYS = tuple(k for k, _, _ in RUNGS)


def _apply(recipe: Recipe, name: str, changes: dict) -> Recipe:
    changes = dict(changes)
    modern = {**recipe.modern, **changes.pop("modern", {})}
    return replace(recipe, name=name, modern=modern, **changes)


def ladder(upto: str | None = None, base: Recipe = BASELINE) -> list[Recipe]:
    """The cumulative recipes of :data:`RUNGS` up to and including rung ``upto`` (all by default)."""
    if upto is not None and upto not in RUNG_KEYS:
        raise ValueError(f"unknown rung {upto!r}; choose from {', '.join(RUNG_KEYS)}")
    out, recipe = [], base
    for key, _, changes in RUNGS:
        recipe = _apply(recipe, key, changes)
        out.append(recipe)
        if key == upto:
            break
    return out


def recipe(key: str) -> Recipe:
    """The recipe of rung ``key`` (every change up to it)."""
    return ladder(key)[-1]


def shrink(r: Recipe) -> Recipe:
    """The same recipe on a 1-layer, 32-wide model at B 2 x T 32 (``--tiny``: tests run each rung in seconds)."""
    return replace(r, n_layer=1, n_head=2, n_embd=32, batch_size=2, seq_len=32)


def run_ladder(recipes: list[Recipe], seeds: list[int], *, budget: float, log=print, **kw) -> list[RunResult]:
    """Every recipe x every seed, interleaved: seed 0 of all recipes, then seed 1, ..."""
    tokens = kw.pop("tokens", None)
    if tokens is None:
        tokens = load_tinyshakespeare_tokens()
    results = []
    for seed in seeds:
        for r in recipes:
            res = run(r, budget=budget, seed=seed, tokens=tokens, log=log, **kw)
            log(
                f"[{r.name} seed {seed}] val {res.final_val:.4f} after {res.clock:.1f} s, {res.steps} steps, "
                f"{res.tokens:,} tokens ({res.tokens_per_s:,.0f} tok/s, {res.precision})"
            )
            results.append(res)
    return results


@dataclass
class RungSummary:
    name: str
    mean: float
    spread: float  # half the range over seeds
    time_to_baseline: float | None  # mean over seeds (None if a seed never reached it)
    tokens_per_s: float
    verdict: str
    reached: int = 0  # seeds that reached the baseline's loss
    seeds: int = 0


def summarise(results: list[RunResult], baseline_name: str | None = None) -> list[RungSummary]:
    """One row per rung in order of appearance; the first rung (or ``baseline_name``) defines the target loss.

    A rung is "kept" when its mean beats the previous rung's mean by more than the sum of both seed spreads
    (their seed ranges do not overlap), "worse" when it loses by that much, else "within noise".
    """
    names = list(dict.fromkeys(r.name for r in results))
    by = {n: [r for r in results if r.name == n] for n in names}
    target_name = baseline_name or names[0]
    target = statistics.mean(r.final_val for r in by[target_name])
    rows: list[RungSummary] = []
    for n in names:
        vals = [r.final_val for r in by[n]]
        mean, spread = statistics.mean(vals), (max(vals) - min(vals)) / 2
        times = [r.time_to(target) for r in by[n]]
        reached = sum(t is not None for t in times)
        ttb = statistics.mean(times) if reached == len(times) else None
        tps = statistics.mean(r.tokens_per_s for r in by[n])
        if not rows:
            verdict = "reference"
        else:
            prev = rows[-1]
            margin = prev.spread + spread
            verdict = "within noise"
            if prev.mean - mean > margin:
                verdict = "kept"
            elif mean - prev.mean > margin:
                verdict = "worse"
        rows.append(RungSummary(n, mean, spread, ttb, tps, verdict, reached, len(times)))
    return rows


def format_table(rows: list[RungSummary], budget: float) -> str:
    lines = [
        f"| rung | val loss at {budget:g} s (mean ± half range) | time to baseline's loss | tokens/s | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        ttb = f"{r.time_to_baseline:.1f} s" if r.time_to_baseline is not None else f"{r.reached}/{r.seeds} seeds"
        lines.append(f"| {r.name} | {r.mean:.3f} ± {r.spread:.3f} | {ttb} | {r.tokens_per_s:,.0f} | {r.verdict} |")
    return "\n".join(lines)


def plot_curves(results: list[RunResult], path: Path, title: str, clock: str = "wall") -> Path:
    """Val loss against training seconds (``clock``: wall or one thread's CPU time), one colour per rung and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.name for r in results))
    cmap = plt.get_cmap("viridis" if len(names) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, n in enumerate(names):
        color = cmap(i / max(1, len(names) - 1)) if len(names) > 10 else cmap(i)
        for j, r in enumerate(x for x in results if x.name == n):
            t, _, v = zip(*r.curve[1:]) if len(r.curve) > 1 else zip(*r.curve)
            ax.plot(t, v, "o-", ms=2.5, lw=1.2, color=color, alpha=0.85, label=n if j == 0 else None)
    ax.set_xlabel("training wall-clock time (s)" if clock == "wall" else "training time (s, CPU time of one thread)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- CLIs
def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="seconds of training steps per run (default: %(default)s)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per rung (default: 0 1)")
    p.add_argument("--eval-points", type=int, default=8, help="val-loss evaluations during a run (plus the end)")
    p.add_argument("--val-tokens", type=int, default=4096, help="validation tokens per evaluation")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="wall: elapsed time; cpu: CPU time of the one working thread (needs --threads 1; fair under load)",
    )
    p.add_argument("--tiny", action="store_true", help="a 1-layer, 32-wide model at B 2 x T 32 (for tests)")
    p.add_argument("--out", default=None, help="output folder (default: out/speedrun)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_device_argument(p)


def _check_args(args: argparse.Namespace) -> None:
    seeds = args.seeds
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(type(s) is int for s in seeds):
        raise ValueError(f"--seeds needs one or more whole numbers, got {seeds!r}")
    if not args.time_budget > 0:
        raise ValueError(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if not math.isfinite(args.time_budget):  # inf: the first run would never stop
        raise ValueError(f"--time-budget must be a finite number of seconds, got {args.time_budget}")
    if args.clock == "cpu" and args.threads != 1:
        raise ValueError(f"--clock cpu needs --threads 1 (got --threads {args.threads})")
    if args.eval_points < 0 or args.val_tokens < EVAL_T:
        raise ValueError(
            f"need --eval-points >= 0 and --val-tokens >= {EVAL_T}, got {args.eval_points}, {args.val_tokens}"
        )


def compare(recipes: list[Recipe], args: argparse.Namespace, stem: str, title: str, samples: int = 0) -> dict:
    """Run ``recipes`` x ``args.seeds`` interleaved; print and write the table (``stem.md``/``.json``) and plot."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        recipes = [shrink(r) for r in recipes]
    out = Path(args.out) if args.out else out_dir("speedrun")  # report() creates it
    results = run_ladder(
        recipes,
        args.seeds,
        budget=args.time_budget,
        device=args.device,
        eval_points=args.eval_points,
        val_tokens=args.val_tokens,
        num_samples=samples,
        progress=args.progress,
        clock=args.clock,
    )
    cond = (
        f"{args.clock} clock, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"budget {args.time_budget:g} s, seeds {' '.join(map(str, args.seeds))}, {time.strftime('%Y-%m-%d')}"
    )
    return report(results, out, stem, title, cond, args.clock)


def report(results: list[RunResult], out: Path, stem: str, title: str, cond: str, clock: str = "wall") -> dict:
    """Summarise ``results``; print the table and write it (``stem.md``), the runs (``stem.json``) and the plot."""
    budgets = {r.budget for r in results}
    if len(budgets) != 1:
        raise ValueError(f"the runs have different budgets ({', '.join(f'{b:g} s' for b in sorted(budgets))})")
    rows = summarise(results)
    table = format_table(rows, budgets.pop())
    print(table)
    print(cond)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table + "\n\n" + cond + "\n")
    payload = dict(
        condition=cond,
        clock=clock,
        rows=[asdict(r) for r in rows],
        runs=[dict(asdict(r), final_val=r.final_val) for r in results],
    )
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    plot = plot_curves(results, out / f"{stem}.png", title, clock=clock)
    print(f"wrote {out / (stem + '.md')}, {out / (stem + '.json')}, {plot}")
    return dict(results=results, rows=rows, table=table, plot=plot)


def load_runs(path) -> tuple[list[RunResult], str, str]:
    """``(runs, condition, clock)`` from a ``.json`` written by :func:`report`."""
    try:
        payload = json.loads(Path(path).read_text())
        runs = payload["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a speedrun.py result file ({type(e).__name__}: {e})") from None
    keys = {f for f in RunResult.__dataclass_fields__}
    out = []
    for r in runs:
        d = {k: v for k, v in r.items() if k in keys}
        d["curve"] = [tuple(c) for c in d["curve"]]
        out.append(RunResult(**d))
    clock = payload.get("clock", "cpu" if str(payload.get("condition", "")).startswith("cpu clock") else "wall")
    return out, payload.get("condition", ""), clock


def merge(paths, out=None, stem: str = "ladder") -> dict:
    """One table and plot from several result files, e.g. one process per seed run side by side (``--merge``).

    Rungs keep the order of the first file; runs of one rung are ordered by seed.
    """
    results, conds, clocks = [], [], set()
    for p in paths:
        runs, cond, clock = load_runs(p)
        results += runs
        conds.append(cond)
        clocks.add(clock)
    if len(clocks) != 1:
        raise ValueError(f"the files were measured with different clocks ({', '.join(sorted(clocks))})")
    order = list(dict.fromkeys(r.name for r in results))
    results.sort(key=lambda r: (r.seed, order.index(r.name)))  # interleaved, as run_ladder runs them
    out = Path(out) if out else out_dir("speedrun")
    cond = "; ".join(dict.fromkeys(conds)) + f" (merged from {len(paths)} files)"
    return report(results, out, stem, "Section 5: val loss against training time, every rung", cond, clocks.pop())


# --------------------------------------------------------------------------------------------- lessons 20+
def rung_number(key: str) -> int:
    """Rung ``key``'s place on the ladder (``baseline`` is 0); its lesson is ``20 + number``."""
    if key not in RUNG_KEYS:
        raise ValueError(f"unknown rung {key!r}; choose from {', '.join(RUNG_KEYS)}")
    return RUNG_KEYS.index(key)


def recipe_diff(before: Recipe, after: Recipe) -> dict[str, tuple[object, object]]:
    """``{field: (before, after)}`` for every field of the two recipes that differs, the name aside.

    The ModernConfig switches in ``modern`` are compared one by one as ``modern.<switch>``; a switch a recipe does
    not set has ModernConfig's default (all off: GPT-2).
    """
    a, b = asdict(before), asdict(after)
    out = {k: (a[k], b[k]) for k in a if k not in ("name", "modern") and a[k] != b[k]}
    switches = asdict(ModernConfig())
    for k in dict.fromkeys([*before.modern, *after.modern]):
        old, new = before.modern.get(k, switches.get(k)), after.modern.get(k, switches.get(k))
        if old != new:
            out[f"modern.{k}"] = (old, new)
    return out


def show_change(*rungs: Recipe) -> None:
    """Print what the last of ``rungs`` changes: the ladder's one-line description of the change and the fields
    that differ from the rung before it (:func:`recipe_diff`), or, for a recipe alone, every field."""
    if len(rungs) not in (1, 2):
        raise ValueError(f"show_change takes one recipe or two (the rung before and this one), got {len(rungs)}")
    after = rungs[-1]
    what = {k: text for k, text, _ in RUNGS}.get(after.name)
    if after.name in RUNG_KEYS:
        print(f"rung {rung_number(after.name)} of {len(RUNG_KEYS) - 1}, {after.name!r}: {what}")
    if len(rungs) == 1:
        fields_ = {k: (None, v) for k, v in asdict(after).items() if k != "name"}
        print("the recipe:")
    else:
        fields_ = recipe_diff(*rungs)
        print(f"the recipe fields it changes, from rung {rungs[0].name!r}:" if fields_ else "no recipe field differs")
    width = max((len(k) for k in fields_), default=0)
    for k, (old, new) in fields_.items():
        print(f"  {k:<{width}}  {new!r}" if len(rungs) == 1 else f"  {k:<{width}}  {old!r} -> {new!r}")


def show_schedule(recipe: Recipe, budget: float, fractions=(0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)) -> None:
    """Print the recipe's learning rate (``lr``, :func:`time_lr`) at ``fractions`` of the budget, in seconds."""
    if not budget > 0:
        raise ValueError(f"--time-budget must be > 0 seconds, got {budget}")
    rows = [(f * budget, recipe.lr * recipe.lr_multiplier(f)) for f in fractions]
    print(f"learning rate against training time, {recipe.schedule} schedule, budget {budget:g} s:")
    for (t, lr), f in zip(rows, fractions):
        print(f"  {t:7.1f} s  ({f:4.0%} of the budget)  lr {lr:.2e}")


def compare_rungs(
    rungs,
    time_budget: float = DEFAULT_BUDGET,
    seeds=(0, 1),
    eval_points: int = 8,
    val_tokens: int = 4096,
    threads: int | None = None,
    tiny: bool = False,
    out=None,
    progress: bool = True,
    device="auto",
    clock: str = "wall",
) -> dict:
    """What lessons 20+ run: ``rungs`` (the rung before and this one, or the baseline alone) x ``seeds``, each for
    ``time_budget`` seconds, interleaved; prints and writes the table and the plot (:func:`compare`) as
    ``out/speedrun/<lesson>_<rung>.*``. The options are the lessons' command line's (:func:`lesson_cli`)."""
    args = argparse.Namespace(**{k: v for k, v in locals().items() if k != "rungs"})  # as the command line's
    _check_args(args)
    rungs = list(rungs)
    if not rungs or not all(isinstance(r, Recipe) for r in rungs):
        raise ValueError("compare_rungs needs a list of Recipe (e.g. speedrun.ladder(key)[-2:])")
    last = rungs[-1].name
    stem = f"{20 + rung_number(last)}_{last}" if last in RUNG_KEYS else last
    number = f"rung {rung_number(last)}: " if last in RUNG_KEYS else ""
    title = number + " vs ".join(dict.fromkeys(r.name for r in reversed(rungs)))
    return compare(rungs, args, stem, title)


def lesson_cli(main, doc: str, argv=None) -> None:
    """The command line of lessons 20+: the options of :func:`add_common_arguments`, checked before anything runs,
    passed to the lesson's ``main(**options)``. A bad option (a zero budget, no seed) is one line and exit status 2.
    """

    def entry(argv) -> dict:
        p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
        add_common_arguments(p)
        args = p.parse_args(argv)
        _check_args(args)
        return main(**vars(args))

    cli(argv, entry=entry)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument(
        "--rungs",
        nargs="+",
        default=list(RUNG_KEYS),
        choices=list(RUNG_KEYS),
        help="which rungs of the ladder to run (each includes the changes before it)",
    )
    p.add_argument("--samples", type=nonnegative_int, default=2, help="samples per run at the end (0: none)")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="no training: one table and plot from result files (e.g. seeds run as separate processes)",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    _check_args(args)
    all_rungs = {r.name: r for r in ladder()}
    recipes = [copy.deepcopy(all_rungs[k]) for k in args.rungs]
    return compare(recipes, args, "ladder", "Section 5: val loss against training time, every rung", args.samples)


def cli(argv=None, entry=main) -> None:
    """Bad options (a zero budget, an unknown rung) stop with one line and exit status 2."""
    try:
        entry(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run_cli(lambda: cli())
