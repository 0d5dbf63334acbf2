"""Step 1 — gradient basics: ``requires_grad``, leaf tensors, ``.grad``, ``grad_fn``, ``.data`` vs ``.detach()``.

What this step adds: the vocabulary of autograd, on the smallest example there is, the sigmoid

    σ(x) = 1 / (1 + e^(-x))          σ'(x) = σ(x) (1 - σ(x))

* a tensor created by you with ``requires_grad=True`` is a *leaf*: autograd fills its ``.grad``;
* a tensor computed from it records the operation that made it in ``grad_fn`` and is not a leaf;
* ``y.backward()`` runs the chain rule backwards from ``y`` and *adds* dy/dx into ``x.grad``;
* on a vector, ``y.sum().backward()`` gives the elementwise derivative, because ∂(Σ_j σ(x_j))/∂x_i = σ'(x_i);
* ``.detach()`` and ``.data`` both give a view of the same numbers with no history (lesson 5 shows why
  ``.detach()`` is the safe one).

Run:  python pytorch_basis/01_grad_basics.py [--x 0.5]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.autograd_utils import lesson_parser, section
from pytorch_basis.common import finite_float, positive_int, resolve_device, run_cli, seed_everything


def sigmoid_derivative(x: torch.Tensor) -> torch.Tensor:
    """The analytic derivative σ'(x) = σ(x)(1 - σ(x)), elementwise."""
    s = torch.sigmoid(x)
    return s * (1 - s)


def main(x: float = 0.5, n_points: int = 7, device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)

    section("leaf tensors and requires_grad")
    a = torch.tensor(x, requires_grad=True, device=dev)  # a leaf: made by us, not by an operation
    c = torch.tensor(3.0, device=dev)  # a constant: autograd ignores it
    print(f"a = {a.item():.4f}  requires_grad={a.requires_grad}  is_leaf={a.is_leaf}  grad_fn={a.grad_fn}")
    print(f"c = {c.item():.4f}  requires_grad={c.requires_grad}  is_leaf={c.is_leaf}  (no history needed)")

    section("the derivative of sigmoid at one point")
    y = torch.sigmoid(a)
    print(f"y = sigmoid(a) = {y.item():.6f}  is_leaf={y.is_leaf}  grad_fn={type(y.grad_fn).__name__}")
    print(f"before backward: a.grad = {a.grad}")
    y.backward()  # dy/da, written into a.grad
    analytic = sigmoid_derivative(a.detach())
    print(f"after  backward: a.grad = {a.grad.item():.6f}   analytic s(1-s) = {analytic.item():.6f}")
    point_grad = a.grad.clone()

    section("elementwise: the derivative at many points at once")
    xs = torch.linspace(-3, 3, n_points, device=dev, requires_grad=True)  # (N,)
    ys = torch.sigmoid(xs)  # (N,)
    # backward() needs a scalar: sum the outputs. Output j depends only on input j, so d(sum)/dx_i = σ'(x_i).
    ys.sum().backward()
    for xi, gi, ai in zip(xs.tolist(), xs.grad.tolist(), sigmoid_derivative(xs.detach()).tolist()):
        print(f"  x={xi:+.2f}   autograd {gi:.6f}   analytic {ai:.6f}")

    section("gradients accumulate into .grad")
    a2 = torch.tensor(x, requires_grad=True, device=dev)
    torch.sigmoid(a2).backward()
    torch.sigmoid(a2).backward()  # a second, new graph: the result is *added* to a2.grad
    print(f"two backward calls: a2.grad = {a2.grad.item():.6f} = 2 x {point_grad.item():.6f}")
    accumulated = a2.grad.clone()
    a2.grad = None  # what optimizer.zero_grad() does (set_to_none=True is its default)

    section(".data vs .detach()")
    d = y.detach()
    dd = y.data
    print(
        f"y.detach(): requires_grad={d.requires_grad} is_leaf={d.is_leaf} shares storage with y: "
        f"{d.data_ptr() == y.data_ptr()}"
    )
    print(
        f"y.data    : requires_grad={dd.requires_grad} is_leaf={dd.is_leaf} shares storage with y: "
        f"{dd.data_ptr() == y.data_ptr()}"
    )
    print("Both cut the history; .detach() still tells autograd about in-place changes, .data does not (lesson 5).")

    return {
        "x": x,
        "y": y.detach(),
        "point_grad": point_grad,
        "xs": xs.detach(),
        "xs_grad": xs.grad.clone(),
        "accumulated_grad": accumulated,
        "leaf_flags": {"a": a.is_leaf, "c": c.is_leaf, "y": y.is_leaf},
        "grad_fn_name": type(y.grad_fn).__name__,
        "detach_shares_storage": d.data_ptr() == y.data_ptr(),
        "detach_requires_grad": d.requires_grad,
        "data_requires_grad": dd.requires_grad,
    }


def parse_args():
    parser = lesson_parser(__doc__)
    parser.add_argument("--x", type=finite_float, default=0.5, help="the point at which to differentiate sigmoid")
    parser.add_argument("--n-points", type=positive_int, default=7, help="points for the elementwise derivative")
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
