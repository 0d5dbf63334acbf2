"""Step 2 — partial derivatives of a function of several variables, checked against the formula.

What this step adds: several leaves at once. One ``backward()`` fills the ``.grad`` of *every* leaf with its
partial derivative. The function is

    f(x, y, z) = x² y + sin(y z) + e^(x z)

with the partial derivatives (worked out by hand)

    ∂f/∂x = 2 x y + z e^(x z)
    ∂f/∂y = x² + z cos(y z)
    ∂f/∂z = y cos(y z) + x e^(x z)

We get them three ways: ``backward()`` into ``.grad``, ``torch.autograd.grad`` (returns them instead of storing
them), and a central finite difference  (f(v + h e_i) - f(v - h e_i)) / 2h  as an autograd-free check.

Run:  python pytorch_basis/02_partial_derivatives.py [--x 0.5 --y -1.0 --z 2.0]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.autograd_utils import lesson_parser, section
from pytorch_basis.common import finite_float, resolve_device, run_cli, seed_everything


def f(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """f(x, y, z) = x² y + sin(y z) + e^(x z) (works elementwise on tensors of the same shape)."""
    return x**2 * y + torch.sin(y * z) + torch.exp(x * z)


def analytic_partials(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(∂f/∂x, ∂f/∂y, ∂f/∂z) from the formulas in the module docstring."""
    dfdx = 2 * x * y + z * torch.exp(x * z)
    dfdy = x**2 + z * torch.cos(y * z)
    dfdz = y * torch.cos(y * z) + x * torch.exp(x * z)
    return dfdx, dfdy, dfdz


def finite_difference(point: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of f at ``point = (x, y, z)`` in float64 — no autograd involved."""
    point = point.detach().double()
    grads = torch.empty(3, dtype=torch.float64)
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = h
        grads[i] = (f(*(point + e)) - f(*(point - e))) / (2 * h)
    return grads


def main(x: float = 0.5, y: float = -1.0, z: float = 2.0, device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)

    section("one backward fills every leaf's .grad")
    xt, yt, zt = (torch.tensor(v, requires_grad=True, device=dev) for v in (x, y, z))
    out = f(xt, yt, zt)
    out.backward()
    by_backward = torch.stack([xt.grad, yt.grad, zt.grad]).cpu()
    analytic = torch.stack(analytic_partials(*(t.detach() for t in (xt, yt, zt)))).cpu()
    print(f"f({x}, {y}, {z}) = {out.item():.6f}")
    for name, g, a in zip("xyz", by_backward.tolist(), analytic.tolist()):
        print(f"  ∂f/∂{name}: autograd {g:+.6f}   formula {a:+.6f}")

    section("torch.autograd.grad returns the partials instead of storing them")
    xt2, yt2, zt2 = (torch.tensor(v, requires_grad=True, device=dev) for v in (x, y, z))
    by_grad = torch.stack(torch.autograd.grad(f(xt2, yt2, zt2), (xt2, yt2, zt2))).cpu()
    print(f"  autograd.grad: {[round(v, 6) for v in by_grad.tolist()]}   (.grad left untouched: {xt2.grad})")

    section("finite differences (no autograd) agree")
    fd = finite_difference(torch.tensor([x, y, z]))
    print(f"  central difference: {[round(v, 6) for v in fd.tolist()]}")

    section("the same partials at many points at once")
    pts = torch.randn(5, 3, device=dev)  # 5 points (x, y, z)
    xs, ys, zs = (pts[:, i].clone().requires_grad_() for i in range(3))  # each (5,)
    f(xs, ys, zs).sum().backward()  # points are independent, so summing keeps each point's partials apart
    batch_grads = torch.stack([xs.grad, ys.grad, zs.grad], dim=1).cpu()  # (5, 3)
    batch_analytic = torch.stack(analytic_partials(*pts.unbind(dim=1)), dim=1).cpu()  # (5, 3)
    err = (batch_grads - batch_analytic).abs().max().item()
    print(f"  5 points, max |autograd - formula| = {err:.2e}")

    return {
        "point": torch.tensor([x, y, z]),
        "value": out.detach().cpu(),
        "by_backward": by_backward,
        "by_grad": by_grad,
        "analytic": analytic,
        "finite_difference": fd,
        "batch_points": pts.cpu(),
        "batch_grads": batch_grads,
    }


def parse_args():
    parser = lesson_parser(__doc__)
    parser.add_argument("--x", type=finite_float, default=0.5)
    parser.add_argument("--y", type=finite_float, default=-1.0)
    parser.add_argument("--z", type=finite_float, default=2.0)
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
