"""Lesson 03: graph walk, saved tensors, retain_grad, and backward(gradient=) as a vector-Jacobian product."""

import pytest
import torch
from torch.autograd.functional import jacobian, vjp

from tests.pytorch_basis.reference import assert_matches


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
    # forward order: MulBackward0 saves x (D,), SigmoidBackward0 its output y (), PowBackward0 its input y - t ()
    assert result["packed"] == [(3,), (), ()]
    # backward walks the graph the other way round and reads each saved tensor exactly once
    assert result["unpacked"] == result["packed"][::-1]


def chain_rule(x, w, b, t):
    """(dL/dz, dL/dw, dL/db) for L = (σ(wᵀx + b) - t)², by hand."""
    y = 1 / (1 + torch.exp(-((w * x).sum() + b)))
    dz = 2 * (y - t) * y * (1 - y)  # dL/dy · dy/dz
    return dz, dz * x, dz


def test_gradients_match_chain_rule(result):
    inputs = (result["x"], result["w"], result["b"], torch.tensor(result["target"]))
    ours = (result["z_grad"], result["w_grad"], result["b_grad"])
    assert_matches(ours, chain_rule, *inputs)


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
    inputs = (result["A"], result["w2"], result["u"])
    assert_matches(result["vjp"], lambda A, w, u: vjp(lambda t: torch.tanh(A @ t), w, u)[1], *inputs)
    assert_matches(result["vjp"], lambda A, w, u: jacobian(lambda t: torch.tanh(A @ t), w).T @ u, *inputs)
    assert_matches(result["vjp"], lambda A, w, u: A.T @ ((1 - torch.tanh(A @ w) ** 2) * u), *inputs)
