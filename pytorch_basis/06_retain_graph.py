"""Step 6 — ``retain_graph``: backward twice through one graph, and gradients accumulating across calls.

What this step adds: by default ``backward()`` frees the tensors the graph saved as soon as it has used them
(that is what keeps memory flat during training). A second ``backward()`` through the same graph then fails.
``backward(retain_graph=True)`` keeps them, so the graph can be walked again — useful when two losses share
one forward pass and you want to backpropagate them separately.

Every ``backward()`` *adds* into ``.grad``. For

    L1 = Σ_i x_i³        dL1/dx = 3x²

two backward passes of L1 leave 2 · 3x² in ``x.grad``. When two losses share part of the graph,

    h = x³        L1 = Σ_i h_i        L2 = Σ_i sin(h_i)        dL2/dx = cos(x³) · 3x²

``L1.backward()`` frees what the shared node ``h = x³`` saved, so ``L2.backward()`` fails;
``L1.backward(retain_graph=True); L2.backward()`` leaves 3x² + cos(x³) · 3x² in ``x.grad``, the same as one
backward of L1 + L2.

Run:  python pytorch_basis/06_retain_graph.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.autograd_utils import capture_error, lesson_parser, section
from pytorch_basis.common import positive_int, resolve_device, run_cli, seed_everything


def backward_twice(x: torch.Tensor) -> None:
    """Two ``backward()`` calls through one graph without ``retain_graph`` (raises on the second)."""
    loss = (x**3).sum()
    loss.backward()
    loss.backward()


def main(n: int = 4, device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)
    x0 = torch.randn(n, device=dev)

    section("a second backward through a freed graph")
    x = x0.clone().requires_grad_()
    second_error = capture_error(lambda: backward_twice(x))
    print(f"loss.backward(); loss.backward():\n  {second_error}")
    loss = (x0.clone().requires_grad_() ** 3).sum()
    loss.backward()
    pow_node = loss.grad_fn.next_functions[0][0]
    freed_error = capture_error(lambda: pow_node._saved_self)
    print(f"reading PowBackward0._saved_self after backward: {freed_error[:80]}...")

    section("retain_graph=True keeps the saved tensors; the gradients add up")
    x = x0.clone().requires_grad_()
    loss = (x**3).sum()
    loss.backward(retain_graph=True)
    once = x.grad.clone()
    loss.backward()  # allowed now: the graph was kept
    twice = x.grad.clone()
    print(f"3x²            = {[round(v, 4) for v in (3 * x0**2).tolist()]}")
    print(f"after 1 backward = {[round(v, 4) for v in once.tolist()]}")
    print(f"after 2 backwards = {[round(v, 4) for v in twice.tolist()]}  (= 2 x 3x²: .grad accumulates)")

    section("two losses that share part of the graph")
    x = x0.clone().requires_grad_()
    h = x**3  # shared forward work: PowBackward0 saves x
    l1, l2 = h.sum(), torch.sin(h).sum()
    l1.backward()  # frees what PowBackward0 saved ...
    shared_error = capture_error(l2.backward)  # ... which l2's backward also passes through
    print(f"L1.backward(); L2.backward():  {shared_error[:70]}...")
    x = x0.clone().requires_grad_()
    h = x**3
    l1, l2 = h.sum(), torch.sin(h).sum()
    l1.backward(retain_graph=True)  # keep the shared part alive for the second backward
    l2.backward()
    two_losses = x.grad.clone()
    x_sum = x0.clone().requires_grad_()
    h_sum = x_sum**3
    (h_sum.sum() + torch.sin(h_sum).sum()).backward()
    print(f"L1.backward(retain_graph=True); L2.backward() -> {[round(v, 4) for v in two_losses.tolist()]}")
    print(f"(L1 + L2).backward()                          -> {[round(v, 4) for v in x_sum.grad.tolist()]}")

    section("zeroing between calls")
    x.grad = None
    (x**3).sum().backward()
    print(f"after x.grad = None and a fresh forward/backward: {[round(v, 4) for v in x.grad.tolist()]} (= 3x²)")

    return {
        "x": x0.cpu(),
        "second_error": second_error,
        "freed_error": freed_error,
        "once": once.cpu(),
        "twice": twice.cpu(),
        "shared_error": shared_error,
        "two_losses": two_losses.cpu(),
        "sum_of_losses": x_sum.grad.cpu(),
        "after_zero": x.grad.cpu(),
    }


def parse_args():
    parser = lesson_parser(__doc__)
    parser.add_argument("--n", type=positive_int, default=4, help="number of elements of x")
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
