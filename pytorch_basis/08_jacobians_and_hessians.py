"""Step 8 — Jacobians, Hessians and per-sample gradients: ``torch.autograd.functional`` and ``torch.func``.

What this step adds: whole derivative matrices, and gradients for every example of a batch at once.

* The Jacobian of v = g(w): R^D → R^M is the (M, D) matrix J[i, j] = ∂v_i/∂w_j. ``backward(gradient=u)``
  gives one row combination uᵀ J (lesson 3), so M backward passes with u = e_1 … e_M give J row by row.
  ``torch.autograd.functional.jacobian`` and ``torch.func.jacrev`` (reverse mode) / ``jacfwd`` (forward mode)
  do it for you. For v = tanh(A w):  J = diag(1 - v²) A.
* The softmax Jacobian. With p = softmax(z), p_i = e^(z_i) / Σ_k e^(z_k):

      ∂p_i/∂z_j = p_i (δ_ij - p_j)        J = diag(p) - p pᵀ

  Every row sums to 0 (the p_i always sum to 1). It is also the Hessian of logsumexp(z), whose gradient is p.
* Per-sample gradients. A batch loss gives one gradient for the sum; ``torch.func.vmap(torch.func.grad(...))``
  gives the gradient of each example's loss, without a Python loop. For a linear model ŷ = xᵀw + b with
  ℓ = ½ (ŷ - y)²:  ∇_w ℓ = (ŷ - y) x,  ∇_b ℓ = ŷ - y.

Run:  python pytorch_basis/08_jacobians_and_hessians.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

from pytorch_basis.autograd_utils import lesson_parser, section
from pytorch_basis.common import positive_int, resolve_device, run_cli, seed_everything


def jacobian_by_rows(fn, w: torch.Tensor) -> torch.Tensor:
    """J of a vector function, one backward pass per output: row i is e_iᵀ J."""
    w = w.detach().requires_grad_()
    v = fn(w)  # (M,)
    rows = []
    for i in range(v.numel()):
        e = torch.zeros_like(v)
        e[i] = 1.0
        (row,) = torch.autograd.grad(v, w, grad_outputs=e, retain_graph=True)  # e_iᵀ J, shape (D,)
        rows.append(row)
    return torch.stack(rows)  # (M, D)


def softmax_jacobian(z: torch.Tensor) -> torch.Tensor:
    """diag(p) - p pᵀ for p = softmax(z) (one vector z of shape (C,))."""
    p = torch.softmax(z, dim=-1)
    return torch.diag(p) - torch.outer(p, p)  # (C, C)


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇_θ ℓ(x_i, y_i) for every example i, with ``vmap(grad(...))`` over the batch dimension."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        pred = functional_call(model, p, (xi.unsqueeze(0),))  # (1, D) -> (1, 1)
        return 0.5 * (pred.squeeze() - yi) ** 2

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)  # each value: (B, *param.shape)


def per_sample_grads_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same, one backward pass per example (slow, obvious)."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k, _ in model.named_parameters()}
    for xi, yi in zip(x, y):
        model.zero_grad()
        (0.5 * (model(xi.unsqueeze(0)).squeeze() - yi) ** 2).backward()
        for k, p in model.named_parameters():
            out[k].append(p.grad.clone())
    return {k: torch.stack(v) for k, v in out.items()}


def main(dim: int = 3, n_out: int = 4, n_classes: int = 5, batch: int = 8, device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)

    section("the Jacobian of v = tanh(A w), four ways")
    A = torch.randn(n_out, dim, device=dev)
    w = torch.randn(dim, device=dev)
    fn = lambda t: torch.tanh(A @ t)  # (M, D) @ (D,) -> (M,)
    J_rows = jacobian_by_rows(fn, w)
    J_functional = jacobian(fn, w)
    J_rev, J_fwd = jacrev(fn)(w), jacfwd(fn)(w)
    J_formula = (1 - fn(w) ** 2)[:, None] * A  # diag(1 - v²) A
    for name, J in (
        ("rows of backward", J_rows),
        ("autograd.functional", J_functional),
        ("func.jacrev", J_rev),
        ("func.jacfwd", J_fwd),
    ):
        print(f"  {name:<20} shape {tuple(J.shape)}  max |J - diag(1-v²)A| = {(J - J_formula).abs().max():.2e}")

    section("the softmax Jacobian diag(p) - p pᵀ")
    z = torch.randn(n_classes, device=dev)
    J_softmax = jacobian(lambda t: torch.softmax(t, dim=-1), z)
    J_softmax_formula = softmax_jacobian(z)
    print(f"max |autograd - formula| = {(J_softmax - J_softmax_formula).abs().max():.2e}")
    print(f"row sums (should be 0): {[round(r, 7) for r in J_softmax.sum(1).tolist()]}")

    section("Hessian of logsumexp = softmax Jacobian")
    lse = lambda t: torch.logsumexp(t, dim=-1)
    H_functional = hessian(lse, z)
    H_func = torch.func.hessian(lse)(z)  # jacfwd(jacrev(f))
    print(f"autograd.functional.hessian vs formula: {(H_functional - J_softmax_formula).abs().max():.2e}")
    print(f"torch.func.hessian           vs formula: {(H_func - J_softmax_formula).abs().max():.2e}")

    section("per-sample gradients with vmap(grad(...))")
    model = nn.Linear(dim, 1).to(dev)
    x = torch.randn(batch, dim, device=dev)
    y = torch.randn(batch, device=dev)
    ps_vmap = per_sample_grads(model, x, y)
    ps_loop = per_sample_grads_loop(model, x, y)
    for k in ps_vmap:
        diff = (ps_vmap[k] - ps_loop[k]).abs().max().item()
        print(f"  {k:<6} per-sample shape {tuple(ps_vmap[k].shape)}  max |vmap - loop| = {diff:.2e}")
    batch_grad = torch.autograd.grad((0.5 * (model(x).squeeze(1) - y) ** 2).sum(), model.weight)[
        0
    ]  # the batch gradient is the sum of the per-sample ones
    print(f"sum of per-sample weight grads = batch grad: {torch.allclose(ps_vmap['weight'].sum(0), batch_grad)}")

    return {
        "A": A.cpu(),
        "w": w.cpu(),
        "J_rows": J_rows.cpu(),
        "J_functional": J_functional.cpu(),
        "J_rev": J_rev.cpu(),
        "J_fwd": J_fwd.cpu(),
        "z": z.cpu(),
        "J_softmax": J_softmax.cpu(),
        "J_softmax_formula": J_softmax_formula.cpu(),
        "H_functional": H_functional.cpu(),
        "H_func": H_func.cpu(),
        "model": model.cpu(),
        "x": x.cpu(),
        "y": y.cpu(),
        "per_sample": {k: v.cpu() for k, v in ps_vmap.items()},
        "per_sample_loop": {k: v.cpu() for k, v in ps_loop.items()},
        "batch_grad": batch_grad.cpu(),
    }


def parse_args():
    parser = lesson_parser(__doc__)
    parser.add_argument("--dim", type=positive_int, default=3, help="input size D")
    parser.add_argument("--n-out", type=positive_int, default=4, help="output size M of tanh(A w)")
    parser.add_argument("--n-classes", type=positive_int, default=5, help="size of the softmax")
    parser.add_argument("--batch", type=positive_int, default=8, help="examples for the per-sample gradients")
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
