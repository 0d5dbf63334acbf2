"""Small-M matrix products for CPU decoding: ``y = x @ W^T (* s)`` for 1-8 rows of x, W read once.

    from pytorch_llama2_from_scratch import cpu_kernels

    if cpu_kernels.available():                      # builds cpu_kernels.cpp once (about a minute)
        y = cpu_kernels.linear(x, w)                 # fp32 W:  x (..., K) @ W^T          -> (..., N)
        y = cpu_kernels.linear(x, q, scale=s)        # int8 W:  s * (x @ Q^T), x stays fp32

A decode step multiplies one activation row by every weight matrix; speculative verification multiplies k+1
rows. Both are memory-bound: the time is the time to read W. Two PyTorch CPU kernels fall short of that:

* fp32: MKL's GEMV streams W close to the memory bandwidth for one row, but for 2-8 rows it takes a GEMM path
  that packs W first -- measured ~2x the time of one row for 4 rows, although W is read only once;
* int8: ``aten._weight_int8pack_mm`` reads 1 byte per weight but streams it at a lower rate than fp32, and on
  CPU it needs 16-bit activations to be fast (the activations are rounded to bf16).

The kernel in ``cpu_kernels.cpp`` loads every row of W once and multiplies it into all M rows of x (which stay in
L1): ``y[m, o] = s[o] * sum_k x[m, k] W[o, k]`` for ``m < M <= 8``; int8 weights are widened to fp32 in
registers, so the activations are never rounded. It is compiled on the machine that runs it
(``-O3 -march=native``: AVX-512, AVX2 + FMA, or plain loops), registered as the PyTorch operator
``torch.ops.llm_scratch.small_m_linear`` (with a shape function, so ``torch.compile`` calls it as an opaque
kernel), and cached by PyTorch's extension builder (``TORCH_EXTENSIONS_DIR``). Without a C++ compiler,
:func:`available` is False, says why in :func:`unavailable_reason`, and every caller falls back to PyTorch's own
kernels. ``LLM_SCRATCH_NO_CPU_KERNELS=1`` switches the kernel off.

Two weight layouts:

* rows (:func:`linear`): W as it is, (N, K). Each output is a dot product of a W row with x, summed across the
  vector lanes at the end of the row. Used for the int8 weights of :mod:`quantize` (``kernel="gemv"``).
* panels (:func:`pack_panels`, :func:`linear_panels`): W^T in panels of 16 outputs, k-major. 16 outputs live in
  one vector register and need no lane sums -- which matter with 7 rows of x: measured ~1.0 GEMV for 7 rows,
  where the rows layout took ~1.6 and ``F.linear`` ~2; with a software prefetch ahead of each panel's stream one
  row runs ~5-10 % faster than MKL's GEMV. Costs a packed copy of the weight. :class:`PanelLinear` /
  :func:`use_panel_kernel_` put it under a model's fp32 linears for decode steps and speculative verification
  (lessons 23, :mod:`decode_ladder`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MAX_ROWS",
    "PANEL_LINEAR_ROWS",
    "PanelLinear",
    "available",
    "available_on",
    "linear",
    "linear_panels",
    "pack_panels",
    "unavailable_reason",
    "use_panel_kernel_",
]

MAX_ROWS = 8  # the kernel's row count is a template parameter 1..8; more rows are done in chunks of 8
PANEL_LINEAR_ROWS = 16  # PanelLinear's panels up to here (2 chunks); measured: 16 rows 2.1 GEMVs vs 2.4 for F.linear,
# 24 rows alike, 32 rows F.linear ahead (one Intel core, the 124.7 M model's matrices)
SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_state: dict = {}


def _cpu_tag() -> str:
    """Hash of the CPU's feature flags + kernel source + torch version: a ``-march=native`` build from another
    CPU (more instructions) must never be loaded here."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = platform.processor()
    h = hashlib.sha256((flags + SOURCE.read_text() + torch.__version__ + sys.version).encode()).hexdigest()
    return h[:12]


