"""Lesson 02: partial derivatives of f(x, y, z) = x²y + sin(yz) + e^(xz) against the hand-derived formulas."""

import pytest
import torch
from torch.func import grad, vmap

from tests.numerics import assert_close_scaled
from tests.pytorch_basis.reference import assert_matches

POINT = (0.5, -1.0, 2.0)


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 2)


@pytest.fixture
def result(lesson):
    return lesson.main(x=POINT[0], y=POINT[1], z=POINT[2])


def f(v: torch.Tensor) -> torch.Tensor:
    """f at v = (x, y, z), written again here (not the lesson's)."""
    x, y, z = v.unbind(-1)
    return x * x * y + torch.sin(y * z) + torch.exp(x * z)


def formula(v: torch.Tensor) -> torch.Tensor:
    """(∂f/∂x, ∂f/∂y, ∂f/∂z) at v = (..., 3)."""
    x, y, z = v.unbind(-1)
    return torch.stack(
        [2 * x * y + z * torch.exp(x * z), x * x + z * torch.cos(y * z), y * torch.cos(y * z) + x * torch.exp(x * z)],
        dim=-1,
    )


def test_value(result):
    assert_matches(result["value"], f, torch.tensor(POINT))


def test_backward_and_autograd_grad_match_formula(result):
    assert_matches(result["by_backward"], formula, torch.tensor(POINT))
    assert_matches(result["by_grad"], formula, torch.tensor(POINT))
    assert_matches(result["by_backward"], grad(f), torch.tensor(POINT))


def test_finite_difference_matches_formula(result):
    fd = result["finite_difference"]
    assert fd.dtype == torch.float64
    expected = formula(torch.tensor(POINT, dtype=torch.float64))
    # A central difference with h = 1e-6 in float64 is not exact: its rounding error is ~eps64·|f|/h (~1e-10 here;
    # truncation, h²·|f'''|/6, is ~1e-12). Allow 4/h = 4e6 ulp of float64 (~9e-10 × max|∂f|); a wrong sign, a
    # one-sided difference (error ~h·|f''| ~ 1e-6) or a wrong h in the denominator is far above.
    assert_close_scaled(fd, expected, ulps=4e6, dtype=torch.float64)


def test_batch_partials_match_torch_func(result):
    pts = result["batch_points"]  # (5, 3)
    assert_matches(result["batch_grads"], vmap(grad(f)), pts)
    assert_matches(result["batch_grads"], formula, pts)
