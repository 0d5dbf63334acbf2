"""Step 9 — a custom ``torch.autograd.Function`` with its own backward, verified with ``gradcheck`` in float64.

What this step adds: writing a backward yourself (what you do for a fused kernel, e.g. the Triton flash
attention of chapter 4) and proving it right. A ``Function`` has a ``forward`` that saves what it needs with
``ctx.save_for_backward`` and a ``backward`` that turns dL/d(output) into dL/d(input) for every input:

* SiLU (swish):  y = x σ(x)            dy/dx = σ(x) (1 + x (1 - σ(x)))
* linear layer:  Y = X Wᵀ + b          dX = dY W      dW = dYᵀ X      db = Σ_rows dY
  (``ctx.needs_input_grad`` lets backward skip gradients nobody asked for)

``torch.autograd.gradcheck`` compares the Jacobian your backward implies with central finite differences
(f(x + ε) - f(x - ε)) / 2ε. It needs float64: in float32 the rounding error of f (~1e-7 relative) divided
by ε = 1e-6 swamps the derivative, so even a correct backward fails. A backward with a bug (here: the
``x (1 - σ)`` term left out) fails with "Jacobian mismatch". ``gradgradcheck`` does the same for the
backward of the backward (our SiLU backward is written with differentiable ops, so it passes).

Run:  python pytorch_basis/09_gradcheck_and_custom_function.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
from torch.autograd import Function, gradcheck, gradgradcheck

from pytorch_basis.autograd_utils import capture_error, capture_warnings, lesson_parser, section
from pytorch_basis.common import positive_int, resolve_device, run_cli, seed_everything


class SiLUFunction(Function):
    """y = x σ(x), with the hand-written derivative σ(x)(1 + x(1 - σ(x)))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad_out * s * (1 + x * (1 - s))


class BuggySiLUFunction(SiLUFunction):
    """The same forward with a wrong backward (the x(1 - σ) term is missing): gradcheck must catch it."""

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_out * torch.sigmoid(x)


class LinearFunction(Function):
    """Y = X Wᵀ + b for X (N, I), W (O, I), b (O,), with the backward written out."""

    @staticmethod
    def forward(ctx, X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(X, W)
        return X @ W.T + b  # (N, I) @ (I, O) -> (N, O)

    @staticmethod
    def backward(ctx, dY: torch.Tensor):
        X, W = ctx.saved_tensors
        dX = dW = db = None
        if ctx.needs_input_grad[0]:
            dX = dY @ W  # (N, O) @ (O, I) -> (N, I)
        if ctx.needs_input_grad[1]:
            dW = dY.T @ X  # (O, N) @ (N, I) -> (O, I)
        if ctx.needs_input_grad[2]:
            db = dY.sum(0)  # (O,)
        return dX, dW, db


silu = SiLUFunction.apply
buggy_silu = BuggySiLUFunction.apply
linear = LinearFunction.apply


def main(n: int = 6, device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)
    if dev.type == "mps":  # MPS has no float64
        print("MPS has no float64; gradcheck runs on the CPU")
        dev = torch.device("cpu")

    section("a custom Function: SiLU with its own backward")
    x = torch.randn(n, dtype=torch.float64, device=dev, requires_grad=True)
    y = silu(x)
    print(f"y.grad_fn = {type(y.grad_fn).__name__}  (our backward is a node of the graph like any other)")
    (g_custom,) = torch.autograd.grad(y.sum(), x)
    (g_builtin,) = torch.autograd.grad(torch.nn.functional.silu(x).sum(), x)
    print(f"max |our backward - F.silu's| = {(g_custom - g_builtin).abs().max():.2e}")

    section("gradcheck in float64")
    silu_ok = gradcheck(silu, (x,))
    silu_gradgrad_ok = gradgradcheck(silu, (x,))
    X = torch.randn(4, 3, dtype=torch.float64, device=dev, requires_grad=True)
    W = torch.randn(2, 3, dtype=torch.float64, device=dev, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=dev, requires_grad=True)
    linear_ok = gradcheck(linear, (X, W, b))
    print(f"gradcheck(SiLU) = {silu_ok}   gradgradcheck(SiLU) = {silu_gradgrad_ok}   gradcheck(Linear) = {linear_ok}")

    section("gradcheck catches a wrong backward")
    buggy_error = capture_error(lambda: gradcheck(buggy_silu, (x,)))
    print(f"gradcheck(BuggySiLU): {buggy_error}")

    section("why float64: the same check on a correct function in float32")
    x32 = x.detach().float().requires_grad_()
    ok32, warns = capture_warnings(lambda: gradcheck(silu, (x32,), raise_exception=False))
    print(f"gradcheck(SiLU, float32) = {ok32}")
    for w in warns:
        print(f"  warning: {w.strip()[:100]}...")

    return {
        "x": x.detach().cpu(),
        "custom_grad": g_custom.cpu(),
        "builtin_grad": g_builtin.cpu(),
        "silu_ok": silu_ok,
        "silu_gradgrad_ok": silu_gradgrad_ok,
        "linear_ok": linear_ok,
        "buggy_error": buggy_error,
        "float32_ok": ok32,
        "float32_warnings": warns,
    }


def parse_args():
    parser = lesson_parser(__doc__)
    parser.add_argument("--n", type=positive_int, default=6, help="number of inputs to check")
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
