"""Step 10: derivatives, gradients, Jacobians — and what autograd actually computes.

* A scalar function of a scalar has a derivative f'(x).
* A scalar function of a vector, L(x) with x ∈ R^n, has a gradient ∇L ∈ R^n: ∂L/∂x_i for every i.
* A vector function y = f(x), R^n -> R^m, has a Jacobian J ∈ R^{m×n}, J_ij = ∂y_i/∂x_j.

Example used here: y = tanh(z), z = W x + b, whose Jacobian is J = diag(1 - y²) W (chain rule:
∂y_i/∂x_j = tanh'(z_i) · W_ij).

Training ends in a scalar loss L, and for each intermediate y autograd only ever carries g = ∂L/∂y (the
"upstream gradient", same shape as y). Backward through y = f(x) produces

    ∂L/∂x = Jᵀ g     (a vector-Jacobian product, VJP: gᵀ J written as a column)

without forming J: for tanh it is (1 - y²) ∘ g then Wᵀ(·). That is why ``y.backward(g)`` needs g, and why a
backward costs about as much as the forward even when J would be huge (an N × N attention matrix has an
N² × N² Jacobian). The full J can be recovered with m VJPs against one-hot vectors — one row each — which is
what ``torch.autograd.functional.jacobian`` does. A chain x -> y -> z multiplies VJPs right to left:
gᵀ J_z J_y = (gᵀ J_z) J_y, always vector × matrix, never matrix × matrix.

Run:  python triton_flash_attention_scratch/10_jacobians_and_autograd.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch
from torch.autograd.functional import jacobian

from pytorch_basis.common import positive_int, seed_everything, seed_int


def layer(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y = tanh(W x + b)."""
    return torch.tanh(w @ x + b)


def layer_jacobian(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """J = diag(1 - y²) W, shape (m, n), derived by hand."""
    y = layer(x, w, b)
    return (1 - y**2)[:, None] * w


def layer_vjp(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Jᵀ g = Wᵀ ((1 - y²) ∘ g) without forming J."""
    y = layer(x, w, b)
    return w.T @ ((1 - y**2) * g)


def main(n: int = 5, m: int = 3, seed: int = 0) -> dict:
    seed_everything(seed)
    dt = torch.float64
    x, w, b = torch.randn(n, dtype=dt), torch.randn(m, n, dtype=dt), torch.randn(m, dtype=dt)

    # derivative of a scalar function, by finite differences vs autograd: f(t) = t³ sin t
    t = torch.tensor(1.3, dtype=dt, requires_grad=True)
    (t**3 * torch.sin(t)).backward()
    h = 1e-6
    f = lambda s: s**3 * torch.sin(s)
    fd = (f(t.detach() + h) - f(t.detach() - h)) / (2 * h)
    exact = 3 * t.detach() ** 2 * torch.sin(t.detach()) + t.detach() ** 3 * torch.cos(t.detach())
    print(
        f"f(t) = t³ sin t at t=1.3: autograd {t.grad.item():.8f}, by hand {exact.item():.8f}, "
        f"finite difference {fd.item():.8f}"
    )

    j_hand = layer_jacobian(x, w, b)
    j_torch = jacobian(lambda xx: layer(xx, w, b), x)
    print(
        f"Jacobian of y = tanh(Wx + b), shape {tuple(j_hand.shape)} (m × n): "
        f"max |by hand - autograd.functional.jacobian| = {(j_hand - j_torch).abs().max().item():.1e}"
    )

    g = torch.randn(m, dtype=dt)  # upstream gradient ∂L/∂y
    xr = x.clone().requires_grad_()
    layer(xr, w, b).backward(g)  # autograd: x.grad = Jᵀ g
    vjp_err = (xr.grad - j_torch.T @ g).abs().max().item()
    vjp_hand_err = (layer_vjp(x, w, b, g) - xr.grad).abs().max().item()
    print(f"y.backward(g) leaves x.grad = Jᵀ g: max error {vjp_err:.1e}; VJP by hand without J: {vjp_hand_err:.1e}")

    # J row by row from m VJPs with one-hot upstream gradients
    rows = []
    for i in range(m):
        xr = x.clone().requires_grad_()
        (gi,) = torch.autograd.grad(layer(xr, w, b), xr, torch.eye(m, dtype=dt)[i])
        rows.append(gi)
    rows_err = (torch.stack(rows) - j_torch).abs().max().item()
    print(f"J rebuilt from {m} one-hot VJPs: max error {rows_err:.1e}")

    # chain rule: z = layer2(y), J_total = J_z J_y, and backward computes (gᵀ J_z) J_y
    w2, b2 = torch.randn(2, m, dtype=dt), torch.randn(2, dtype=dt)
    y = layer(x, w, b)
    j_total = layer_jacobian(y, w2, b2) @ layer_jacobian(x, w, b)
    g2 = torch.randn(2, dtype=dt)
    xr = x.clone().requires_grad_()
    layer(layer(xr, w, b), w2, b2).backward(g2)
    chain_err = (xr.grad - j_total.T @ g2).abs().max().item()
    print(f"chain x -> y -> z: x.grad = (g J_z) J_y, max error vs the product of Jacobians {chain_err:.1e}")
    return {
        "scalar_grad": t.grad.item(),
        "scalar_exact": exact.item(),
        "scalar_fd": fd.item(),
        "jacobian_error": (j_hand - j_torch).abs().max().item(),
        "vjp_error": vjp_err,
        "vjp_hand_error": vjp_hand_err,
        "rows_error": rows_err,
        "chain_error": chain_err,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=5, help="input size")
    parser.add_argument("--m", type=positive_int, default=3, help="output size")
    parser.add_argument("--seed", type=seed_int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
