"""Lesson 04: the hand-written MLP backward against torch.func.grad of an independent functional forward."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from pytorch_basis.autograd_utils import MLP_PARAMS, init_mlp, make_blobs, mlp_backward, mlp_forward
from tests.pytorch_basis.reference import assert_matches

STEPS, LR = 20, 0.5


def reference_loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same network written with F.linear (weights transposed) and log_softmax + nll_loss."""
    h = torch.tanh(F.linear(x, params["W1"].T, params["b1"]))
    return F.nll_loss(F.log_softmax(F.linear(h, params["W2"].T, params["b2"]), dim=-1), y)


def reference_grads(params: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """dL/dθ for every parameter and dL/dx, with torch.func."""
    return grad(reference_loss)(params, x, y) | {"x": grad(reference_loss, argnums=1)(params, x, y)}


def reference_sgd(params: dict, x: torch.Tensor, y: torch.Tensor, steps: int = STEPS, lr: float = LR):
    """Plain SGD on reference_loss: (losses before each step, final parameters)."""
    params, losses = dict(params), []
    for _ in range(steps):
        losses.append(reference_loss(params, x, y))
        g = grad(reference_loss)(params, x, y)
        params = {k: params[k] - lr * g[k] for k in params}
    return torch.stack(losses), params


@pytest.fixture
def result(load_lesson):
    return load_lesson("pytorch_basis", 4).main(steps=STEPS, lr=LR)


@pytest.mark.parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_manual_backward_matches_torch_func(dtype):
    g = torch.Generator().manual_seed(0)
    params = init_mlp(5, 7, 4, generator=g, dtype=dtype)
    x, y = make_blobs(11, 5, 4, generator=g, dtype=dtype)
    loss, cache = mlp_forward(params, x.clone().requires_grad_(), y)
    manual = mlp_backward(params, cache)
    plain = {k: v.detach() for k, v in params.items()}
    assert_matches(loss, lambda p, xx: reference_loss(p, xx, y), plain, x)
    assert_matches(manual, lambda p, xx: reference_grads(p, xx, y), plain, x)


def test_lesson_manual_and_autograd_match_torch_func(result):
    first, y = result["first"], result["y"]
    ref = lambda p, x: reference_grads(p, x, y)
    assert set(first["manual"]) == set(first["autograd"]) == {*MLP_PARAMS, "x"}
    assert_matches(first["manual"], ref, result["start"], result["x"], what="manual")
    assert_matches(first["autograd"], ref, result["start"], result["x"], what="autograd")
    assert_matches(torch.tensor(first["loss"]), lambda p, x: reference_loss(p, x, y), result["start"], result["x"])
    for name in (*MLP_PARAMS, "x"):  # the printed differences are the real ones
        assert result["max_diff"][name] == (first["manual"][name] - first["autograd"][name]).abs().max().item()


def test_training_loop_matches_reference_sgd_and_learns(result):
    x, y = result["x"], result["y"]
    ref = lambda p, xx: reference_sgd(p, xx, y)
    losses_opt, losses_hand = torch.tensor(result["losses_autograd"]), torch.tensor(result["losses_manual"])
    assert_matches((losses_opt, result["params"]), ref, result["start"], x, what="torch.optim.SGD")
    assert_matches((losses_hand, result["params_by_hand"]), ref, result["start"], x, what="SGD by hand")
    assert result["param_diff"] == max(
        (result["params"][n] - result["params_by_hand"][n]).abs().max().item() for n in MLP_PARAMS
    )
    assert losses_opt[-1] < 0.5 * losses_opt[0]
    final = reference_loss(result["params"], x, y).item()
    assert final < losses_opt[-1]  # one more step's worth of progress after the last logged loss


def test_forgetting_zero_grad_doubles_the_gradient(result):
    # the lesson's last gradients are taken at the trained parameters
    W2_grad = lambda p, x: grad(reference_loss)(p, x, result["y"])["W2"]
    assert_matches(result["single_grad"], W2_grad, result["params"], result["x"])
    assert_matches(result["doubled_grad"], lambda p, x: 2 * W2_grad(p, x), result["params"], result["x"])


def test_bad_shapes_are_clear_errors():
    params = init_mlp(3, 4, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        mlp_forward(params, torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="y must have shape"):
        mlp_forward(params, torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="MLP sizes must be positive"):
        init_mlp(3, 0, 2)
