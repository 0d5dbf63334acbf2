"""Lesson 09: custom autograd.Functions checked with gradcheck (float64) and against built-ins."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.autograd.gradcheck import GradcheckError


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 9)


@pytest.fixture
def result(lesson):
    return lesson.main(n=6)


def test_lesson_results(result):
    assert result["silu_ok"] and result["silu_gradgrad_ok"] and result["linear_ok"]
    torch.testing.assert_close(result["custom_grad"], result["builtin_grad"])
    assert "Jacobian mismatch" in result["buggy_error"]
    assert result["float32_ok"] is False
    assert any("not a double precision" in w for w in result["float32_warnings"])


def test_silu_function(lesson):
    x = torch.randn(10, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lesson.silu, (x,))
    assert gradgradcheck(lesson.silu, (x,))
    torch.testing.assert_close(lesson.silu(x), F.silu(x))
    (g,) = torch.autograd.grad(lesson.silu(x).sum(), x)
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(g, s * (1 + x.detach() * (1 - s)))


def test_buggy_backward_is_caught(lesson):
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(GradcheckError, match="Jacobian mismatch for output 0 with respect to input 0"):
        gradcheck(lesson.buggy_silu, (x,))


def test_linear_function(lesson):
    X = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lesson.linear, (X, W, b))
    dY = torch.randn(4, 2, dtype=torch.float64)
    ours = torch.autograd.grad(lesson.linear(X, W, b), (X, W, b), dY)
    ref = torch.autograd.grad(F.linear(X, W, b), (X, W, b), dY)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)
    # needs_input_grad: only X requires grad, the other gradients are skipped
    Xo = X.detach().requires_grad_()
    (dX,) = torch.autograd.grad(lesson.linear(Xo, W.detach(), b.detach()).sum(), Xo)
    torch.testing.assert_close(dX, torch.ones(4, 2, dtype=torch.float64) @ W.detach())
