"""Lesson 10: tensor and module hooks, eval() vs no_grad vs inference_mode."""

import pytest
import torch

INFERENCE = "Inference tensors cannot be saved for backward"


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 10)


@pytest.fixture
def result(lesson):
    return lesson.main(d_in=4, batch=5)


def test_tensor_hooks(result):
    torch.testing.assert_close(result["hook_seen_grad"], torch.ones(3))
    torch.testing.assert_close(result["tensor_hook_grad"], torch.full((3,), 20.0))


def test_module_hooks_capture_activations_and_grads(result):
    model, inputs, hooked = result["model"], result["inputs"], result["hooked"]
    torch.testing.assert_close(hooked["input"], inputs)
    torch.testing.assert_close(hooked["relu_out"], torch.relu(inputs @ model[0].weight.T + model[0].bias).detach())
    out = result["out_eval"]
    torch.testing.assert_close(hooked["grad_out"], 2 * out / out.numel())  # d mean(out²) / d out
    assert result["hook_calls"] == ["pre", "forward", "backward"]
    assert result["hooks_after_remove"] == 0


def test_eval_and_grad_modes(result):
    assert result["train_outputs_equal"] is False
    assert result["eval_outputs_equal"] is True
    assert result["eval_requires_grad"] is True
    assert result["no_grad_requires_grad"] is False
    assert result["inference_is_inference"] and not result["no_grad_is_inference"]
    assert INFERENCE in result["inference_error"]


def test_inference_tensor_cannot_enter_a_graph():
    w = torch.ones(2, requires_grad=True)
    with torch.inference_mode():
        t = torch.ones(2) * 3
    with pytest.raises(RuntimeError, match=INFERENCE):
        (t * w).sum().backward()
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        t.add_(1)
    with torch.no_grad():
        n = torch.ones(2) * 3
    (n * w).sum().backward()
    torch.testing.assert_close(w.grad, torch.full((2,), 3.0))
