"""Lesson 05: leaf in-place error, version-counter error, .data silently wrong vs .detach() raising."""

import pytest
import torch

from tests.pytorch_basis.reference import assert_matches

LEAF = "a leaf Variable that requires grad is being used in an in-place operation"
MODIFIED = "modified by an inplace operation"


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 5)


@pytest.fixture
def result(lesson):
    return lesson.main()


def test_leaf_inplace_error(lesson, result):
    assert LEAF in result["leaf_error"]
    with pytest.raises(RuntimeError, match=LEAF):
        lesson.leaf_inplace(torch.ones(2, requires_grad=True))
    with pytest.raises(RuntimeError, match=LEAF):
        torch.zeros(2, requires_grad=True).mul_(2)
    assert torch.equal(result["w_after_no_grad"], torch.full((3,), 2.0))  # 1 + 1, exact


def test_version_counter(lesson, result):
    assert result["versions"] == [0, 1, 2, 3, 3]
    assert MODIFIED in result["version_error"] and "is at version 1; expected version 0" in result["version_error"]
    with pytest.raises(RuntimeError, match=MODIFIED):
        lesson.stale_saved_tensor(torch.ones(2, requires_grad=True))
    a = torch.ones(2, requires_grad=True)
    e = a.exp()  # ExpBackward0 saves its output
    e.add_(1)
    with pytest.raises(RuntimeError, match=r"is at version 1; expected version 0"):
        e.sum().backward()


def test_data_gives_silently_wrong_gradient(lesson, result):
    assert torch.equal(result["x"], torch.tensor([-1.0, 0.5, 2.0]))
    sigmoid_prime = lambda x: (1 / (1 + torch.exp(-x))) * (1 - 1 / (1 + torch.exp(-x)))
    assert_matches(result["true_grad"], sigmoid_prime, result["x"])
    assert bool((result["true_grad"] > 0.1).all())  # σ' at these points is 0.10 .. 0.24, far from 0
    assert torch.equal(result["data_grad"], torch.zeros(3))  # not σ(1-σ): wrong, and no error
    x = torch.tensor([0.3, -0.7], requires_grad=True)
    assert torch.equal(lesson.sigmoid_grad_after_data_zero(x), torch.zeros(2))


def test_detach_raises(lesson, result):
    assert MODIFIED in result["detach_error"]
    with pytest.raises(RuntimeError, match=MODIFIED):
        lesson.sigmoid_grad_after_detach_zero(torch.tensor([0.3, -0.7], requires_grad=True))
