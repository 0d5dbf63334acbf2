"""Lesson 06: the second-backward error, retain_graph=True, and gradients accumulating (vs 3x², cos(x³)·3x²)."""

import pytest
import torch

from tests.pytorch_basis.reference import assert_matches

SECOND = "Trying to backward through the graph a second time"


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 6)


@pytest.fixture
def result(lesson):
    return lesson.main(n=4)


def test_second_backward_error(lesson, result):
    assert SECOND in result["second_error"]
    assert SECOND in result["freed_error"]
    assert SECOND in result["shared_error"]
    with pytest.raises(RuntimeError, match=SECOND):
        lesson.backward_twice(torch.randn(3, requires_grad=True))
    x = torch.randn(3, requires_grad=True)
    h = x.exp()
    h.sum().backward()
    with pytest.raises(RuntimeError, match=SECOND):
        (h * 2).sum().backward()  # a new loss, but it goes through the freed ExpBackward0


def test_retain_graph_accumulates(result):
    x = result["x"]
    assert_matches(result["once"], lambda t: 3 * t * t, x)
    assert_matches(result["twice"], lambda t: 2 * (3 * t * t), x)
    assert torch.equal(result["twice"], 2 * result["once"])  # the same number added twice: exact
    assert_matches(result["after_zero"], lambda t: 3 * t * t, x)


def test_two_losses_sum(result):
    expected = lambda t: 3 * t * t + torch.cos(t * t * t) * 3 * t * t  # dL1/dx + dL2/dx
    assert_matches(result["two_losses"], expected, result["x"])
    assert_matches(result["sum_of_losses"], expected, result["x"])
