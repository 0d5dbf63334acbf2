"""The tolerance helpers accept rounding noise and reject differences of the size a real bug makes."""

from __future__ import annotations

import pytest
import torch

from tests.numerics import assert_close_scaled, assert_close_to_fp64, eps


def _matmul_chain(x: torch.Tensor, ws: list[torch.Tensor]) -> torch.Tensor:
    for w in ws:
        x = torch.tanh(x @ w.to(x.dtype)) * 3
    return x


def test_fp32_noise_passes_and_a_bug_sized_error_fails():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=g, dtype=torch.float64)
    ws = [torch.randn(64, 64, generator=g, dtype=torch.float64) / 8 for _ in range(4)]
    ref64 = _matmul_chain(x, ws)
    ref32 = _matmul_chain(x.float(), ws)
    # another fp32 implementation: the same maths in another summation order (x @ w computed as (w^T x^T)^T)
    ours = x.float()
    for w in ws:
        ours = torch.tanh((w.float().T.contiguous() @ ours.T.contiguous()).T) * 3
    assert_close_to_fp64(ours, ref64, ref32)
    with pytest.raises(AssertionError, match="bound"):
        assert_close_to_fp64(ours + 1e-3, ref64, ref32)


def test_reference_must_be_float64():
    with pytest.raises(AssertionError, match="float64"):
        assert_close_to_fp64(torch.zeros(3), torch.zeros(3), torch.zeros(3))


def test_nan_is_never_close():
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_scaled(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_scaled_bound_is_ulps_times_eps_times_magnitude():
    expected = torch.full((4,), 1000.0)
    bound = 16 * eps(torch.float16) * 1000.0
    assert_close_scaled(expected + 0.9 * bound, expected, ulps=16, dtype=torch.float16)
    with pytest.raises(AssertionError):
        assert_close_scaled(expected + 1.1 * bound, expected, ulps=16, dtype=torch.float16)
