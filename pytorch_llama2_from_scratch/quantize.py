"""Weight-only int8 quantisation of a LLaMA: a quarter of fp32's bytes per token, activations stay floating point.

    from pytorch_llama2_from_scratch.quantize import quantize_int8_, save_quantized, load_quantized

    quantize_int8_(model)                  # every nn.Linear -> Int8Linear, in place
    save_quantized(model, "llama-int8.pt") # atomic; int8 weights + scales + the ModelArgs
    model = load_quantized("llama-int8.pt")

Per-output-channel symmetric scales (one float per row o of the weight W, shape (out, in))::

    s_o   = max_i |W[o, i]| / 127
    Q[o,i] = round(W[o, i] / s_o)  in [-127, 127]   (int8)
    y_o   = sum_i x_i W[o, i]  ~=  s_o * sum_i x_i Q[o, i]

The scale factors out of the sum over ``i``, so the kernel can multiply by the int8 values directly and apply
``s_o`` once per output; the weight rounding error is at most ``s_o / 2`` per element. Decode reads each weight
once per token, so the step reads ~1 byte per weight instead of 4 (fp32) or 2 (bf16).

Three kernels:

* ``"gemv"`` (CPU default when it builds) -- :mod:`cpu_kernels`: each int8 row is loaded once, widened to fp32 in
  registers and multiplied into the fp32 activations (1-8 rows per pass: decode steps and speculative
  verification; prefill goes in chunks of 8 rows). Activations are not rounded.
* ``"int8pack"`` -- PyTorch's ``aten._weight_int8pack_mm(x, Q, s)`` (CPU, MPS and CUDA builds): a matmul that
  reads the int8 weights directly. On CPU it is fast for bf16/fp16 activations only, so there the activation
  of each linear is rounded to bf16 (``act_dtype``); the accuracy cost is measured in lesson 22. The CPU
  fallback when the ``gemv`` kernel cannot be built (no C++ compiler).
* ``"dequant"`` -- ``F.linear(x, Q.to(x.dtype)) * s``: plain ops, which ``torch.compile`` fuses into one kernel
  on CUDA (no fp copy of the weights is materialised there); eager it *adds* the bytes of the fp copy.

The token embedding stays in floating point: decoding reads only one row of it per token.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from pytorch_basis.common import atomic_torch_save
from pytorch_llama2_from_scratch import cpu_kernels
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer

__all__ = [
    "WEIGHT_FORMATS",
    "Int8Linear",
    "QuantizationError",
    "load_quantized",
    "quantize_int8_",
    "quantize_per_channel",
    "save_quantized",
    "with_weights",
]

FORMAT = "llama2-weight-only-int8"
KERNELS = ("auto", "gemv", "int8pack", "dequant")


class QuantizationError(ValueError):
    """Bad input to quantisation or to a quantised checkpoint; the message names the problem."""


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``(Q int8 (out, in), s float32 (out,))`` with ``W ~= s[:, None] * Q``."""
    if w.dim() != 2 or not w.is_floating_point():
        raise QuantizationError(f"expected a floating-point 2-D weight, got {w.dtype} {tuple(w.shape)}")
    w = w.detach().float()
    scales = w.abs().amax(dim=1) / 127.0  # (out,)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row: any scale works
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    """``y = (x @ Q^T) * s (+ bias)`` with int8 ``Q`` (out, in) and per-row scales ``s`` (out,).

    ``act_dtype``: dtype the activations are cast to for the matmul (the output is cast back to x's dtype).
    Buffers ``weight`` and ``scales`` are persistent, so ``state_dict`` holds the quantised model.
    """

    def __init__(
        self, in_features: int, out_features: int, act_dtype=torch.bfloat16, kernel="int8pack", device=None,
        bias: bool = False,
    ):  # fmt: skip
        super().__init__()
        if kernel not in KERNELS[1:]:
            raise QuantizationError(f"kernel must be one of {KERNELS[1:]}, got {kernel!r}")
        if kernel == "gemv" and act_dtype != torch.float32:
            raise QuantizationError(f"kernel 'gemv' multiplies float32 activations, got act_dtype {act_dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.act_dtype = act_dtype
        self.kernel = kernel
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=act_dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, act_dtype=torch.bfloat16, kernel="int8pack") -> Int8Linear:
        q, s = quantize_per_channel(linear.weight)
        bias = linear.bias is not None
        mod = cls(linear.in_features, linear.out_features, act_dtype, kernel, device=linear.weight.device, bias=bias)
        mod.weight.copy_(q)
        mod.scales.copy_(s.to(act_dtype))
        if bias:  # Qwen2's q/k/v biases stay in floating point (out,) values: nothing to gain by quantising
            mod.bias.copy_(linear.bias.detach())
        return mod

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        """The weight the kernel effectively multiplies by: ``s[:, None] * Q`` (out, in)."""
        return self.scales.to(dtype)[:, None] * self.weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(self.act_dtype)  # (..., in) -> (N, in)
        if self.kernel == "gemv":
            y = cpu_kernels.linear(x2, self.weight, self.scales)  # (N, out), 8 rows per pass over the weights
        elif self.kernel == "int8pack":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)  # (N, out)
        else:
            y = F.linear(x2, self.weight.to(x2.dtype)) * self.scales
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # (N, out) -> (..., out)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, int8 weights, act {self.act_dtype}, kernel={self.kernel}"


