"""Small pieces the autograd lessons of chapter 1 share.

* :func:`capture_error` and :func:`capture_warnings` run a snippet that is *meant* to fail or warn and return
  the message, so a lesson can print the error it demonstrates without crashing (and a test can check it).
* :func:`section` prints a lesson heading.
* :func:`lesson_parser` builds the ``argparse`` parser every lesson starts from (``--device``, ``--seed``).
* A 2-layer MLP written out by hand — :func:`init_mlp`, :func:`mlp_forward`, :func:`mlp_backward`, with a toy
  data set from :func:`make_blobs` (:func:`make_mlp_problem` builds both) — used by lesson 4 (backward by hand
  vs autograd) and lesson 11 (gradient accumulation)::

      h_pre  = x @ W1 + b1          (B, D) @ (D, H) -> (B, H)
      h      = tanh(h_pre)          (B, H)
      logits = h @ W2 + b2          (B, H) @ (H, C) -> (B, C)
      p      = softmax(logits)      (B, C)
      L      = -1/B Σ_i log p[i, y_i]                      (mean cross-entropy)

  and its backward, the chain rule applied node by node from the loss back to the inputs::

      dlogits = (p - onehot(y)) / B                         (B, C)
      dW2     = hᵀ @ dlogits        db2 = Σ_i dlogits[i]    (H, C), (C,)
      dh      = dlogits @ W2ᵀ                               (B, H)
      dh_pre  = dh * (1 - h²)        (tanh' = 1 - tanh²)    (B, H)
      dW1     = xᵀ @ dh_pre         db1 = Σ_i dh_pre[i]     (D, H), (H,)
      dx      = dh_pre @ W1ᵀ                                (B, D)
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pytorch_basis.common import (
    add_device_argument,
    positive_float,
    positive_int,
    resolve_device,
    seed_everything,
    seed_int,
)

MLP_PARAMS = ("W1", "b1", "W2", "b2")


# --------------------------------------------------------------------------------------------- printing & errors
def section(title: str) -> None:
    """Print a lesson heading: ``== title ==``."""
    print(f"\n== {title} ==")


def capture_error(fn: Callable[[], object], expected: type[BaseException] = RuntimeError) -> str:
    """Run ``fn``, which must raise ``expected``; return ``"ErrorType: message"`` (first line only).

    If ``fn`` does *not* raise, that is a bug in the lesson, so we raise an ``AssertionError`` saying so.
    """
    try:
        fn()
    except expected as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {first_line}"
    raise AssertionError(f"expected {expected.__name__} from {getattr(fn, '__name__', fn)!r}, but nothing was raised")


def capture_warnings(fn: Callable[[], object]) -> tuple[object, list[str]]:
    """Run ``fn`` and return ``(its result, [warning messages it emitted])``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught]


def lesson_parser(description: str | None) -> argparse.ArgumentParser:
    """The parser every lesson starts from: ``--device`` (default cpu: these tensors are tiny) and ``--seed``."""
    parser = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0])
    add_device_argument(parser, default="cpu")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default: %(default)s)")
    return parser


