"""Step 5 — in-place operations: the leaf error, the version counter, and why ``.data`` is dangerous.

What this step adds: the rules autograd enforces when a tensor is changed in place (``add_``, ``mul_``,
``x[0] = ...``, ``+=``).

1. A leaf that requires grad cannot be changed in place while autograd is recording: the change would not
   be part of any graph. Optimizers update parameters inside ``torch.no_grad()``, which is allowed.
2. Every tensor carries a version counter ``_version`` that each in-place op increments. A backward node
   remembers the version of every tensor it saved; if the version has changed by the time backward runs,
   the saved value is stale and backward raises instead of returning a wrong gradient. Example:

       b = 2a      c = b²   (PowBackward0 saves b at version 0: dc/db = 2b)      b.mul_(3)  → error

3. ``.detach()`` shares the storage *and* the version counter, so an in-place change through it is caught.
   ``.data`` shares the storage but not the counter: the same change goes unnoticed and backward silently
   returns a wrong gradient. With y = σ(x), ``SigmoidBackward0`` saves y and computes dy/dx = y (1 - y):

       y.data.zero_()    → backward uses y = 0 → gradient 0 (wrong; the true value is σ(x)(1 - σ(x)))
       y.detach().zero_() → RuntimeError (... modified by an inplace operation ...)

Run:  python pytorch_basis/05_inplace_and_version_counter.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.autograd_utils import capture_error, lesson_parser, section
from pytorch_basis.common import resolve_device, run_cli, seed_everything


def leaf_inplace(w: torch.Tensor) -> None:
    """The in-place update of a leaf that requires grad, outside ``no_grad`` (raises)."""
    w.add_(1.0)


def stale_saved_tensor(a: torch.Tensor) -> torch.Tensor:
    """Modify a tensor that a backward node saved, then run backward (raises)."""
    b = 2 * a
    c = b**2  # PowBackward0 saves b (dc/db = 2b) at version 0
    b.mul_(3)  # b is now version 1
    c.sum().backward()
    return a.grad


def sigmoid_grad_after_data_zero(x: torch.Tensor) -> torch.Tensor:
    """Zero σ(x) through ``.data`` before backward: no error, but the gradient is silently wrong."""
    y = torch.sigmoid(x)
    y.data.zero_()  # autograd does not see this change
    y.sum().backward()
    return x.grad


def sigmoid_grad_after_detach_zero(x: torch.Tensor) -> torch.Tensor:
    """The same change through ``.detach()``: the version counter catches it (raises)."""
    y = torch.sigmoid(x)
    y.detach().zero_()
    y.sum().backward()
    return x.grad


def main(device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)

    section("1. a leaf that requires grad cannot be changed in place")
    w = torch.ones(3, device=dev, requires_grad=True)
    leaf_error = capture_error(lambda: leaf_inplace(w))
    print(f"w.add_(1):            {leaf_error}")
    with torch.no_grad():
        w.add_(1.0)  # what optimizer.step() does
    print(f"under torch.no_grad(): allowed, w = {w.tolist()}  (w._version = {w._version})")

    section("2. the version counter")
    t = torch.zeros(2, device=dev)
    versions = [t._version]
    t.add_(1)
    versions.append(t._version)
    t[0] = 5.0
    versions.append(t._version)
    t += 1
    versions.append(t._version)
    _ = t + 1  # out of place: no new version
    versions.append(t._version)
    print(f"_version after: creation, add_, t[0]=5, t+=1, t+1  ->  {versions}")
    a = torch.tensor([1.0, 2.0], device=dev, requires_grad=True)
    version_error = capture_error(lambda: stale_saved_tensor(a))
    print(f"b = 2a; c = b**2; b.mul_(3); c.backward():\n  {version_error}")

    section("3. .data hides in-place changes from autograd; .detach() does not")
    x0 = torch.tensor([-1.0, 0.5, 2.0], device=dev)
    s = torch.sigmoid(x0)
    true_grad = s * (1 - s)
    x = x0.clone().requires_grad_()
    wrong_grad = sigmoid_grad_after_data_zero(x).clone()
    print(f"true dσ/dx        = {[round(v, 5) for v in true_grad.tolist()]}")
    print(f"after y.data.zero_ = {[round(v, 5) for v in wrong_grad.tolist()]}   <- silently wrong, no error")
    x = x0.clone().requires_grad_()
    detach_error = capture_error(lambda: sigmoid_grad_after_detach_zero(x))
    print(f"after y.detach().zero_(): {detach_error}")
    print("Rule: use .detach() (or torch.no_grad()), never .data, when you touch values autograd may need.")

    return {
        "leaf_error": leaf_error,
        "w_after_no_grad": w.detach().cpu(),
        "versions": versions,
        "version_error": version_error,
        "x": x0.cpu(),
        "true_grad": true_grad.cpu(),
        "data_grad": wrong_grad.cpu(),
        "detach_error": detach_error,
    }


def parse_args():
    return lesson_parser(__doc__).parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
