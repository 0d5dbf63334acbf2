"""Lesson 08: Jacobians (4 ways), the softmax Jacobian diag(p) - ppᵀ, Hessians, per-sample gradients."""

import pytest
import torch

from tests.numerics import assert_close_scaled
from tests.pytorch_basis.reference import assert_matches


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 8)


@pytest.fixture
def result(lesson):
    return lesson.main(dim=3, n_out=4, n_classes=5, batch=8)


def tanh_jacobian(A: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """J of v = tanh(A w): diag(1 - v²) A, shape (M, D)."""
    return (1 - torch.tanh(A @ w) ** 2)[:, None] * A


def softmax_jacobian_elementwise(z: torch.Tensor) -> torch.Tensor:
    """∂p_i/∂z_j = p_i (δ_ij - p_j), element by element."""
    p = torch.exp(z) / torch.exp(z).sum()
    C = z.numel()
    return torch.stack([torch.stack([p[i] * (float(i == j) - p[j]) for j in range(C)]) for i in range(C)])


def test_jacobians_match_formula(result):
    for key in ("J_rows", "J_functional", "J_rev", "J_fwd"):
        assert result[key].shape == (4, 3)
        assert_matches(result[key], tanh_jacobian, result["A"], result["w"], what=key)


def test_softmax_jacobian(lesson, result):
    z = result["z"]
    assert_matches(result["J_softmax_formula"], softmax_jacobian_elementwise, z)
    assert_matches(result["J_softmax"], softmax_jacobian_elementwise, z)
    # rows sum to 0, i.e. the off-diagonal entries of row i add up to -J_ii. A sum of C = 5 fp32 terms, each at
    # most |J_ii|, is off by a few ulp of that: allow 16 ulp of max|J_ii|.
    J = result["J_softmax"]
    assert_close_scaled((J - torch.diag(J.diagonal())).sum(1), -J.diagonal(), ulps=16)
    z64 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_matches(lesson.softmax_jacobian(z64), softmax_jacobian_elementwise, z64)


def test_logsumexp_hessian_is_softmax_jacobian(result):
    assert_matches(result["H_functional"], softmax_jacobian_elementwise, result["z"])
    assert_matches(result["H_func"], softmax_jacobian_elementwise, result["z"])


def test_jacobian_by_rows_on_a_non_square_function(lesson):
    w = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fn = lambda t: torch.stack([t.prod(), t[0] * t[1], t.sin().sum()])
    by_hand = lambda t: torch.stack(
        [t.prod() / t, torch.tensor([t[1], t[0], 0, 0], dtype=t.dtype), t.cos()]
    )  # ∂(Π t)/∂t_j = Π t / t_j (no t_j is 0 for randn)
    assert_matches(lesson.jacobian_by_rows(fn, w), by_hand, w)
    assert_matches(lesson.jacobian_by_rows(fn, w), lambda t: torch.autograd.functional.jacobian(fn, t), w)


def per_sample_formula(model, x, y):
    """ℓ_i = ½ (ŷ_i - y_i)²:  ∇_w ℓ_i = (ŷ_i - y_i) x_i,  ∇_b ℓ_i = ŷ_i - y_i."""
    residual = (x @ model.weight.detach().T + model.bias.detach()).squeeze(1) - y  # (B,)
    return {"weight": (residual[:, None] * x)[:, None, :], "bias": residual[:, None]}  # (B, 1, D), (B, 1)


def test_per_sample_grads_match_formula(result):
    inputs = (result["model"], result["x"], result["y"])
    assert_matches(result["per_sample"], per_sample_formula, *inputs, what="vmap")
    assert_matches(result["per_sample_loop"], per_sample_formula, *inputs, what="loop")
    assert_matches(result["batch_grad"], lambda m, x, y: per_sample_formula(m, x, y)["weight"].sum(0), *inputs)