# --------------------------------------------------------------------------------------------- a 2-layer MLP by hand
def init_mlp(
    d_in: int,
    d_hidden: int,
    n_classes: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Parameters ``{W1 (D, H), b1 (H,), W2 (H, C), b2 (C,)}`` as leaf tensors with ``requires_grad=True``.

    Weights are drawn on the CPU from ``generator`` (so every device gets the same numbers), scaled by
    ``1/sqrt(fan_in)`` so tanh does not saturate, then moved to ``device``.
    """
    if min(d_in, d_hidden, n_classes) < 1:
        raise ValueError(f"MLP sizes must be positive, got d_in={d_in}, d_hidden={d_hidden}, n_classes={n_classes}")
    shapes = {"W1": (d_in, d_hidden), "b1": (d_hidden,), "W2": (d_hidden, n_classes), "b2": (n_classes,)}
    fan_in = {"W1": d_in, "b1": d_in, "W2": d_hidden, "b2": d_hidden}
    params = {}
    for name, shape in shapes.items():
        w = torch.randn(shape, generator=generator, dtype=dtype) / fan_in[name] ** 0.5
        params[name] = w.to(device).requires_grad_()
    return params


@dataclass
class MLPCache:
    """What the forward pass keeps for the backward pass (exactly what autograd would save)."""

    x: torch.Tensor  # (B, D)
    h: torch.Tensor  # (B, H) tanh output: tanh' = 1 - h², so h is all the backward needs
    p: torch.Tensor  # (B, C) softmax probabilities
    y: torch.Tensor  # (B,) class indices


def mlp_forward(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, MLPCache]:
    """Mean cross-entropy loss of the MLP on ``(x, y)`` and the cache the manual backward needs."""
    if x.dim() != 2 or x.shape[1] != params["W1"].shape[0]:
        raise ValueError(f"x must have shape (B, {params['W1'].shape[0]}), got {tuple(x.shape)}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    h = torch.tanh(x @ params["W1"] + params["b1"])  # (B, D) @ (D, H) -> (B, H)
    logits = h @ params["W2"] + params["b2"]  # (B, H) @ (H, C) -> (B, C)
    loss = F.cross_entropy(logits, y)  # = -mean_i log softmax(logits)[i, y_i]
    return loss, MLPCache(x=x.detach(), h=h.detach(), p=logits.detach().softmax(dim=-1), y=y)


def mlp_backward(params: dict[str, torch.Tensor], cache: MLPCache) -> dict[str, torch.Tensor]:
    """The gradients ``dL/dθ`` for every parameter and ``dL/dx``, by the chain rule (see the module docstring)."""
    x, h, p, y = cache.x, cache.h, cache.p, cache.y
    B = x.shape[0]
    dlogits = (p - F.one_hot(y, p.shape[1]).to(p.dtype)) / B  # (B, C)
    with torch.no_grad():
        W1, W2 = params["W1"].detach(), params["W2"].detach()
        grads = {"W2": h.T @ dlogits, "b2": dlogits.sum(0)}  # (H, B) @ (B, C) -> (H, C)
        dh = dlogits @ W2.T  # (B, C) @ (C, H) -> (B, H)
        dh_pre = dh * (1 - h * h)  # (B, H)
        grads["W1"] = x.T @ dh_pre  # (D, B) @ (B, H) -> (D, H)
        grads["b1"] = dh_pre.sum(0)  # (H,)
        grads["x"] = dh_pre @ W1.T  # (B, H) @ (H, D) -> (B, D)
    return grads


def make_blobs(
    n: int, d_in: int, n_classes: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy classification set: ``n`` points in ``d_in`` dimensions around ``n_classes`` random centres."""
    centres = 2.0 * torch.randn(n_classes, d_in, generator=generator, dtype=dtype)
    y = torch.randint(0, n_classes, (n,), generator=generator)
    x = centres[y] + torch.randn(n, d_in, generator=generator, dtype=dtype)  # (n, D)
    return x, y


def make_mlp_problem(
    batch: int, d_in: int, d_hidden: int, n_classes: int, seed: int = 0, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Seed everything, then return ``(x (B, D), y (B,), params)`` on ``device``: the setup of lessons 4 and 11."""
    g = seed_everything(seed)
    dev = resolve_device(device)
    x, y = make_blobs(batch, d_in, n_classes, generator=g)
    params = init_mlp(d_in, d_hidden, n_classes, generator=g, device=dev)
    return x.to(dev), y.to(dev), params


def add_mlp_arguments(parser: argparse.ArgumentParser, batch: int, steps: int, lr: float = 0.5) -> None:
    """The command-line options of the MLP lessons (sizes, steps, learning rate)."""
    parser.add_argument("--batch", type=positive_int, default=batch, help="batch size B (default: %(default)s)")
    parser.add_argument("--d-in", type=positive_int, default=4, help="input features D (default: %(default)s)")
    parser.add_argument("--d-hidden", type=positive_int, default=16, help="hidden units H (default: %(default)s)")
    parser.add_argument("--n-classes", type=positive_int, default=3, help="classes C (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=steps, help="SGD steps (default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=lr, help="learning rate (default: %(default)s)")
