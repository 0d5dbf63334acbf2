"""Lesson 01: sigmoid derivative against the analytic formula and torch.func; leaf/.grad/.detach() facts."""

import pytest
import torch
from torch.func import grad, vmap

from tests.pytorch_basis.reference import assert_matches


@pytest.fixture
def result(load_lesson):
    return load_lesson("pytorch_basis", 1).main(x=0.5, n_points=7)


def sigmoid_prime(x: torch.Tensor) -> torch.Tensor:
    s = 1 / (1 + torch.exp(-x))
    return s * (1 - s)


def test_point_derivative_matches_formula(result):
    x = torch.tensor(0.5)
    assert_matches(result["point_grad"], sigmoid_prime, x)
    assert_matches(result["y"], lambda t: 1 / (1 + torch.exp(-t)), x)


def test_elementwise_derivative_matches_formula_and_torch_func(result):
    xs = result["xs"]
    assert torch.equal(xs, torch.linspace(-3, 3, 7))  # the lesson's points, so the references below use them
    assert_matches(result["xs_grad"], sigmoid_prime, xs)
    assert_matches(result["xs_grad"], vmap(grad(torch.sigmoid)), xs)


def test_gradients_accumulate(result):
    assert_matches(result["accumulated_grad"], lambda t: 2 * sigmoid_prime(t), torch.tensor(0.5))
    # the same graph twice: the second backward adds the very same fp32 number, and doubling is exact
    assert torch.equal(result["accumulated_grad"], 2 * result["point_grad"])


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
