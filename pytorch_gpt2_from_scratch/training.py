"""Training utilities of chapter 2, part 2: the optimizer, the schedules, the accumulated step, DDP and checkpoints.

Everything the full training program (``train_gpt2.py``) and lessons 12-19 need, in one module:

* :func:`configure_optimizers` - AdamW (betas 0.9/0.95, eps 1e-8 as in GPT-3) with weight decay on the 2-D
  parameters only (matmul weights and embeddings), not on biases and LayerNorm gains; ``fused`` where the
  device supports it (one kernel updates all parameters instead of a loop of small ones).
* :func:`get_lr` - linear warmup then cosine decay to 10% of the maximum.
* :func:`ramped_grad_accum_steps` - GPT-3's linear batch-size ramp, in whole micro-batches.
* :func:`train_step` - one optimizer step over ``grad_accum_steps`` micro-batches (loss scaled by 1/steps),
  gradient clipping at 1.0, DDP gradient sync only on the last micro-step, loss averaged over ranks.
* :func:`setup_distributed` / :func:`cleanup_distributed` - read ``torchrun``'s environment, NCCL on CUDA,
  gloo on CPU.
* :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`restore_model` - model, optimizer, step, data-loader
  position and RNG states in one atomically written file, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import inspect
import math
import os
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pytorch_basis.common import atomic_torch_save, resolve_device

CHECKPOINT_FORMAT = "llm-scratch-gpt2-train-v1"


# --------------------------------------------------------------------------------------------- optimizer
def split_decay_params(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """``(decay, no_decay)`` name → parameter maps: every parameter with ``dim() >= 2`` is decayed.

    Tied weights appear once (``named_parameters`` de-duplicates shared tensors).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = {n: p for n, p in params.items() if p.dim() >= 2}
    no_decay = {n: p for n, p in params.items() if p.dim() < 2}
    return decay, no_decay


_FUSED_CACHE: dict[str, bool] = {}