def _default_kernel(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    if device.type == "cuda":
        return "dequant"
    if dtype == torch.float32 and cpu_kernels.available_on(device):
        return "gemv"
    return "int8pack"


def _default_act_dtype(device: torch.device, dtype: torch.dtype, kernel: str = "int8pack") -> torch.dtype:
    # the CPU int8pack kernel is vectorised for 16-bit activations only (~8x faster than with fp32 ones)
    if kernel == "int8pack" and device.type == "cpu" and dtype == torch.float32:
        return torch.bfloat16
    return dtype


def _linears(model: nn.Module, skip: tuple[str, ...]):
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not any(full == s or full.startswith(s + ".") for s in skip):
                yield module, child_name, full, child


def is_quantized(model: nn.Module) -> str | None:
    """Name of the first Int8Linear in ``model`` or None."""
    return next((n for n, m in model.named_modules() if isinstance(m, Int8Linear)), None)


@torch.no_grad()
def quantize_int8_(
    model: nn.Module, act_dtype: torch.dtype | None = None, kernel: str = "auto", skip: tuple[str, ...] = ()
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (except names in ``skip``) by an :class:`Int8Linear`, in place.

    The fp weight of each linear is freed as soon as it is replaced, so peak memory grows by one matrix only.
    Raises :class:`QuantizationError` if the model is already quantised.
    """
    if kernel not in KERNELS:
        raise QuantizationError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    already = is_quantized(model)
    if already is not None:
        raise QuantizationError(
            f"model is already quantised to int8 ({already} is an Int8Linear); quantise the floating-point model once"
        )
    targets = list(_linears(model, skip))
    if not targets:
        raise QuantizationError("model has no nn.Linear to quantise")
    device = targets[0][3].weight.device
    kernel = _default_kernel(device, targets[0][3].weight.dtype) if kernel == "auto" else kernel
    if kernel == "gemv" and not cpu_kernels.available_on(device):
        raise QuantizationError(
            f"kernel 'gemv' needs the CPU decode kernel on a CPU model ({device}): "
            f"{cpu_kernels.unavailable_reason() or 'model is not on the CPU'}"
        )
    for parent, child_name, _, linear in targets:
        act = act_dtype or _default_act_dtype(device, linear.weight.dtype, kernel)
        setattr(parent, child_name, Int8Linear.from_linear(linear, act, kernel))
    return model


# ============================================================================================ checkpoints


def save_quantized(model: Transformer, path: str | os.PathLike) -> None:
    """Atomically write ``{"format", "args", "state_dict", "act_dtype", "kernel"}`` of a quantised Transformer."""
    first = is_quantized(model)
    if first is None:
        raise QuantizationError("save_quantized needs a quantised model; call quantize_int8_(model) first")
    mod = model.get_submodule(first)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {
        "format": FORMAT,
        "args": model.args.to_dict(),
        "state_dict": state,
        "act_dtype": str(mod.act_dtype).replace("torch.", ""),
        "kernel": mod.kernel,
        "int8": sorted(n for n, m in model.named_modules() if isinstance(m, Int8Linear)),
    }
    atomic_torch_save(obj, path)


def load_quantized(path: str | os.PathLike, device: torch.device | str = "cpu", kernel: str | None = None):
    """Rebuild the quantised Transformer written by :func:`save_quantized` (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise QuantizationError(f"quantised checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one clear line
        raise QuantizationError(f"cannot read quantised checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise QuantizationError(f"{path} is not a weight-only int8 checkpoint written by save_quantized")
    args = ModelArgs(**obj["args"])
    act = getattr(torch, obj["act_dtype"])
    kernel = kernel or obj["kernel"]
    if kernel == "gemv" and not cpu_kernels.available_on(device):
        kernel = "int8pack"  # written where the CPU kernel was built; same weights, PyTorch's int8 matmul here
    with torch.device("meta"):
        model = Transformer(args)
    int8_names = set(obj["int8"])
    for parent, child_name, full, linear in list(_linears(model, ())):
        if full in int8_names:
            setattr(parent, child_name, Int8Linear(linear.in_features, linear.out_features, act, kernel,
                                                   device="meta", bias=linear.bias is not None))  # fmt: skip
    state = obj["state_dict"]
    model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise QuantizationError(
            f"{path}: state_dict does not match its args (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    model.reset_cache()  # non-persistent cache buffers came out of to_empty uninitialised
    return model.eval()


# ============================================================================================ weight formats

WEIGHT_FORMATS = ("fp32", "bf16", "fp16", "int8")
_FLOAT_FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def with_weights(model: Transformer, fmt: str) -> Transformer:
    """``model`` with its weights stored as ``fmt`` (one of :data:`WEIGHT_FORMATS`), for the decode lessons'
    side-by-side comparisons: ``model`` itself if it is already in that floating-point dtype, else a copy --
    converted with ``.to(dtype)`` (fp32, bf16, fp16) or quantised with :func:`quantize_int8_` (int8)."""
    if fmt == "int8":
        return quantize_int8_(copy.deepcopy(model))
    if fmt not in _FLOAT_FORMATS:
        raise QuantizationError(f"weight format must be one of {WEIGHT_FORMATS}, got {fmt!r}")
    if model.norm.weight.dtype == _FLOAT_FORMATS[fmt] and is_quantized(model) is None:
        return model
    return copy.deepcopy(model).to(_FLOAT_FORMATS[fmt])
