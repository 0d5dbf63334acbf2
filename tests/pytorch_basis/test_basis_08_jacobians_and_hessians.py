"""Lesson 08: Jacobians (4 ways), the softmax Jacobian diag(p) - ppᵀ, Hessians, per-sample gradients."""

import pytest
import torch


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 8)


@pytest.fixture
def result(lesson):
    return lesson.main(dim=3, n_out=4, n_classes=5, batch=8)


def test_jacobians_match_formula(result):
    A, w = result["A"], result["w"]
    v = torch.tanh(A @ w)
    J = (1 - v**2)[:, None] * A
    for key in ("J_rows", "J_functional", "J_rev", "J_fwd"):
        assert result[key].shape == (4, 3)
        torch.testing.assert_close(result[key], J, atol=1e-6, rtol=1e-5)


def test_softmax_jacobian(lesson, result):
    z = result["z"]
    p = torch.softmax(z, dim=0)
    C = z.numel()
    # element by element: ∂p_i/∂z_j = p_i (δ_ij - p_j)
    expected = torch.tensor([[p[i] * (float(i == j) - p[j]) for j in range(C)] for i in range(C)])
    torch.testing.assert_close(result["J_softmax_formula"], expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(result["J_softmax"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result["J_softmax"].sum(1), torch.zeros(C), atol=1e-6, rtol=0)
    z64 = torch.randn(6, dtype=torch.float64)
    ref = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, dim=0), z64)
    torch.testing.assert_close(lesson.softmax_jacobian(z64), ref)


def test_logsumexp_hessian_is_softmax_jacobian(result):
    expected = result["J_softmax_formula"]
    torch.testing.assert_close(result["H_functional"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result["H_func"], expected, atol=1e-6, rtol=0)


def test_jacobian_by_rows_on_a_non_square_function(lesson):
    w = torch.randn(4, dtype=torch.float64)
    fn = lambda t: torch.stack([t.prod(), t[0] * t[1], t.sin().sum()])
    torch.testing.assert_close(lesson.jacobian_by_rows(fn, w), torch.autograd.functional.jacobian(fn, w))


def test_per_sample_grads_match_formula(result):
    model, x, y = result["model"], result["x"], result["y"]
    with torch.no_grad():
        residual = model(x).squeeze(1) - y  # (B,)
    ps = result["per_sample"]
    torch.testing.assert_close(ps["weight"], (residual[:, None] * x)[:, None, :], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ps["bias"], residual[:, None], atol=1e-6, rtol=1e-5)
    for k in ps:
        torch.testing.assert_close(ps[k], result["per_sample_loop"][k], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ps["weight"].sum(0), result["batch_grad"], atol=1e-5, rtol=1e-5)
