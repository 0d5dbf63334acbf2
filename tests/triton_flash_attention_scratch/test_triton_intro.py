"""Lesson 14's Triton kernels (vector add, fused softmax, tiled matmul) vs PyTorch, including partial tiles."""

import pytest
import torch

from tests.numerics import assert_close_scaled, assert_close_to_fp64
from triton_flash_attention_scratch.triton_intro import matmul, softmax, vector_add

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n,block", [(1, 16), (1000, 256), (4096, 1024), (0, 64)])
def test_vector_add_matches_torch(n, block):
    x, y = torch.randn(n, device=DEV), torch.randn(n, device=DEV)
    torch.testing.assert_close(vector_add(x, y, block=block), x + y, atol=0, rtol=0)


def test_vector_add_keeps_shape_and_fp16():
    x, y = torch.randn(3, 7, device=DEV).half(), torch.randn(3, 7, device=DEV).half()
    torch.testing.assert_close(vector_add(x, y, block=16), x + y, atol=0, rtol=0)


@pytest.mark.parity
@pytest.mark.parametrize("rows,cols", [(1, 1), (37, 100), (5, 128), (3, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_softmax_matches_torch(rows, cols, dtype):
    x = (torch.randn(rows, cols, device=DEV) * 10).to(dtype)  # large values: needs the max subtraction
    ref64 = torch.softmax(x.double(), dim=-1)
    if dtype == torch.float32:
        assert_close_to_fp64(softmax(x), ref64, torch.softmax(x, dim=-1))
    else:  # fp32 inside the kernel, one fp16 rounding of the output: within a few fp16 ulp of max p
        assert_close_scaled(softmax(x).double(), ref64, ulps=4, dtype=torch.float16)


def test_softmax_of_a_strided_view():
    x = torch.randn(20, 30, device=DEV)[::2, 5:]  # row stride 60, rows of 25
    assert_close_to_fp64(softmax(x), torch.softmax(x.double(), -1), torch.softmax(x, -1))


@pytest.mark.parity
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (70, 50, 90), (64, 64, 64), (33, 100, 17)])
def test_matmul_matches_torch_fp32(m, k, n):
    a, b = torch.randn(m, k, device=DEV), torch.randn(k, n, device=DEV)
    assert_close_to_fp64(matmul(a, b), a.double() @ b.double(), a @ b)


def test_matmul_fp16_transposed_input_and_small_tiles():
    a = torch.randn(40, 72, device=DEV).half()
    b = torch.randn(24, 72, device=DEV).half().t()  # (72, 24), column-major: strides are honoured
    ref64 = a.double() @ b.double()
    got = matmul(a, b, block_m=16, block_n=16, block_k=16, group_m=2)
    assert_close_scaled(got.double(), ref64, ulps=4, dtype=torch.float16)  # fp32 accumulation, one fp16 rounding


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="x and y must match"):
        vector_add(torch.randn(3, device=DEV), torch.randn(4, device=DEV))
    with pytest.raises(ValueError, match="power of two"):
        vector_add(torch.randn(3, device=DEV), torch.randn(3, device=DEV), block=100)
    with pytest.raises(ValueError, match="2-D tensor"):
        softmax(torch.randn(2, 3, 4, device=DEV))
    with pytest.raises(TypeError, match="floating-point"):
        softmax(torch.ones(2, 3, dtype=torch.int64, device=DEV))
    with pytest.raises(ValueError, match=r"\(M, K\) @ \(K, N\)"):
        matmul(torch.randn(3, 4, device=DEV), torch.randn(5, 6, device=DEV))
    with pytest.raises(TypeError, match="share a float16/bfloat16/float32 dtype"):
        matmul(torch.randn(3, 4, device=DEV), torch.randn(4, 6, device=DEV).double())
    with pytest.raises(ValueError, match="block_k must be a power of two >= 16"):
        matmul(torch.randn(3, 4, device=DEV), torch.randn(4, 6, device=DEV), block_k=8)
    with pytest.raises(ValueError, match="needs (cpu|cuda) tensors"):
        vector_add(torch.empty(3, device="meta"), torch.empty(3, device="meta"))


@pytest.mark.parametrize(
    "triton_version, numpy_version, broken",
    [
        ("3.6.0", "2.4.6", True),  # measured: "only 0-dimensional arrays can be converted to Python scalars"
        ("3.6.0", "2.4.0rc1", True),
        ("3.6.0", "2.3.5", False),  # measured: runs
        ("3.7.1", "2.4.6", False),  # measured: runs
        ("3.9.0+git1234", "2.4.6", False),
    ],
)
def test_interpreter_problem_names_the_versions_and_the_fix(triton_version, numpy_version, broken):
    from triton_flash_attention_scratch.triton_intro import interpreter_problem

    problem = interpreter_problem(triton_version, numpy_version)
    if broken:
        assert triton_version in problem and numpy_version in problem and "numpy<2.4" in problem, problem
        assert "\n" not in problem
    else:
        assert problem is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for the CPU interpreter")
def test_an_unusable_interpreter_stops_every_launch_with_one_line(monkeypatch):
    """Lesson 14's kernels and the flash-attention kernels check before they launch (instead of an
    InterpreterError traceback from inside the kernel)."""
    from triton_flash_attention_scratch import triton_flash as tf
    from triton_flash_attention_scratch import triton_intro

    monkeypatch.setattr(triton_intro, "interpreter_problem", lambda: "Triton 3.6.0's CPU interpreter ...")
    x = torch.randn(4, 16)
    for call in (lambda: vector_add(x, x), lambda: softmax(x), lambda: matmul(x, x.T),
                 lambda: tf.flash_attention(*(torch.randn(1, 2, 16, 16) for _ in range(3)))):  # fmt: skip
        with pytest.raises(ImportError, match="Triton 3.6.0's CPU interpreter"):
            call()
