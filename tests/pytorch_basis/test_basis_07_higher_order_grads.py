"""Lesson 07: create_graph second derivatives against formulas, torch.func and the Hessian."""

import pytest
import torch
from torch.autograd.functional import hessian, hvp
from torch.func import grad, vmap

from tests.pytorch_basis.reference import assert_matches


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 7)


@pytest.fixture
def result(lesson):
    return lesson.main(x=1.5, dim=5)


def sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-t))


def test_cube_derivatives(result):
    # (x³)' = 3x², (x³)'' = 6x, (x³)''' = 6 at x = 1.5: 6.75, 9 and 6
    x = torch.tensor([1.5])
    assert_matches(result["cube_derivatives"], lambda t: [3 * t * t, 6 * t, torch.full_like(t, 6.0)], x)


def test_nth_derivatives_match_formulas_and_torch_func(lesson):
    xs = torch.linspace(-2, 2, 7)
    d1, d2, d3 = lesson.nth_derivatives(torch.sin, xs, 3)
    assert_matches([d1, d2, d3], lambda t: [torch.cos(t), -torch.sin(t), -torch.cos(t)], xs)
    assert_matches(d2, vmap(grad(grad(torch.sin))), xs)
    assert_matches(d3, vmap(grad(grad(grad(torch.sin)))), xs)


def test_no_create_graph_error(result):
    assert "does not require grad and does not have a grad_fn" in result["no_graph_error"]
    x = torch.tensor(2.0, requires_grad=True)
    (g,) = torch.autograd.grad(x**3, x)
    with pytest.raises(RuntimeError, match="does not require grad and does not have a grad_fn"):
        torch.autograd.grad(g, x)


def test_sigmoid_second_derivative(result):
    xs = result["xs"]
    assert torch.equal(xs, torch.linspace(-4, 4, 9))
    assert_matches(result["sigmoid_d1"], lambda t: sigmoid(t) * (1 - sigmoid(t)), xs)
    assert_matches(result["sigmoid_d2"], lambda t: sigmoid(t) * (1 - sigmoid(t)) * (1 - 2 * sigmoid(t)), xs)
    assert_matches(result["sigmoid_d2"], vmap(grad(grad(torch.sigmoid))), xs)


def test_hessian_vector_product(lesson, result):
    lse = lambda t: torch.logsumexp(t, dim=0)
    inputs = (result["w"], result["v"])
    assert_matches(result["hvp"], lambda w, v: hvp(lse, w, v)[1], *inputs)
    assert_matches(result["hvp"], lambda w, v: hessian(lse, w) @ v, *inputs)
    p_formula = lambda w, v: torch.softmax(w, 0) * v - torch.softmax(w, 0) * (torch.softmax(w, 0) @ v)
    assert_matches(result["hvp"], p_formula, *inputs)  # (diag(p) - ppᵀ) v
    # a non-trivial Hessian: f(w) = Σ w_i³ w_0 mixes coordinates
    f = lambda t: (t**3).sum() * t[0]
    assert_matches(lesson.hessian_vector_product(f, *inputs), lambda w, v: hessian(f, w) @ v, *inputs)
