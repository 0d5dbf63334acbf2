"""Lesson 01: sigmoid derivative against the analytic formula and torch.func; leaf/.grad/.detach() facts."""

import math

import pytest
import torch
from torch.func import grad, vmap


@pytest.fixture
def result(load_lesson):
    return load_lesson("pytorch_basis", 1).main(x=0.5, n_points=7)


def sigmoid_prime(x: float) -> float:
    s = 1 / (1 + math.exp(-x))
    return s * (1 - s)


def test_point_derivative_matches_formula(result):
    assert result["point_grad"].item() == pytest.approx(sigmoid_prime(0.5), abs=1e-6)
    assert result["y"].item() == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-6)


def test_elementwise_derivative_matches_formula_and_torch_func(result):
    expected = torch.tensor([sigmoid_prime(v) for v in result["xs"].tolist()])
    torch.testing.assert_close(result["xs_grad"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result["xs_grad"], vmap(grad(torch.sigmoid))(result["xs"]), atol=1e-6, rtol=0)


def test_gradients_accumulate(result):
    assert result["accumulated_grad"].item() == pytest.approx(2 * sigmoid_prime(0.5), abs=1e-6)


def test_leaf_and_graph_facts(result):
    assert result["leaf_flags"] == {"a": True, "c": True, "y": False}
    assert result["grad_fn_name"] == "SigmoidBackward0"
    assert result["detach_shares_storage"]
    assert not result["detach_requires_grad"] and not result["data_requires_grad"]


def test_detach_and_data_share_storage_directly():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    d, dd = y.detach(), y.data
    assert d.data_ptr() == dd.data_ptr() == y.data_ptr()
    assert d._version == y._version  # .detach() shares the version counter ...
    d.add_(1)
    assert y._version == 1
    dd.add_(1)  # ... .data does not: this change is invisible to y's counter
    assert y._version == 1
