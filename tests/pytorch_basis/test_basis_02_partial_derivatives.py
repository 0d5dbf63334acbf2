"""Lesson 02: partial derivatives of f(x, y, z) = x²y + sin(yz) + e^(xz) against the hand-derived formulas."""

import math

import pytest
import torch
from torch.func import grad, vmap


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 2)


@pytest.fixture
def result(lesson):
    return lesson.main(x=0.5, y=-1.0, z=2.0)


def formula(x: float, y: float, z: float) -> list[float]:
    return [
        2 * x * y + z * math.exp(x * z),
        x * x + z * math.cos(y * z),
        y * math.cos(y * z) + x * math.exp(x * z),
    ]


def test_value(result):
    x, y, z = 0.5, -1.0, 2.0
    assert result["value"].item() == pytest.approx(x * x * y + math.sin(y * z) + math.exp(x * z), abs=1e-5)


def test_backward_and_autograd_grad_match_formula(result):
    expected = torch.tensor(formula(0.5, -1.0, 2.0))
    torch.testing.assert_close(result["by_backward"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result["by_grad"], expected, atol=1e-5, rtol=0)


def test_finite_difference_matches_formula(result):
    expected = torch.tensor(formula(0.5, -1.0, 2.0), dtype=torch.float64)
    torch.testing.assert_close(result["finite_difference"], expected, atol=1e-6, rtol=0)


def test_batch_partials_match_torch_func(lesson, result):
    pts = result["batch_points"]
    ref = vmap(grad(lambda v: lesson.f(v[0], v[1], v[2])))(pts)  # (5, 3)
    torch.testing.assert_close(result["batch_grads"], ref, atol=1e-5, rtol=1e-5)
    by_formula = torch.tensor([formula(*p) for p in pts.tolist()])
    torch.testing.assert_close(result["batch_grads"], by_formula, atol=1e-4, rtol=1e-5)
