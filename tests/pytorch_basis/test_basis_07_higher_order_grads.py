"""Lesson 07: create_graph second derivatives against formulas, torch.func and the Hessian."""

import pytest
import torch
from torch.autograd.functional import hessian, hvp
from torch.func import grad, vmap


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 7)


@pytest.fixture
def result(lesson):
    return lesson.main(x=1.5, dim=5)


def test_cube_derivatives(result):
    d1, d2, d3 = (d.item() for d in result["cube_derivatives"])
    assert d1 == pytest.approx(3 * 1.5**2, abs=1e-5)
    assert d2 == pytest.approx(6 * 1.5, abs=1e-5)
    assert d3 == pytest.approx(6.0, abs=1e-5)


def test_nth_derivatives_match_torch_func(lesson):
    xs = torch.linspace(-2, 2, 7)
    d1, d2, d3 = lesson.nth_derivatives(torch.sin, xs, 3)
    torch.testing.assert_close(d1, torch.cos(xs))
    torch.testing.assert_close(d2, vmap(grad(grad(torch.sin)))(xs))
    torch.testing.assert_close(d3, -torch.cos(xs))


def test_no_create_graph_error(result):
    assert "does not require grad and does not have a grad_fn" in result["no_graph_error"]
    x = torch.tensor(2.0, requires_grad=True)
    (g,) = torch.autograd.grad(x**3, x)
    with pytest.raises(RuntimeError, match="does not require grad and does not have a grad_fn"):
        torch.autograd.grad(g, x)


def test_sigmoid_second_derivative(result):
    xs = result["xs"]
    s = torch.sigmoid(xs)
    torch.testing.assert_close(result["sigmoid_d1"], s * (1 - s), atol=1e-6, rtol=0)
    torch.testing.assert_close(result["sigmoid_d2"], s * (1 - s) * (1 - 2 * s), atol=1e-6, rtol=0)
    torch.testing.assert_close(result["sigmoid_d2"], vmap(grad(grad(torch.sigmoid)))(xs), atol=1e-6, rtol=0)


def test_hessian_vector_product(lesson, result):
    w, v = result["w"], result["v"]
    lse = lambda t: torch.logsumexp(t, dim=0)
    _, ref = hvp(lse, w, v)
    torch.testing.assert_close(result["hvp"], ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result["hvp"], hessian(lse, w) @ v, atol=1e-6, rtol=1e-5)
    # a non-trivial Hessian: f(w) = Σ w_i³ w_0 mixes coordinates
    f = lambda t: (t**3).sum() * t[0]
    torch.testing.assert_close(lesson.hessian_vector_product(f, w, v), hessian(f, w) @ v, atol=1e-5, rtol=1e-5)
