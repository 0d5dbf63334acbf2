"""Lesson 10: tensor and module hooks, eval() vs no_grad vs inference_mode."""

import pytest
import torch

from tests.pytorch_basis.reference import assert_matches

INFERENCE = "Inference tensors cannot be saved for backward"


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 10)


@pytest.fixture
def result(lesson):
    return lesson.main(d_in=4, batch=5)


def test_tensor_hooks(result):
    assert torch.equal(result["hook_seen_grad"], torch.ones(3))  # d(Σ h)/dh = 1, exact
    assert torch.equal(result["tensor_hook_grad"], torch.full((3,), 20.0))  # 10 · 1 · 2, exact in binary


def test_module_hooks_capture_activations_and_grads(result):
    model, inputs, hooked = result["model"], result["inputs"], result["hooked"]
    assert torch.equal(hooked["input"], inputs)  # the very tensor that went in
    relu_out = lambda m, x: torch.relu(x @ m[0].weight.T + m[0].bias).detach()
    assert_matches(hooked["relu_out"], relu_out, model, inputs)
    assert not model.training  # the lesson ends in eval(): dropout is the identity, as during the hooked pass

    def grad_out(m, x):  # d mean(out²) / d out = 2 out / numel, with out recomputed from the model
        out = m(x).detach()
        return 2 * out / out.numel()

    assert_matches(hooked["grad_out"], grad_out, model, inputs)
    assert_matches(result["out_eval"], lambda m, x: m(x).detach(), model, inputs)
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
    assert torch.equal(w.grad, torch.full((2,), 3.0))  # exact