def fused_adamw_supported(device_type: str) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` works on this device type (tried once on a tiny tensor)."""
    if device_type not in _FUSED_CACHE:
        ok = "fused" in inspect.signature(torch.optim.AdamW).parameters
        if ok:
            try:
                p = nn.Parameter(torch.zeros(2, device=device_type))
                p.grad = torch.zeros_like(p)
                torch.optim.AdamW([p], lr=1e-3, fused=True).step()
            except (RuntimeError, ValueError, TypeError):
                ok = False
        _FUSED_CACHE[device_type] = ok
    return _FUSED_CACHE[device_type]


def configure_optimizers(
    model: nn.Module,
    *,
    weight_decay: float = 0.1,
    learning_rate: float = 6e-4,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    device_type: str = "cpu",
    fused: bool | None = None,
    verbose: bool = False,
) -> torch.optim.AdamW:
    """AdamW with two parameter groups: ≥2-D tensors decayed by ``weight_decay``, the rest not decayed.

    ``fused=None`` picks the fused kernel when the device supports it.
    """
    decay, no_decay = split_decay_params(model)
    groups = [
        {"params": list(decay.values()), "weight_decay": weight_decay},
        {"params": list(no_decay.values()), "weight_decay": 0.0},
    ]
    if fused is None:
        fused = fused_adamw_supported(device_type)
    if verbose:
        n_decay = sum(p.numel() for p in decay.values())
        n_no = sum(p.numel() for p in no_decay.values())
        print(f"decayed parameter tensors: {len(decay)}, with {n_decay:,} parameters")
        print(f"non-decayed parameter tensors: {len(no_decay)}, with {n_no:,} parameters")
        print(f"using fused AdamW: {fused}")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)


# --------------------------------------------------------------------------------------------- schedules
def get_lr(step: int, *, max_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate at ``step`` (0-based).

    * warmup (``step < warmup_steps``): ``lr = max_lr · (step + 1) / warmup_steps`` (never 0 at step 0);
    * cosine decay: with ``r = (step − warmup_steps) / (max_steps − warmup_steps)`` in [0, 1],
      ``lr = min_lr + ½ (1 + cos(π r)) (max_lr − min_lr)``, ``min_lr = min_lr_ratio · max_lr``;
    * after ``max_steps``: ``min_lr``.
    """
    if not 0 <= warmup_steps <= max_steps:
        raise ValueError(f"need 0 <= warmup_steps <= max_steps, got warmup_steps={warmup_steps}, max_steps={max_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    min_lr = max_lr * min_lr_ratio
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    r = (step - warmup_steps) / (max_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * r))  # 1 → 0
    return min_lr + coeff * (max_lr - min_lr)


def ramped_grad_accum_steps(step: int, *, full_steps: int, ramp_steps: int, start_steps: int = 1) -> int:
    """Micro-batches per optimizer step under a linear batch-size ramp (GPT-3, Appendix B).

    The batch grows linearly from ``start_steps`` to ``full_steps`` micro-batches over the first ``ramp_steps``
    optimizer steps (``ramp_steps=0``: no ramp). The micro-batch is fixed, so the batch grows in whole
    micro-batches.
    """
    if ramp_steps <= 0 or step >= ramp_steps:
        return full_steps
    start_steps = max(1, min(start_steps, full_steps))
    return start_steps + (full_steps - start_steps) * step // ramp_steps


def grad_accum_steps_for(total_batch_size: int, micro_batch: int, seq_len: int, world_size: int = 1) -> int:
    """``total_batch_size`` tokens = ``micro_batch · seq_len · world_size · grad_accum_steps`` exactly."""
    for name, value in (("total_batch_size", total_batch_size), ("micro_batch", micro_batch), ("seq_len", seq_len)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    per_step = micro_batch * seq_len * world_size
    if total_batch_size % per_step:
        raise ValueError(
            f"total batch of {total_batch_size} tokens is not divisible by B*T*world_size = "
            f"{micro_batch}*{seq_len}*{world_size} = {per_step}"
        )
    return total_batch_size // per_step


# --------------------------------------------------------------------------------------------- one step
def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for bf16/fp16, nothing for fp32."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class StepStats:
    loss: float  # mean loss over the whole batch (all micro-steps, all ranks)
    grad_norm: float  # global gradient norm before clipping
    lr: float
    tokens: int  # tokens processed by all ranks in this step


def accumulate_gradients(
    model: nn.Module,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    grad_accum_steps: int,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """Forward/backward ``grad_accum_steps`` micro-batches, summing ``loss / grad_accum_steps`` gradients.

    The model's loss is a mean over its micro-batch, so scaling each by ``1/grad_accum_steps`` makes the summed
    gradient equal the gradient of the mean loss over the whole batch. Under DDP the gradient all-reduce runs
    only in the last micro-step's backward: the earlier ones run inside ``no_sync()``, which must already be
    active in the forward (DDP prepares its reducer there). Returns the mean loss on this rank (detached) and
    the number of tokens seen on this rank.
    """
    is_ddp = isinstance(model, DDP)
    loss_accum = torch.zeros((), device=device)
    tokens = 0
    for micro_step in range(grad_accum_steps):
        x, y = next_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        tokens += y.numel()
        last = micro_step == grad_accum_steps - 1
        sync_ctx = model.no_sync() if (is_ddp and not last) else nullcontext()
        with sync_ctx:
            with autocast_context(device, autocast_dtype):
                _, loss = model(x, y)
            loss = loss / grad_accum_steps
            loss_accum += loss.detach()
            loss.backward()
    return loss_accum, tokens


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    *,
    grad_accum_steps: int,
    lr: float,
    device: torch.device,
    grad_clip: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> StepStats:
    """One optimizer step: accumulate, average the loss over ranks, clip the global norm, set ``lr``, step."""
    optimizer.zero_grad(set_to_none=True)
    loss, tokens = accumulate_gradients(
        model, next_batch, grad_accum_steps, device=device, autocast_dtype=autocast_dtype
    )
    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        dist.all_reduce(loss, op=dist.ReduceOp.SUM)  # gloo has no AVG: sum, then divide
        loss = loss / world
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else _grad_norm(model)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return StepStats(loss=loss.item(), grad_norm=float(norm), lr=lr, tokens=tokens * world)


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad.detach().norm(2) for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads), 2) if grads else torch.zeros(())


# --------------------------------------------------------------------------------------------- DDP
@dataclass
class DistEnv:
    """Where this process sits in a ``torchrun`` launch (or a plain single process)."""

    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def master(self) -> bool:
        """Rank 0 logs, samples and saves."""
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistEnv:
    """Initialise the process group when launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set), else do nothing.

    CUDA: one GPU per process (``cuda:LOCAL_RANK``), NCCL. CPU (or ``--device cpu``): gloo, so
    ``torchrun --standalone --nproc_per_node=2 ...`` works on a laptop.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv(False, 0, 0, 1, resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = resolve_device("cpu" if device in ("auto", "cuda") else device)
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistEnv(True, rank, local_rank, world, dev)


def cleanup_distributed(env: DistEnv) -> None:
    if env.ddp and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when running under torchrun, else ``model`` unchanged."""
    if not env.ddp:
        return model
    device_ids = [env.local_rank] if env.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or ``torch.compile`` (evaluate, sample and save through this one)."""
    if isinstance(model, DDP):
        model = model.module
    return getattr(model, "_orig_mod", model)


# --------------------------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states in a ``weights_only``-loadable form."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- checkpoints
# Config fields that change parameter shapes: a checkpoint must agree on all of them to be loaded.
SHAPE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias", "tie_weights", "pad_vocab_to")


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    config,
    loader_state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write model, optimizer, step, data-loader position and RNG states to ``path`` atomically.

    ``step`` is the number of optimizer steps done (training resumes at ``step``).
    """
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap_model(model).state_dict(),
        "config": asdict(config),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "loader": loader_state,
        "rng": capture_rng_state(),
        "extra": extra or {},
    }
    return atomic_torch_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise  # unreadable (permissions, I/O): the message already names the file
    except Exception as e:
        # A truncated zip -> RuntimeError (PytorchStreamReader); any other file -> UnpicklingError, EOFError, or
        # whatever the weights-only unpickler trips over (IndexError on a text file): all mean "not a checkpoint".
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read checkpoint {path}: truncated or not a torch.save file ({why[:160]})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of train_gpt2.py (format {CHECKPOINT_FORMAT})")
    return ckpt


def check_config_compatible(saved: dict, config) -> None:
    """Raise ``ValueError`` naming every shape-relevant field where ``saved`` differs from ``config``."""
    current = asdict(config)
    diffs = [
        f"{k}={saved[k]!r} in the checkpoint vs {current[k]!r} in this run"
        for k in SHAPE_FIELDS
        if k in saved and k in current and saved[k] != current[k]
    ]
    if diffs:
        raise ValueError("checkpoint does not match the model configuration: " + "; ".join(diffs))


def restore_model(model: nn.Module, ckpt: dict, config=None) -> None:
    """Load ``ckpt['model']`` into ``model`` after checking the config and every tensor shape."""
    if config is not None:
        check_config_compatible(ckpt["config"], config)
    raw = unwrap_model(model)
    own = raw.state_dict()
    state = ckpt["model"]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint keys do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"checkpoint tensor {k!r} has shape {tuple(v.shape)}, the model has {tuple(own[k].shape)}")
    raw.load_state_dict(state)


def build_model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu", **overrides) -> nn.Module:
    """A ``GPT`` with the checkpoint's config and weights (``overrides`` may change e.g. ``attn_impl``)."""
    from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

    config = GPTConfig(**{**ckpt["config"], **overrides})
    model = GPT(config)
    restore_model(model, ckpt, config)
    return model.to(device)


# --------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def estimate_val_loss(model: nn.Module, loader, steps: int, device, autocast_dtype) -> float:
    """Mean loss over ``steps`` validation micro-batches from the start of the split, averaged over ranks."""
    was_training = model.training
    model.eval()
    loader.reset()
    total = torch.zeros((), device=device)
    for _ in range(steps):
        x, y = loader.next_batch()
        with autocast_context(device, autocast_dtype):
            _, loss = model(x.to(device), y.to(device))
        total += loss.detach().float() / steps
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total /= dist.get_world_size()
    model.train(was_training)
    return total.item()


def sample_text(
    model: nn.Module, prompt: str, num_samples: int, length: int, device: torch.device, seed: int
) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (``length`` new tokens, top-k 50) from a generator seeded with
    ``seed``."""
    from pytorch_gpt2_from_scratch.data import gpt2_encoding
    from pytorch_gpt2_from_scratch.sampling import generate

    enc = gpt2_encoding()
    tokens = torch.tensor(enc.encode(prompt), dtype=torch.long)
    idx = tokens.unsqueeze(0).repeat(num_samples, 1).to(device)  # (T0,) -> (num_samples, T0)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = generate(model, idx, max_new_tokens=length, top_k=50, generator=gen)
    model.train(was_training)
    return [enc.decode(row.tolist()) for row in out]
