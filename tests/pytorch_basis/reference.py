"""Chapter 1's way of applying the tolerance policy (``tests/numerics.py``) to a reference written in the test.

Most chapter-1 references are formulas or torch built-ins (``torch.func``, ``torch.autograd.functional``) that
run in any precision, so every comparison is rule 1 of the policy: run the reference on the lesson's own inputs
once in float64 (``ref64``; upcasting the fp32 inputs is exact, so this is the true value at those inputs) and
once in the precision of the result under test (``ref32``), then ``assert_close_to_fp64(ours, ref64, ref32)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from tests.numerics import assert_close_to_fp64


def cast(obj, dtype: torch.dtype):
    """``obj`` with every floating tensor (in dicts, lists, tuples, modules) cast to ``dtype``; the rest unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj).to(dtype)
    if isinstance(obj, dict):
        return {k: cast(v, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cast(v, dtype) for v in obj)
    if isinstance(obj, float):
        return torch.tensor(obj, dtype=dtype)
    return obj


def _dtype_of(obj) -> torch.dtype:
    if isinstance(obj, torch.Tensor):
        return obj.dtype
    if isinstance(obj, dict):
        return _dtype_of(next(iter(obj.values())))
    if isinstance(obj, (list, tuple)):
        return _dtype_of(obj[0])
    return torch.float32


def _compare(ours, ref64, ref32, what: str, **kw) -> None:
    if isinstance(ours, dict):
        for k in ours:
            _compare(ours[k], ref64[k], ref32[k], f"{what}[{k}]", **kw)
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(ref64), f"{what}: {len(ours)} values, reference has {len(ref64)}"
        for i, (a, r64, r32) in enumerate(zip(ours, ref64, ref32)):
            _compare(a, r64, r32, f"{what}[{i}]", **kw)
    else:
        ours = torch.as_tensor(ours)
        ref64, ref32 = torch.as_tensor(ref64), torch.as_tensor(ref32)
        assert_close_to_fp64(ours, ref64.reshape(ours.shape), ref32.reshape(ours.shape), what=what, **kw)


def assert_matches(ours, reference: Callable, *inputs, what: str = "", **kw) -> None:
    """``ours`` (a tensor, a list or a dict of tensors) against ``reference(*inputs)`` run in float64 and in the
    precision of ``ours``. ``inputs`` are the lesson's inputs (tensors, dicts of tensors, modules, floats)."""
    ref64 = reference(*cast(inputs, torch.float64))
    ref32 = reference(*cast(inputs, _dtype_of(ours)))
    _compare(ours, ref64, ref32, what or getattr(reference, "__name__", "value"), **kw)
