"""Lesson 03: graph walk, saved tensors, retain_grad, and backward(gradient=) as a vector-Jacobian product."""

import pytest
import torch
from torch.autograd.functional import jacobian, vjp


@pytest.fixture
def result(load_lesson):
    return load_lesson("pytorch_basis", 3).main(dim=3, target=0.0)


def test_graph_walk_reaches_both_leaves(result):
    names = [name for _, name, _ in result["graph"]]
    assert names[0] == "PowBackward0"
    assert "SigmoidBackward0" in names and "MulBackward0" in names
    assert names.count("AccumulateGrad") == 2  # w and b
    saved = {name: attrs for _, name, attrs in result["graph"]}
    assert "_saved_result" in saved["SigmoidBackward0"]  # sigmoid saves its output: σ' = y(1 - y)
    assert {"_saved_self", "_saved_other"} <= set(saved["MulBackward0"])


def test_saved_tensor_hooks_saw_every_saved_tensor_used(result):
    assert len(result["packed"]) >= 3
    assert len(result["unpacked"]) == len(result["packed"])


def test_gradients_match_chain_rule(result):
    x, w, b, t = result["x"], result["w"], result["b"], result["target"]
    y = torch.sigmoid((w * x).sum() + b)
    dz = 2 * (y - t) * y * (1 - y)  # dL/dy · dy/dz
    torch.testing.assert_close(result["z_grad"], dz, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result["w_grad"], dz * x, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result["b_grad"], dz, atol=1e-6, rtol=1e-5)


def test_non_leaf_grad_is_none_with_warning(result):
    assert result["y_grad"] is None
    assert "retain_grad" in result["non_leaf_warning"]
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    y.sum().backward()
    with pytest.warns(UserWarning, match=r"\.grad attribute of a Tensor that is not a leaf Tensor"):
        assert y.grad is None


def test_backward_needs_scalar(result):
    assert "grad can be implicitly created only for scalar outputs" in result["scalar_error"]
    v = torch.ones(3, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
        v.backward()


def test_backward_with_gradient_is_vjp(result):
    A, w2, u = result["A"], result["w2"], result["u"]
    fn = lambda w: torch.tanh(A @ w)
    _, ref = vjp(fn, w2, u)
    torch.testing.assert_close(result["vjp"], ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result["vjp"], jacobian(fn, w2).T @ u, atol=1e-6, rtol=1e-5)
