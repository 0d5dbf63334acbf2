"""Lesson 11: micro-batch gradient accumulation equals the large-batch gradient (vs torch.func.grad)."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from pytorch_basis.autograd_utils import init_mlp
from tests.numerics import max_abs, max_abs_diff
from tests.pytorch_basis.reference import assert_matches

BATCH, MICRO, STEPS, LR = 24, 8, 5, 0.5


def reference_loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(x @ params["W1"] + params["b1"])
    return F.cross_entropy(h @ params["W2"] + params["b2"], y)


def full_grad(params: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """∇ of the mean loss over the whole batch."""
    return grad(reference_loss)(params, x, y)


def one_over_k_grad(params: dict, x: torch.Tensor, y: torch.Tensor, size: int) -> dict:
    """What 1/K scaling computes: (1/K) Σ_k ∇L_k with L_k the mean over micro-batch k (sizes may differ)."""
    chunks = list(zip(x.split(size), y.split(size)))
    grads = [grad(reference_loss)(params, xk, yk) for xk, yk in chunks]
    return {k: sum(g[k] for g in grads) / len(chunks) for k in params}


def reference_sgd(params: dict, x: torch.Tensor, y: torch.Tensor, steps: int = STEPS, lr: float = LR) -> dict:
    for _ in range(steps):
        g = full_grad(params, x, y)
        params = {k: params[k] - lr * g[k] for k in params}
    return params


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 11)


@pytest.fixture
def result(lesson):
    return lesson.main(batch=BATCH, micro_batch=MICRO, steps=STEPS, lr=LR)


@pytest.mark.parity
def test_full_batch_grad_matches_torch_func(result):
    assert_matches(result["grads"]["full"], full_grad, result["start"], result["x"], result["y"])


def test_accumulation_equals_large_batch(result):
    g, K, inputs = result["grads"], result["n_micro"], (result["start"], result["x"], result["y"])
    assert K == 3
    assert_matches(g["n_k/N"], full_grad, *inputs, what="n_k/N")
    assert_matches(g["1/K"], full_grad, *inputs, what="1/K")  # equal micro-batches: 1/K is n_k/N
    assert_matches(g["none"], lambda *a: {k: K * v for k, v in full_grad(*a).items()}, *inputs, what="none")
    assert_matches(result["params_large"], reference_sgd, *inputs, what="large batch")
    assert_matches(result["params_accumulated"], reference_sgd, *inputs, what="accumulated")


def test_unequal_micro_batches(result):
    inputs = (result["start"], result["x"], result["y"])
    assert result["uneven_sizes"] == [9, 9, 6]  # 24 split into micro-batches of 9
    assert_matches(result["uneven_ok"], full_grad, *inputs, what="n_k/N")
    assert_matches(result["uneven_bad"], lambda *a: one_over_k_grad(*a, 9), *inputs, what="1/K")
    # ... and that is really wrong, by far more than rounding: over 1% of the gradient's size
    bad, full = one_over_k_grad(*inputs, 9), full_grad(*inputs)
    assert max(max_abs_diff(bad[k], full[k]) / max_abs(full[k]) for k in full) > 1e-2


def test_bad_arguments(lesson):
    params = init_mlp(4, 5, 3)
    x, y = torch.randn(6, 4), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        lesson.accumulated_grads(params, x, y, 0)
    with pytest.raises(ValueError, match="unknown scaling"):
        lesson.accumulated_grads(params, x, y, 2, scaling="mean")
