"""Lesson 06: the second-backward error, retain_graph=True, and gradients accumulating (vs 3x², cos(x³)·3x²)."""

import pytest
import torch

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
    torch.testing.assert_close(result["once"], 3 * x**2)
    torch.testing.assert_close(result["twice"], 6 * x**2)
    torch.testing.assert_close(result["after_zero"], 3 * x**2)


def test_two_losses_sum(result):
    x = result["x"]
    expected = 3 * x**2 + torch.cos(x**3) * 3 * x**2
    torch.testing.assert_close(result["two_losses"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result["sum_of_losses"], expected, atol=1e-5, rtol=1e-5)
