"""First Triton kernels: vector add, a fused row-wise softmax and a tiled matmul, each with masked tails.

Triton's programming model in one paragraph: you write the program of *one block* (a "program instance"); the
launch grid says how many instances run; ``tl.program_id(axis)`` tells an instance which block it owns. Inside,
values are whole tiles (``tl.arange(0, BLOCK)`` is a vector of BLOCK offsets), loads and stores take a tensor of
pointers and a ``mask`` for the elements that exist, and the compiler decides threads, vectorisation and shared
memory. Tile sizes must be compile-time constants (``tl.constexpr``) and powers of two, so the last block of any
length that is not a multiple of BLOCK is partial: every load and store here is masked.

On a machine without CUDA the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set below before
``import triton``), which executes the same code with NumPy on the CPU: slow, but good for checking correctness.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # must happen before `import triton` defines any kernel
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = (version.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def interpreter_problem(triton_version: str | None = None, numpy_version: str | None = None) -> str | None:
    """Why Triton's interpreter cannot run kernels with this Triton and NumPy, or None (default: the installed ones).

    Triton 3.6's interpreter keeps ``tl.program_id`` as a 1-element NumPy array and calls ``int()`` on values
    derived from it (a loop bound, an index); NumPy deprecated that conversion in 1.25 and refuses it from 2.4 on
    ("only 0-dimensional arrays can be converted to Python scalars"). Measured: triton 3.6.0 runs these kernels
    with NumPy 2.3.5 and fails with 2.4.6; triton 3.7.1, 3.8.0 and 3.9.0 run them with 2.4.6."""
    import numpy as np

    tv, nv = triton_version or triton.__version__, numpy_version or np.__version__
    if _major_minor(tv) < (3, 7) and _major_minor(nv) >= (2, 4):
        return (f"Triton {tv}'s CPU interpreter does not work with NumPy {nv}: "
                "pip install 'numpy<2.4' or 'triton>=3.7' (or run on a CUDA GPU)")  # fmt: skip
    return None


def check_interpreter() -> None:
    """Under ``TRITON_INTERPRET=1``: one clear error, before any launch, if the interpreter cannot run here (an
    ImportError, as for a missing package: the installed packages do not work together, and the lessons' command
    line prints it as one line)."""
    problem = interpreter_problem() if INTERPRET else None
    if problem:
        raise ImportError(problem)


def _check_device(*tensors: torch.Tensor) -> None:
    """Compiled kernels need CUDA tensors; the interpreter needs CPU tensors. Say so instead of crashing."""
    check_interpreter()
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
        want = "cpu" if INTERPRET else "cuda"
        if t.device.type != want:
            mode = "the Triton interpreter (TRITON_INTERPRET=1)" if INTERPRET else "compiled Triton"
            raise ValueError(f"{mode} needs {want} tensors, got a tensor on {t.device}")
    if INTERPRET and any(t.dtype == torch.bfloat16 for t in tensors):
        raise TypeError("bfloat16 needs a CUDA GPU: the Triton interpreter does not compute it correctly")


# ============================================================================================ vector add
@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    """out[i] = x[i] + y[i]; program ``pid`` owns elements [pid·BLOCK, (pid+1)·BLOCK)."""
    pid = tl.program_id(axis=0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) element indices of this program
    mask = offsets < n_elements  # the last block is partial: guard every access
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


def vector_add(x: torch.Tensor, y: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``x + y`` for two contiguous tensors of the same shape and dtype, with one Triton program per block."""
    _check_device(x, y)
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"x and y must match: got {tuple(x.shape)} {x.dtype} and {tuple(y.shape)} {y.dtype}")
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    grid = (triton.cdiv(n, block),)  # enough programs to cover every element
    add_kernel[grid](x, y, out, n, BLOCK=block)
    return out


# ============================================================================================ fused softmax
@triton.jit
def softmax_kernel(out_ptr, in_ptr, in_row_stride, out_row_stride, n_rows, n_cols, BLOCK: tl.constexpr):
    """Row-wise softmax, one row per program, the whole row in registers: one read and one write per element.

    softmax(x)_j = exp(x_j - max(x)) / Σ_k exp(x_k - max(x))        (subtracting the max avoids overflow)

    PyTorch's eager ``x - x.max(); exp; / sum`` reads and writes the matrix several times; fusing the steps into
    one kernel is what makes it memory-bound at one round trip. Padding lanes load ``-inf`` so they add exp(-inf)=0.
    """
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * in_row_stride + cols, mask=mask, other=float("-inf")).to(tl.float32)
    x = x - tl.max(x, axis=0)
    num = tl.exp(x)
    y = num / tl.sum(num, axis=0)
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of a 2-D tensor (rows up to 2**16 wide; computed in fp32, returned in x.dtype)."""
    _check_device(x)
    if x.dim() != 2:
        raise ValueError(f"softmax expects a 2-D tensor (rows, cols), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"softmax needs a floating-point tensor, got {x.dtype}")
    n_rows, n_cols = x.shape
    if n_cols > 2**16:
        raise ValueError(f"rows of {n_cols} elements do not fit one program's registers (limit 65536)")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    block = triton.next_power_of_2(n_cols)
    softmax_kernel[(n_rows,)](out, x, x.stride(0), out.stride(0), n_rows, n_cols, BLOCK=block)
    return out


# ============================================================================================ tiled matmul
@triton.jit
def matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """C = A B, one (BLOCK_M × BLOCK_N) tile of C per program, looping over K in BLOCK_K steps.

    C_tile = Σ_kk A[rows, kk:kk+BLOCK_K] @ B[kk:kk+BLOCK_K, cols]      (accumulated in fp32)

    Programs are numbered in *grouped* order: GROUP_M tile-rows are walked column by column, so programs that run
    at the same time share rows of A and columns of B and find them in the L2 cache.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(
            a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
            mask=(offs_m[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        )  # (BLOCK_M, BLOCK_K); zeros past the edge add nothing to the sum
        b = tl.load(
            b_ptr + kk[:, None] * stride_bk + offs_n[None, :] * stride_bn,
            mask=(kk[:, None] < K) & (offs_n[None, :] < N),
            other=0.0,
        )  # (BLOCK_K, BLOCK_N)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    block_m: int = 64,
    block_n: int = 64,
    block_k: int = 32,
    group_m: int = 8,
) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N) of one dtype (fp16, bf16 on GPU, fp32), any strides."""
    _check_device(a, b)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs (M, K) @ (K, N), got {tuple(a.shape)} @ {tuple(b.shape)}")
    if a.dtype != b.dtype or a.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"a and b must share a float16/bfloat16/float32 dtype, got {a.dtype} and {b.dtype}")
    for name, blk in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        if blk < 16 or blk & (blk - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot needs tiles of at least 16), got {blk}")
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    if c.numel() == 0:
        return c.zero_()
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    matmul_kernel[grid](
        a, b, c, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        INPUT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    return c
