"""Step 4 — forward and backward of a 2-layer MLP by hand, compared with autograd; then zero_grad → backward → step.

What this step adds: the chain rule written out for a real (small) network, so ``loss.backward()`` stops being
magic. The network and its backward live in ``pytorch_basis/autograd_utils.py``::

    h = tanh(x W1 + b1)      logits = h W2 + b2      L = mean_i -log softmax(logits)[i, y_i]

    dlogits = (p - onehot(y)) / B
    dW2 = hᵀ dlogits    db2 = Σ_i dlogits    dh = dlogits W2ᵀ    dh_pre = dh ⊙ (1 - h²)
    dW1 = xᵀ dh_pre     db1 = Σ_i dh_pre     dx = dh_pre W1ᵀ

Then the training step every PyTorch loop repeats:

    optimizer.zero_grad()   # .grad = None — otherwise this step's gradient is *added* to the last one
    loss.backward()         # fill .grad
    optimizer.step()        # θ ← θ - lr · θ.grad   (plain SGD)

run side by side with the same update done by hand from the manual gradients: the two runs stay identical.

Run:  python pytorch_basis/04_forward_backward_by_hand.py [--steps 20 --lr 0.5]
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
    mlp_backward,
    mlp_forward,
    section,
)
from pytorch_basis.common import run_cli


def main(
    batch: int = 32,
    d_in: int = 4,
    d_hidden: int = 16,
    n_classes: int = 3,
    steps: int = 20,
    lr: float = 0.5,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    x, y, params = make_mlp_problem(batch, d_in, d_hidden, n_classes, seed=seed, device=device)
    start = {k: v.detach().cpu().clone() for k, v in params.items()}

    section("one forward, two backwards: by hand and by autograd")
    xg = x.clone().requires_grad_()  # so autograd also gives dL/dx
    loss, cache = mlp_forward(params, xg, y)
    manual = mlp_backward(params, cache)
    loss.backward()
    auto = {name: params[name].grad for name in MLP_PARAMS} | {"x": xg.grad}
    max_diff = {}
    for name in (*MLP_PARAMS, "x"):
        max_diff[name] = (manual[name] - auto[name]).abs().max().item()
        print(f"  d{name:<3} shape {str(tuple(manual[name].shape)):<8} max |manual - autograd| = {max_diff[name]:.2e}")
    first = {"loss": loss.item(), "manual": {k: v.cpu() for k, v in manual.items()}}
    first["autograd"] = {k: v.detach().cpu().clone() for k, v in auto.items()}

    section("training: zero_grad -> backward -> step, against the same update by hand")
    by_hand = {k: v.detach().clone() for k, v in params.items()}  # a second copy, updated without autograd
    opt = torch.optim.SGD(params.values(), lr=lr)
    losses_autograd, losses_manual = [], []
    for step in range(steps):
        opt.zero_grad()
        loss, _ = mlp_forward(params, x, y)
        loss.backward()
        opt.step()

        loss_m, cache_m = mlp_forward(by_hand, x, y)
        grads_m = mlp_backward(by_hand, cache_m)
        for name in MLP_PARAMS:
            by_hand[name] -= lr * grads_m[name]  # θ ← θ - lr · dL/dθ

        losses_autograd.append(loss.item())
        losses_manual.append(loss_m.item())
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"  step {step:3d}  loss (optimizer) {loss.item():.5f}   loss (by hand) {loss_m.item():.5f}")
    param_diff = max((params[n].detach() - by_hand[n]).abs().max().item() for n in MLP_PARAMS)
    print(f"after {steps} steps: max |θ_optimizer - θ_by_hand| = {param_diff:.2e}")

    section("forgetting zero_grad")
    for p in params.values():
        p.grad = None
    for _ in range(2):
        mlp_forward(params, x, y)[0].backward()  # no zero_grad in between
    doubled = params["W2"].grad.clone()
    for p in params.values():
        p.grad = None
    mlp_forward(params, x, y)[0].backward()
    print(f"two backwards without zero_grad: |grad| = {doubled.norm():.4f} = 2 x {params['W2'].grad.norm():.4f}")

    return {
        "x": x.cpu(),
        "y": y.cpu(),
        "first": first,
        "max_diff": max_diff,
        "losses_autograd": losses_autograd,
        "losses_manual": losses_manual,
        "param_diff": param_diff,
        "start": start,
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "params_by_hand": {k: v.cpu() for k, v in by_hand.items()},
        "doubled_grad": doubled.cpu(),
        "single_grad": params["W2"].grad.cpu(),
    }


def parse_args():
    parser = lesson_parser(__doc__)
    add_mlp_arguments(parser, batch=32, steps=20)
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
