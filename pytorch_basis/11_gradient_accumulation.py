"""Step 11 — gradient accumulation: micro-batches that add up to exactly one large batch.

What this step adds: training with a batch too big for memory. Because ``.grad`` accumulates (lessons 1 and 6),
K backward passes over K micro-batches sum their gradients. With the mean loss over the whole batch of N

    L = 1/N Σ_i ℓ_i = Σ_k (n_k / N) · L_k          L_k = 1/n_k Σ_{i in micro-batch k} ℓ_i

so scaling each micro-batch's mean loss by n_k / N (= 1/K when all micro-batches have the same size) before
``backward()`` leaves exactly ∇L in ``.grad``, and one ``optimizer.step()`` after the K backwards is the same
update as one step on the large batch. Two classic mistakes, shown below:

* no scaling: the gradient is K times too large (like multiplying the learning rate by K);
* scaling by 1/K with *unequal* micro-batches (the last one shorter): examples in the short micro-batch
  count more than the others.

The model is the 2-layer MLP of ``autograd_utils`` (as in lesson 4).

Run:  python pytorch_basis/11_gradient_accumulation.py [--batch 24 --micro-batch 8]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.autograd_utils import (
    MLP_PARAMS,
    add_mlp_arguments,
    lesson_parser,
    make_mlp_problem,
    mlp_forward,
    section,
)
from pytorch_basis.common import positive_int, run_cli


def accumulated_grads(
    params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, micro_batch: int, scaling: str = "n_k/N"
) -> dict[str, torch.Tensor]:
    """Sum of the micro-batch gradients in ``.grad``.

    ``scaling``: ``"n_k/N"`` (correct for any sizes), ``"1/K"`` (correct only for equal sizes) or ``"none"``.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    if scaling not in ("n_k/N", "1/K", "none"):
        raise ValueError(f"unknown scaling {scaling!r}; choose n_k/N, 1/K or none")
    for p in params.values():
        p.grad = None
    N = x.shape[0]
    chunks = list(zip(x.split(micro_batch), y.split(micro_batch)))  # K micro-batches of n_k <= micro_batch
    for xk, yk in chunks:
        loss_k, _ = mlp_forward(params, xk, yk)  # mean over the n_k examples of this micro-batch
        scale = {"n_k/N": xk.shape[0] / N, "1/K": 1 / len(chunks), "none": 1.0}[scaling]
        (loss_k * scale).backward()  # adds into .grad
    return {name: params[name].grad.clone() for name in MLP_PARAMS}


def full_batch_grads(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇L of the mean loss over the whole batch, in one backward pass."""
    for p in params.values():
        p.grad = None
    mlp_forward(params, x, y)[0].backward()
    return {name: params[name].grad.clone() for name in MLP_PARAMS}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main(
    batch: int = 24,
    micro_batch: int = 8,
    d_in: int = 4,
    d_hidden: int = 16,
    n_classes: int = 3,
    lr: float = 0.5,
    steps: int = 5,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    x, y, params = make_mlp_problem(batch, d_in, d_hidden, n_classes, seed=seed, device=device)
    start = {k: v.detach().clone() for k, v in params.items()}

    section(f"one batch of {batch} vs micro-batches of {micro_batch}")
    full = full_batch_grads(params, x, y)
    results = {"full": full}
    for scaling in ("n_k/N", "1/K", "none"):
        results[scaling] = accumulated_grads(params, x, y, micro_batch, scaling)
        ratio = results[scaling]["W1"].norm() / full["W1"].norm()
        print(
            f"  scaling {scaling:<6} max |accumulated - full batch| = {max_diff(results[scaling], full):.2e}"
            f"   |dW1| / |dW1 full batch| = {ratio:.3f}"
        )

    section("unequal micro-batches (the last one is shorter)")
    uneven = micro_batch + 1 if batch % (micro_batch + 1) else micro_batch + 2  # a size that does not divide N
    sizes = [t.shape[0] for t in x.split(uneven)]
    uneven_ok = accumulated_grads(params, x, y, uneven, "n_k/N")
    uneven_bad = accumulated_grads(params, x, y, uneven, "1/K")
    print(f"  micro-batch sizes {sizes}")
    print(f"  scaling n_k/N  max diff = {max_diff(uneven_ok, full):.2e}   (still exact)")
    print(f"  scaling 1/K    max diff = {max_diff(uneven_bad, full):.2e}   (wrong)")

    section(f"{steps} SGD steps: accumulate-then-step equals large-batch steps")
    big = {k: v.clone().requires_grad_() for k, v in start.items()}
    acc = {k: v.clone().requires_grad_() for k, v in start.items()}
    opt_big = torch.optim.SGD(big.values(), lr=lr)
    opt_acc = torch.optim.SGD(acc.values(), lr=lr)
    for _ in range(steps):
        full_batch_grads(big, x, y)  # sets .grad
        opt_big.step()
        accumulated_grads(acc, x, y, micro_batch, "n_k/N")  # sets .grad (zeroed first)
        opt_acc.step()
    param_diff = max_diff({k: v.detach() for k, v in big.items()}, {k: v.detach() for k, v in acc.items()})
    loss_big = mlp_forward(big, x, y)[0].item()
    print(f"  after {steps} steps: max |θ_large - θ_accumulated| = {param_diff:.2e}, loss {loss_big:.4f}")

    return {
        "x": x.cpu(),
        "y": y.cpu(),
        "start": {k: v.cpu() for k, v in start.items()},
        "grads": {name: {k: v.cpu() for k, v in r.items()} for name, r in results.items()},
        "n_micro": -(-batch // micro_batch),
        "uneven_sizes": sizes,
        "uneven_ok": {k: v.cpu() for k, v in uneven_ok.items()},
        "uneven_bad": {k: v.cpu() for k, v in uneven_bad.items()},
        "params_large": {k: v.detach().cpu() for k, v in big.items()},
        "params_accumulated": {k: v.detach().cpu() for k, v in acc.items()},
        "param_diff": param_diff,
    }


def parse_args():
    parser = lesson_parser(__doc__)
    add_mlp_arguments(parser, batch=24, steps=5)
    parser.add_argument("--micro-batch", type=positive_int, default=8, help="micro-batch size (default: %(default)s)")
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
