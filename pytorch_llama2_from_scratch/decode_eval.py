"""What a cheaper number format costs in accuracy: top-1 agreement and perplexity on held-out text.

    from pytorch_llama2_from_scratch.decode_eval import trained_tiny_llama, heldout_windows, accuracy_cost

    model, tok = trained_tiny_llama()               # lesson 12's checkpoint (trained quickly if missing)
    windows = heldout_windows(tok, seq_len=128, n=16)
    cost = accuracy_cost(model, cheaper_model, windows)

For a reference model with next-token distribution ``p`` and a cheaper one (bf16 weights, int8 weights) ``p'``
on the same held-out windows ``x`` (the last 10 % of tiny Shakespeare, the validation split of lesson 12)::

    top-1 agreement = mean_t [ argmax p'_t == argmax p_t ]          (would greedy decoding pick the same token?)
    perplexity      = exp( -1/N sum_t log p_t(x_{t+1}) )             (ppl' likewise with p')
    delta           = ppl' / ppl - 1                                 (relative perplexity change)
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from pytorch_basis.common import out_dir, positive_int, tiny_shakespeare_path
from pytorch_llama2_from_scratch.loading import load_checkpoint, load_tokenizer
from pytorch_llama2_from_scratch.model import Transformer

__all__ = [
    "accuracy_cost",
    "add_accuracy_arguments",
    "format_accuracy",
    "heldout_windows",
    "print_accuracy",
    "trained_tiny_llama",
]


def trained_tiny_llama(
    directory: str | Path | None = None, train_steps: int = 150, max_minutes: float = 3.0, max_chars: int | None = None
):
    """``(model, tokenizer)`` of lesson 12's checkpoint; if it does not exist, train one with fewer steps.

    The fallback runs lesson 12's ``main`` (same data, tokenizer and model) for ``train_steps`` steps, so the
    numbers are then those of a shorter training; the caller prints which one it got.
    """
    directory = Path(directory) if directory else out_dir("llama2", "tiny_shakespeare")
    trained_now = False
    if not (directory / "params.json").is_file():
        path = Path(__file__).with_name("12_train_tiny_llama.py")
        spec = importlib.util.spec_from_file_location("lesson12_train_tiny_llama", path)
        lesson = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lesson)
        print(f"no checkpoint in {directory}: training lesson 12's tiny LLaMA for {train_steps} steps first")
        with torch.inference_mode(False), torch.enable_grad():  # callers may be decorated with inference_mode
            lesson.main(
                out=str(directory),
                steps=train_steps,
                max_minutes=max_minutes,
                max_chars=max_chars,
                sample_tokens=8,
                eval_every=max(train_steps, 1),
                device="cpu",
            )
        trained_now = True
    model, _ = load_checkpoint(directory)
    model.trained_steps = _steps(directory)
    model.trained_now = trained_now
    return model.eval(), load_tokenizer(directory)


def _steps(directory: Path) -> int | None:
    import json

    log = directory / "train_log.json"
    if not log.is_file():
        return None
    val = json.loads(log.read_text()).get("val", [])
    return int(val[-1][0]) if val else None


def heldout_windows(tokenizer, seq_len: int = 128, n: int = 16) -> torch.Tensor:
    """``n`` non-overlapping windows (n, seq_len + 1) from the last 10 % of tiny Shakespeare's tokens."""
    ids = tokenizer.encode(tiny_shakespeare_path().read_text(), bos=False)
    data = torch.tensor(ids, dtype=torch.long)
    val = data[-max(len(data) // 10, seq_len + 1) :]
    n = min(n, len(val) // (seq_len + 1))
    if n < 1:
        raise ValueError(f"held-out text has {len(val)} tokens, fewer than one window of {seq_len + 1}")
    return val[: n * (seq_len + 1)].view(n, seq_len + 1)  # (n * (T+1),) -> (n, T+1)


@torch.inference_mode()
def _logits(model: Transformer, windows: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(w[None, :-1], use_cache=False) for w in windows]).float()  # (n, T, V)


@torch.inference_mode()
def accuracy_cost(reference: Transformer | torch.Tensor, model: Transformer, windows: torch.Tensor) -> dict:
    """Top-1 agreement and perplexities of ``model`` vs ``reference`` on ``windows`` (n, T+1).

    ``reference``: the reference model, or its logits on ``windows`` (n, T, V) when several models are compared
    against one reference (computed once)."""
    ref = reference if isinstance(reference, torch.Tensor) else _logits(reference, windows)
    out = _logits(model, windows)
    targets = windows[:, 1:]
    nll_ref = F.cross_entropy(ref.flatten(0, 1), targets.flatten()).item()
    nll = F.cross_entropy(out.flatten(0, 1), targets.flatten()).item()
    ppl_ref, ppl = math.exp(nll_ref), math.exp(nll)
    return {
        "top1_agreement": (ref.argmax(-1) == out.argmax(-1)).float().mean().item(),
        "ppl_reference": ppl_ref,
        "ppl": ppl,
        "ppl_delta_pct": 100 * (ppl / ppl_ref - 1),
        "max_abs_logit_diff": (ref - out).abs().max().item(),
        "tokens": targets.numel(),
    }


def format_accuracy(
    formats, checkpoint: str | Path | None = None, train_steps: int = 150, windows: int = 16
) -> tuple[dict, dict]:
    """The accuracy cost of each weight format in ``formats`` (names of :func:`quantize.with_weights`) on the
    trained tiny LLaMA (:func:`trained_tiny_llama`), against its fp32 weights, on ``windows`` held-out windows.

    Returns ``({format: accuracy_cost(...)}, {"params", "steps", "trained_now", "tokens"})``."""
    from pytorch_llama2_from_scratch.quantize import with_weights

    ref, tok = trained_tiny_llama(checkpoint, train_steps=train_steps)
    win = heldout_windows(tok, seq_len=ref.args.max_seq_len - 1, n=windows)
    ref_logits = _logits(ref, win)  # (n, T, V), once for every format
    costs = {fmt: accuracy_cost(ref_logits, with_weights(ref, fmt), win) for fmt in formats}
    info = {"params": ref.num_params(), "steps": ref.trained_steps, "trained_now": ref.trained_now,
            "tokens": win[:, 1:].numel()}  # fmt: skip
    return costs, info


def print_accuracy(costs: dict, info: dict) -> None:
    """Print :func:`format_accuracy`'s result: which tiny LLaMA, then one line per weight format."""
    how = f"trained here for {info['steps']} steps" if info["trained_now"] else f"lesson 12, {info['steps']} steps"
    print(f"   {info['params'] / 1e6:.2f} M parameters ({how}), {info['tokens']} held-out tokens")
    for name, a in costs.items():
        print(
            f"   {name}: top-1 agreement {100 * a['top1_agreement']:.2f} %, perplexity {a['ppl_reference']:.3f} -> "
            f"{a['ppl']:.3f} ({a['ppl_delta_pct']:+.3f} %), max |logit diff| {a['max_abs_logit_diff']:.3f}"
        )


def add_accuracy_arguments(p) -> None:
    """The command-line options of :func:`format_accuracy` (lessons 21 and 22)."""
    p.add_argument("--windows", type=positive_int, default=16, help="held-out windows for the accuracy measurement")
    p.add_argument("--train-steps", type=positive_int, default=150, help="steps if lesson 12's checkpoint is missing")
    p.add_argument("--checkpoint", default=None, help="tiny LLaMA folder (default: lesson 12's out/llama2/...)")