def _build() -> None:
    if os.environ.get("LLM_SCRATCH_NO_CPU_KERNELS"):
        _state["error"] = "switched off by LLM_SCRATCH_NO_CPU_KERNELS"
        return
    if not hasattr(torch.ops, "llm_scratch") or not hasattr(torch.ops.llm_scratch, "small_m_linear"):
        from torch.utils.cpp_extension import _get_build_directory, load

        name = f"llm_scratch_cpu_kernels_{_cpu_tag()}"
        if not (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").exists():
            print("building the CPU decode kernel (cpu_kernels.cpp, once per machine; under a minute) ...",
                  file=sys.stderr, flush=True)  # fmt: skip
        try:
            load(
                name=name,
                sources=[str(SOURCE)],
                extra_cflags=["-O3", "-march=native"],
                is_python_module=False,
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001 - no compiler, no ninja, ...: fall back, and say why
            _state["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
            return

    @torch.library.register_fake("llm_scratch::small_m_linear")
    def _(x, w, scale):
        return x.new_empty((x.shape[0], w.shape[0]))

    @torch.library.register_fake("llm_scratch::small_m_linear_panels")
    def _(x, wp, n, scale):
        return x.new_empty((x.shape[0], n))

    _state["ok"] = True


def available() -> bool:
    """True if the kernel is built (building it on the first call) and loaded."""
    if not _state:
        _build()
    return bool(_state.get("ok"))


def available_on(device: torch.device | str) -> bool:
    """True if tensors on ``device`` can use the kernel: a CPU device and :func:`available`."""
    return torch.device(device).type == "cpu" and available()


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (``None`` if it is True)."""
    return None if available() else _state.get("error", "unknown")


def linear(
    x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ w.T`` (times ``scale`` per output, plus ``bias``) with the small-M kernel.

    x: (..., K) float32; w: (N, K) float32 or int8; scale: (N,) float32 or None; returns (..., N) float32.
    More than :data:`MAX_ROWS` rows are done in chunks of 8 rows (W is then read once per chunk).
    """
    if not available():
        raise RuntimeError(f"the CPU decode kernel is not available: {unavailable_reason()}")
    if x.dtype != torch.float32 or w.dtype not in (torch.float32, torch.int8):
        raise ValueError(f"cpu_kernels.linear needs float32 x and float32/int8 w, got {x.dtype} and {w.dtype}")
    if w.dim() != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"cpu_kernels.linear: x (..., {x.shape[-1]}) does not match w {tuple(w.shape)}")
    if scale is not None and (scale.dtype != torch.float32 or scale.shape != (w.shape[0],)):
        raise ValueError(f"cpu_kernels.linear: scale must be float32 of shape ({w.shape[0]},)")
    return _in_chunks(lambda c: torch.ops.llm_scratch.small_m_linear(c, w, scale), x, w.shape[0], bias)


def _in_chunks(op, x: torch.Tensor, n: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``op`` (M <= 8 rows, K) -> (M, n) applied to the rows of ``x`` (..., K) in chunks of :data:`MAX_ROWS`
    (W is read once per chunk), plus ``bias``; returns (..., n)."""
    x2 = x.reshape(-1, x.shape[-1])  # (..., K) -> (M, K)
    if x2.shape[0] == 0:
        y = x2.new_empty((0, n))
    elif x2.shape[0] <= MAX_ROWS:
        y = op(x2)
    else:
        y = torch.cat([op(c) for c in x2.split(MAX_ROWS)])
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], n)  # (M, n) -> (..., n)


def pack_panels(w: torch.Tensor) -> torch.Tensor:
    """W (N, K) -> its panel layout ``Wp (ceil(N/16), K, 16)`` with ``Wp[p, k, j] = W[16 p + j, k]`` (zero rows pad N).

    Each panel is W^T for 16 outputs, stored k-major: the kernel streams it contiguously and keeps the 16 output
    sums in one vector register, so no horizontal additions are needed at the end of a row."""
    if w.dim() != 2:
        raise ValueError(f"pack_panels needs a 2-D weight, got shape {tuple(w.shape)}")
    n, k = w.shape
    n16 = -(-n // 16)
    padded = torch.zeros(n16 * 16, k, dtype=w.dtype, device=w.device)
    padded[:n] = w.detach()
    return padded.view(n16, 16, k).transpose(1, 2).contiguous()  # (N16*16, K) -> (N16, 16, K) -> (N16, K, 16)


def linear_panels(
    x: torch.Tensor, wp: torch.Tensor, n: int, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`linear` with the weight in the panel layout of :func:`pack_panels` (``n`` = real output count)."""
    if not available():
        raise RuntimeError(f"the CPU decode kernel is not available: {unavailable_reason()}")
    return _in_chunks(lambda c: torch.ops.llm_scratch.small_m_linear_panels(c, wp, n, scale), x, n, bias)


class PanelLinear(nn.Linear):
    """An ``nn.Linear`` that also holds its fp32 weight in the panel layout (``panel_weight``, a non-persistent
    buffer: the state_dict is unchanged) and multiplies 1..16 rows (:data:`PANEL_LINEAR_ROWS`) -- decode steps,
    speculative verification, short prompts -- with the panel kernel (one row: measured ~5-15 % faster than MKL's
    GEMV on one Intel core; 7 rows: ~1 GEMV where ``F.linear`` takes ~2; 9-16 rows: two chunks of 8). More rows
    stay with ``F.linear``. Costs a second copy of the weight.
    The panels are a copy: after changing ``weight`` in place, call :func:`use_panel_kernel_` again to repack."""

    panel_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if 1 <= rows <= PANEL_LINEAR_ROWS and x.dtype == torch.float32 and self.panel_weight.dtype == torch.float32:
            return linear_panels(x, self.panel_weight, self.out_features, bias=self.bias)
        return F.linear(x, self.weight, self.bias)


def use_panel_kernel_(model: nn.Module, enable: bool = True, repack: bool = True, keep: bool = False) -> int:
    """Turn every fp32 CPU ``nn.Linear`` of ``model`` into a :class:`PanelLinear`, packing its weight, or with
    ``enable=False`` back into a plain ``nn.Linear``, dropping the panels unless ``keep``. In place: the same
    module objects and weight tensors, so a benchmark can compare both on the very same memory (switch with
    ``repack=False, keep=True`` to skip the packing). Repack after changing the weights. Returns how many modules
    were changed (0 if the kernel is not available)."""
    if enable and not available():
        return 0
    n = 0
    for m in model.modules():
        if enable and type(m) in (nn.Linear, PanelLinear) and m.weight.dtype == torch.float32 \
                and m.weight.device.type == "cpu":  # fmt: skip
            if repack or getattr(m, "panel_weight", None) is None:
                m.register_buffer("panel_weight", pack_panels(m.weight), persistent=False)
            m.__class__ = PanelLinear
            n += 1
        elif not enable and type(m) is PanelLinear:
            m.__class__ = nn.Linear
            if not keep:
                del m.panel_weight
            n += 1
    return n
