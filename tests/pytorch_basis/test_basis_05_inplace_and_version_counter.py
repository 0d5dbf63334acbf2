"""Lesson 05: leaf in-place error, version-counter error, .data silently wrong vs .detach() raising."""

import pytest
import torch

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
    torch.testing.assert_close(result["w_after_no_grad"], torch.full((3,), 2.0))


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
    s = torch.sigmoid(result["x"])
    torch.testing.assert_close(result["true_grad"], s * (1 - s))
    assert torch.equal(result["data_grad"], torch.zeros(3))  # not σ(1-σ): wrong, and no error
    assert not torch.allclose(result["data_grad"], result["true_grad"])
    x = torch.tensor([0.3, -0.7], requires_grad=True)
    assert torch.equal(lesson.sigmoid_grad_after_data_zero(x), torch.zeros(2))


def test_detach_raises(lesson, result):
    assert MODIFIED in result["detach_error"]
    with pytest.raises(RuntimeError, match=MODIFIED):
        lesson.sigmoid_grad_after_detach_zero(torch.tensor([0.3, -0.7], requires_grad=True))
