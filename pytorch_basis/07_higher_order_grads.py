"""Step 7 — beyond the seed: second derivatives with ``torch.autograd.grad(..., create_graph=True)``.

What this step adds: differentiating a derivative. Normally the backward pass is not itself recorded, so the
gradient it returns is a plain tensor with no ``grad_fn``. With ``create_graph=True`` autograd records the
backward computation too, and the gradient can be differentiated again:

    f(x) = x³          f'(x) = 3x²          f''(x) = 6x          f'''(x) = 6
    σ'(x) = σ(1 - σ)   σ''(x) = σ(1 - σ)(1 - 2σ)

For a function of a vector the same trick gives a Hessian-vector product without forming the Hessian
(Pearlmutter's trick): with g(w) = ∇f(w),

    H v = ∇_w (g(w) · v)

Here f(w) = logsumexp(w) = log Σ_i e^(w_i): ∇f = softmax(w) = p and H = diag(p) - p pᵀ (lesson 8 derives it).

Run:  python pytorch_basis/07_higher_order_grads.py [--x 1.5]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.autograd_utils import capture_error, lesson_parser, section
from pytorch_basis.common import finite_float, positive_int, resolve_device, run_cli, seed_everything


def nth_derivatives(fn, x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """[f'(x), f''(x), ..., f⁽ⁿ⁾(x)] for elementwise ``fn``, by differentiating with ``create_graph=True``."""
    x = x.detach().requires_grad_()
    out = fn(x)
    derivatives = []
    for _ in range(n):
        # sum(): each output depends only on its own input, so this is the elementwise derivative
        (out,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        derivatives.append(out.detach())
    return derivatives


def hessian_vector_product(fn, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v = ∇_w (∇f(w) · v): two backward passes, the Hessian is never formed."""
    w = w.detach().requires_grad_()
    (g,) = torch.autograd.grad(fn(w), w, create_graph=True)  # g = ∇f(w), itself differentiable
    (hv,) = torch.autograd.grad(g @ v, w)  # (D,) · (D,) -> scalar, then its gradient
    return hv


def main(x: float = 1.5, dim: int = 5, device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)

    section("f(x) = x³: first, second and third derivatives")
    xt = torch.tensor([x], device=dev)
    d1, d2, d3 = nth_derivatives(lambda t: t**3, xt, 3)
    print(
        f"x = {x}:  f' = {d1.item():.4f} (3x² = {3 * x**2:.4f})   f'' = {d2.item():.4f} (6x = {6 * x:.4f})   "
        f"f''' = {d3.item():.4f} (6)"
    )

    section("without create_graph the gradient is a dead end")
    xg = torch.tensor(x, device=dev, requires_grad=True)
    (g,) = torch.autograd.grad(xg**3, xg)
    print(f"grad without create_graph: requires_grad={g.requires_grad}, grad_fn={g.grad_fn}")
    no_graph_error = capture_error(lambda: torch.autograd.grad(g, xg))
    print(f"differentiating it again: {no_graph_error}")

    section("sigmoid: σ'' elementwise")
    xs = torch.linspace(-4, 4, 9, device=dev)
    s1, s2 = nth_derivatives(torch.sigmoid, xs, 2)
    s = torch.sigmoid(xs)
    s2_formula = s * (1 - s) * (1 - 2 * s)
    print(f"max |σ'' autograd - σ(1-σ)(1-2σ)| = {(s2 - s2_formula).abs().max().item():.2e}")

    section("Hessian-vector product of logsumexp by double backward")
    w = torch.randn(dim, device=dev)
    v = torch.randn(dim, device=dev)
    hv = hessian_vector_product(lambda t: torch.logsumexp(t, dim=0), w, v)
    p = torch.softmax(w, dim=0)
    hv_formula = p * v - p * (p @ v)  # (diag(p) - p pᵀ) v
    print(f"H v (double backward)      = {[round(t, 5) for t in hv.tolist()]}")
    print(f"(diag(p) - p pᵀ) v (formula) = {[round(t, 5) for t in hv_formula.tolist()]}")

    return {
        "x": x,
        "cube_derivatives": [d1.cpu(), d2.cpu(), d3.cpu()],
        "no_graph_error": no_graph_error,
        "xs": xs.cpu(),
        "sigmoid_d1": s1.cpu(),
        "sigmoid_d2": s2.cpu(),
        "w": w.cpu(),
        "v": v.cpu(),
        "hvp": hv.cpu(),
    }


def parse_args():
    parser = lesson_parser(__doc__)
    parser.add_argument("--x", type=finite_float, default=1.5, help="the point for the derivatives of x^3")
    parser.add_argument("--dim", type=positive_int, default=5, help="size of w for the Hessian-vector product")
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
