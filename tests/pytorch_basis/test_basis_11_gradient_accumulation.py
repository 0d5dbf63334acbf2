"""Lesson 11: micro-batch gradient accumulation equals the large-batch gradient (vs torch.func.grad)."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from pytorch_basis.autograd_utils import MLP_PARAMS, init_mlp


def reference_loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(x @ params["W1"] + params["b1"])
    return F.cross_entropy(h @ params["W2"] + params["b2"], y)


@pytest.fixture
def lesson(load_lesson):
    return load_lesson("pytorch_basis", 11)


@pytest.fixture
def result(lesson):
    return lesson.main(batch=24, micro_batch=8, steps=5)


def close(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-5) for k in MLP_PARAMS)


def test_full_batch_grad_matches_torch_func(result):
    ref = grad(reference_loss)(result["start"], result["x"], result["y"])
    assert close(result["grads"]["full"], ref)


def test_accumulation_equals_large_batch(result):
    g, K = result["grads"], result["n_micro"]
    assert K == 3
    assert close(g["n_k/N"], g["full"])
    assert close(g["1/K"], g["full"])  # equal micro-batches: 1/K is n_k/N
    assert close(g["none"], {k: K * v for k, v in g["full"].items()}, atol=1e-5)
    assert close(result["params_large"], result["params_accumulated"], atol=1e-5)


def test_unequal_micro_batches(result):
    assert len(set(result["uneven_sizes"])) > 1
    assert close(result["uneven_ok"], result["grads"]["full"])
    assert not close(result["uneven_bad"], result["grads"]["full"], atol=1e-4)


def test_bad_arguments(lesson):
    params = init_mlp(4, 5, 3)
    x, y = torch.randn(6, 4), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        lesson.accumulated_grads(params, x, y, 0)
    with pytest.raises(ValueError, match="unknown scaling"):
        lesson.accumulated_grads(params, x, y, 2, scaling="mean")
