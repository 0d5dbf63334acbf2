"""Lesson 04: the hand-written MLP backward against torch.func.grad of an independent functional forward."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from pytorch_basis.autograd_utils import MLP_PARAMS, init_mlp, make_blobs, mlp_backward, mlp_forward


def reference_loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same network written with F.linear (weights transposed) and log_softmax + nll_loss."""
    h = torch.tanh(F.linear(x, params["W1"].T, params["b1"]))
    return F.nll_loss(F.log_softmax(F.linear(h, params["W2"].T, params["b2"]), dim=-1), y)


@pytest.fixture
def result(load_lesson):
    return load_lesson("pytorch_basis", 4).main(steps=20, lr=0.5)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_manual_backward_matches_torch_func(dtype, atol):
    g = torch.Generator().manual_seed(0)
    params = init_mlp(5, 7, 4, generator=g, dtype=dtype)
    x, y = make_blobs(11, 5, 4, generator=g, dtype=dtype)
    loss, cache = mlp_forward(params, x, y)
    manual = mlp_backward(params, cache)
    plain = {k: v.detach() for k, v in params.items()}
    torch.testing.assert_close(loss.detach(), reference_loss(plain, x, y), atol=atol, rtol=0)
    ref = grad(reference_loss)(plain, x, y)
    for name in MLP_PARAMS:
        torch.testing.assert_close(manual[name], ref[name], atol=atol, rtol=0)
    ref_x = grad(reference_loss, argnums=1)(plain, x, y)
    torch.testing.assert_close(manual["x"], ref_x, atol=atol, rtol=0)


def test_lesson_manual_equals_autograd(result):
    first = result["first"]
    for name in (*MLP_PARAMS, "x"):
        torch.testing.assert_close(first["manual"][name], first["autograd"][name], atol=1e-6, rtol=0)
    assert max(result["max_diff"].values()) < 1e-6


def test_training_loop_matches_manual_sgd_and_learns(result):
    torch.testing.assert_close(
        torch.tensor(result["losses_autograd"]), torch.tensor(result["losses_manual"]), atol=1e-5, rtol=0
    )
    assert result["param_diff"] < 1e-5
    assert result["losses_autograd"][-1] < 0.5 * result["losses_autograd"][0]
    final = reference_loss(result["params"], result["x"], result["y"]).item()
    assert final < result["losses_autograd"][-1]  # one more step's worth of progress after the last logged loss


def test_forgetting_zero_grad_doubles_the_gradient(result):
    torch.testing.assert_close(result["doubled_grad"], 2 * result["single_grad"], atol=1e-6, rtol=1e-6)


def test_bad_shapes_are_clear_errors():
    params = init_mlp(3, 4, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        mlp_forward(params, torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="y must have shape"):
        mlp_forward(params, torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="MLP sizes must be positive"):
        init_mlp(3, 0, 2)
