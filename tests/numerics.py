"""The suite's one tolerance policy for floating-point comparisons (see ``tests/README.md``).

Why a policy: an fp32 result is not a number but a number *plus rounding noise*, and the noise depends on which
kernels the CPU dispatches to (AVX-512, AVX2, plain C++), on the summation order of a GEMM and on the library
version. A bare ``atol=1e-5`` on logits of size ~7 is below that noise (fp32's spacing at 7 is ~4.8e-7, and a
2-layer model accumulates hundreds of roundings), so such a test goes red on one CPU and green on another. The
policy measures the noise instead of guessing it:

1. **Against float64 when the reference can run in float64.** Run the independent reference (HF ``transformers``,
   a torch built-in, a formula) once in float64 -- that is the "true" value ``ref64`` -- and once in the precision
   under test -- ``ref32``, whose distance to ``ref64`` is the reference implementation's *own* rounding error on
   this very input. Ours may be at most ``factor`` times as far from ``ref64`` as the reference itself is, plus a
   floor of ``ulps`` units in the last place of the largest value (the floor only matters when the reference
   happens to be exact)::

       max|ours - ref64|  <=  factor * max|ref32 - ref64|  +  ulps * eps(dtype) * max|ref64|

   See :func:`assert_close_to_fp64`.
2. **Otherwise, an absolute tolerance scaled to the magnitude of the values**: ``ulps * eps(dtype) * max|expected|``
   (:func:`assert_close_scaled`), never a bare constant. Use this where no float64 run exists (Triton's interpreter
   in fp16, a comparison of two of our own code paths in low precision).
3. **Exact promises stay exact** (``torch.equal``): a resumed run equals an uninterrupted one, DDP equals one
   process on the union of the batches, greedy generation is token-for-token. Those are not tolerances.

Both helpers compare the *largest* absolute error over all elements against one scaled bound, and their failure
message prints the measured error, the bound and the reference's own error, so a failure says by how much.
"""

from __future__ import annotations

import copy

import torch

__all__ = [
    "assert_close_scaled",
    "assert_close_to_fp64",
    "eps",
    "max_abs",
    "max_abs_diff",
    "to_double",
]

# Defaults, chosen from the spread measured across CPUs (AVX-512/AMX, AVX-512-BF16, AVX2, default): our fp32 error
# was at most ~3x HF's own fp32 error on the same inputs; 8x leaves headroom without hiding bugs (a real bug is
# orders of magnitude above the noise: a wrong RoPE, mask or norm moves logits by 1e-2 .. 1e0).
DEFAULT_FACTOR = 8.0
DEFAULT_ULPS = 64


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon (spacing of floats at 1.0) of a floating dtype; float32 for integer dtypes."""
    return torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps


def max_abs(t: torch.Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def _check_finite(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise AssertionError(f"{name} has non-finite values (nan/inf)")


def assert_close_to_fp64(
    actual: torch.Tensor,
    ref64: torch.Tensor,
    ref32: torch.Tensor | None = None,
    *,
    factor: float = DEFAULT_FACTOR,
    ulps: float = DEFAULT_ULPS,
    what: str = "",
) -> float:
    """Rule 1: ``actual`` (low precision) against the float64 reference ``ref64``.

    ``ref32`` is the same reference run in ``actual``'s precision; its error ``max|ref32 - ref64|`` sets the scale
    of the allowed error. Without ``ref32`` only the ``ulps`` floor applies. Returns the measured error.
    """
    actual = torch.as_tensor(actual).detach()
    ref64 = torch.as_tensor(ref64).detach()
    _check_finite("actual", actual)
    _check_finite("reference", ref64)
    if ref64.dtype != torch.float64:
        raise AssertionError(f"ref64 must be float64, got {ref64.dtype}")
    err = max_abs_diff(actual, ref64)
    ref_err = max_abs_diff(ref32, ref64) if ref32 is not None else 0.0
    bound = factor * ref_err + ulps * eps(actual.dtype) * max_abs(ref64)
    if not err <= bound:
        label = f"{what}: " if what else ""
        raise AssertionError(
            f"{label}max|actual - ref64| = {err:.3e} > bound {bound:.3e} "
            f"(= {factor:g} x reference's own error {ref_err:.3e} + {ulps:g} ulp x max|ref64| {max_abs(ref64):.3g})"
        )
    return err


def assert_close_scaled(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    ulps: float = 4 * DEFAULT_ULPS,
    dtype: torch.dtype | None = None,
    what: str = "",
) -> float:
    """Rule 2: ``max|actual - expected| <= ulps * eps(dtype) * max|expected|`` (dtype defaults to the coarser of
    the two tensors' dtypes). For comparisons without a float64 run. Returns the measured error."""
    actual = torch.as_tensor(actual).detach()
    expected = torch.as_tensor(expected).detach()
    _check_finite("actual", actual)
    _check_finite("expected", expected)
    if dtype is None:
        dtype = max((actual.dtype, expected.dtype), key=lambda d: eps(d))
    err = max_abs_diff(actual, expected)
    scale = max_abs(expected)
    bound = ulps * eps(dtype) * scale
    if not err <= bound:
        label = f"{what}: " if what else ""
        raise AssertionError(
            f"{label}max|actual - expected| = {err:.3e} > bound {bound:.3e} "
            f"(= {ulps:g} ulp of {dtype} x max|expected| {scale:.3g})"
        )
    return err


def to_double(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 deep copy of a module (the original is left untouched) -- the usual way to get ``ref64``."""
    return copy.deepcopy(module).double()
