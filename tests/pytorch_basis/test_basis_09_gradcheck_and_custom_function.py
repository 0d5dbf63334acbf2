"""Lesson 09: custom autograd.Functions checked with gradcheck (float64) and against built-ins."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.autograd.gradcheck import GradcheckError

from tests.pytorch_basis.reference import assert_matches


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 9)


@pytest.fixture
def result(lesson):
    return lesson.main(n=6)


def silu_prime(x: torch.Tensor) -> torch.Tensor:
    """d(x σ(x))/dx = σ(x) (1 + x (1 - σ(x)))."""
    s = 1 / (1 + torch.exp(-x))
    return s * (1 + x * (1 - s))


def builtin_silu_grad(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_()
    return torch.autograd.grad(F.silu(x).sum(), x)[0]


def test_lesson_results(result):
    assert result["silu_ok"] and result["silu_gradgrad_ok"] and result["linear_ok"]
    # float64 throughout: the references run in float64 too, so the bound is 64 ulp of float64
    assert result["x"].dtype == result["custom_grad"].dtype == torch.float64
    assert_matches(result["custom_grad"], silu_prime, result["x"])
    assert_matches(result["custom_grad"], builtin_silu_grad, result["x"])
    assert_matches(result["builtin_grad"], builtin_silu_grad, result["x"])
    assert "Jacobian mismatch" in result["buggy_error"]
    assert result["float32_ok"] is False
    assert any("not a double precision" in w for w in result["float32_warnings"])


def test_silu_function(lesson):
    x = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    assert gradcheck(lesson.silu, (x,))
    assert gradgradcheck(lesson.silu, (x,))
    assert_matches(lesson.silu(x), F.silu, x)
    (g,) = torch.autograd.grad(lesson.silu(x).sum(), x)
    assert_matches(g, silu_prime, x)
    # and in float32, against the float64 formula
    x32 = x.detach().float().requires_grad_()
    (g32,) = torch.autograd.grad(lesson.silu(x32).sum(), x32)
    assert_matches(g32, silu_prime, x32)


def test_buggy_backward_is_caught(lesson):
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(GradcheckError, match="Jacobian mismatch for output 0 with respect to input 0"):
        gradcheck(lesson.buggy_silu, (x,))


def test_linear_function(lesson):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 3, dtype=torch.float64, generator=g).requires_grad_()
    W = torch.randn(2, 3, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, generator=g).requires_grad_()
    assert gradcheck(lesson.linear, (X, W, b))
    dY = torch.randn(4, 2, dtype=torch.float64, generator=g)
    ours = torch.autograd.grad(lesson.linear(X, W, b), (X, W, b), dY)

    def by_formula(X, W, b, dY):  # dX = dY W, dW = dYᵀ X, db = Σ_rows dY
        return [dY @ W, dY.T @ X, dY.sum(0)]

    def by_builtin(X, W, b, dY):
        X, W, b = (t.detach().requires_grad_() for t in (X, W, b))
        return list(torch.autograd.grad(F.linear(X, W, b), (X, W, b), dY))

    assert_matches(list(ours), by_formula, X, W, b, dY)
    assert_matches(list(ours), by_builtin, X, W, b, dY)
    # needs_input_grad: only X requires grad, the other gradients are skipped
    Xo = X.detach().requires_grad_()
    (dX,) = torch.autograd.grad(lesson.linear(Xo, W.detach(), b.detach()).sum(), Xo)
    assert_matches(dX, lambda W: torch.ones(4, 2, dtype=W.dtype) @ W, W)
