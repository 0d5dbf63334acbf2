"""Step 7: intro to CUDA — grids, blocks, threads, the bounds guard, and timing with events.

A CUDA kernel is one function run by many threads at once. A launch ``kernel<<<grid, block>>>(...)`` starts
``grid`` blocks of ``block`` threads; inside, each thread finds "its" data from its coordinates:

    i = blockIdx.x * blockDim.x + threadIdx.x          (cuda/vector_add.cu: c[i] = a[i] + b[i])
    col = blockIdx.x * blockDim.x + threadIdx.x        (cuda/matrix_add.cu, 2-D grid of 2-D blocks:
    row = blockIdx.y * blockDim.y + threadIdx.y         c[row * stride + col] = a[...] + b[...])

The grid is rounded up to cover every element, ``blocks = ceil(n / threads)``, so the last block overhangs
the data and its extra threads must skip the work: ``if (i < n)``, the bounds guard — forget it and they
write past the end of the array. Kernels run asynchronously, so they are timed with CUDA *events* recorded
on the GPU's stream (cudaEventRecord / cudaEventElapsedTime, in cuda/cuda_utils.cuh), not with the host clock.

With a CUDA GPU (and nvcc) this step compiles the two .cu files with ``torch.utils.cpp_extension.load_inline``,
runs them on tensors, checks them against ``a + b`` and times them. Without a GPU it simulates the launch in
PyTorch — the same index arithmetic for every (block, thread) pair, vectorized — and shows that each element
is written exactly once and how many threads the guard idles; if nvcc is installed it also compiles the
kernels to PTX and shows the index math in GPU assembly. Triton (part 2) hides threads: one *program* handles
a whole block of elements, but the grid, the offsets and the mask are the same ideas.

Run:  python triton_flash_attention_scratch/07_intro_to_cuda.py [--n 1000 --threads 256 --device auto]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse
import math
import shutil
import subprocess

import torch

from pytorch_basis.common import add_device_argument, out_dir, resolve_device, seed_everything

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
SOURCES = {name: CUDA_DIR / f"{name}.cu" for name in ("vector_add", "matrix_add")}

# Thin PyTorch bindings around the launchers and timers defined in the .cu files.
_BINDINGS = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <climits>

static void check_pair(const torch::Tensor& a, const torch::Tensor& b) {
    TORCH_CHECK(a.is_cuda() && b.is_cuda(), "a and b must be CUDA tensors");
    TORCH_CHECK(a.scalar_type() == torch::kFloat32 && b.scalar_type() == torch::kFloat32, "a and b must be float32");
    TORCH_CHECK(a.sizes() == b.sizes(), "a and b must have the same shape");
    TORCH_CHECK(a.numel() < INT_MAX, "too many elements for int indexing");
}

torch::Tensor vector_add(torch::Tensor a, torch::Tensor b, int64_t threads_per_block) {
    check_pair(a, b);
    auto ac = a.contiguous(), bc = b.contiguous();
    auto c = torch::empty_like(ac);
    launch_vector_add(ac.data_ptr<float>(), bc.data_ptr<float>(), c.data_ptr<float>(), (int)ac.numel(),
                      (int)threads_per_block, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return c;
}

double vector_add_ms(torch::Tensor a, torch::Tensor b, int64_t threads_per_block, int64_t reps) {
    check_pair(a, b);
    auto ac = a.contiguous(), bc = b.contiguous();
    auto c = torch::empty_like(ac);
    return time_vector_add(ac.data_ptr<float>(), bc.data_ptr<float>(), c.data_ptr<float>(), (int)ac.numel(),
                           (int)threads_per_block, (int)reps, c10::cuda::getCurrentCUDAStream());
}

torch::Tensor matrix_add(torch::Tensor a, torch::Tensor b, int64_t block_x, int64_t block_y) {
    check_pair(a, b);
    TORCH_CHECK(a.dim() == 2, "matrix_add takes 2-D tensors");
    // Rows may be padded (stride(0) >= cols) but each row must be contiguous: stride(1) == 1.
    auto ac = a.stride(1) == 1 ? a : a.contiguous(), bc = b.stride(1) == 1 ? b : b.contiguous();
    auto c = torch::empty({a.size(0), a.size(1)}, a.options());
    launch_matrix_add(ac.data_ptr<float>(), bc.data_ptr<float>(), c.data_ptr<float>(), (int)a.size(0),
                      (int)a.size(1), (int)ac.stride(0), (int)bc.stride(0), (int)c.stride(0), (int)block_x,
                      (int)block_y, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return c;
}

double matrix_add_ms(torch::Tensor a, torch::Tensor b, int64_t block_x, int64_t block_y, int64_t reps) {
    check_pair(a, b);
    auto ac = a.contiguous(), bc = b.contiguous();
    auto c = torch::empty_like(ac);
    return time_matrix_add(ac.data_ptr<float>(), bc.data_ptr<float>(), c.data_ptr<float>(), (int)a.size(0),
                           (int)a.size(1), (int)block_x, (int)block_y, (int)reps, c10::cuda::getCurrentCUDAStream());
}
"""
_DECLARATIONS = """
torch::Tensor vector_add(torch::Tensor a, torch::Tensor b, int64_t threads_per_block);
double vector_add_ms(torch::Tensor a, torch::Tensor b, int64_t threads_per_block, int64_t reps);
torch::Tensor matrix_add(torch::Tensor a, torch::Tensor b, int64_t block_x, int64_t block_y);
double matrix_add_ms(torch::Tensor a, torch::Tensor b, int64_t block_x, int64_t block_y, int64_t reps);
"""


# ============================================================================================ simulation
def simulate_vector_add(a: torch.Tensor, b: torch.Tensor, threads_per_block: int = 256) -> dict:
    """Run vector_add_kernel's index math for every (blockIdx.x, threadIdx.x) of the launch, vectorized."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"simulate_vector_add takes two 1-D tensors of one shape, got {a.shape}, {b.shape}")
    if threads_per_block < 1 or threads_per_block > 1024:
        raise ValueError(f"threads_per_block must be in 1..1024 (a CUDA limit), got {threads_per_block}")
    n = a.numel()
    blocks = math.ceil(n / threads_per_block)  # the grid is rounded up
    block_idx = torch.arange(blocks)[:, None]  # (blocks, 1)        blockIdx.x
    thread_idx = torch.arange(threads_per_block)[None, :]  # (1, threads)  threadIdx.x
    i = block_idx * threads_per_block + thread_idx  # (blocks, threads) global index of every thread
    active = i < n  # the bounds guard
    c = torch.full_like(a, float("nan"))  # anything not written stays nan
    c[i[active]] = a[i[active]] + b[i[active]]
    writes = torch.bincount(i[active], minlength=n)
    return {
        "c": c,
        "blocks": blocks,
        "threads_launched": blocks * threads_per_block,
        "threads_idle": int((~active).sum()),
        "writes_per_element": writes,
    }


def simulate_matrix_add(a: torch.Tensor, b: torch.Tensor, block: tuple[int, int] = (16, 16)) -> dict:
    """Run matrix_add_kernel's 2-D index math (x = column, y = row) for the whole grid."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"simulate_matrix_add takes two 2-D tensors of one shape, got {a.shape}, {b.shape}")
    rows, cols = a.shape
    bx, by = block
    grid = (math.ceil(cols / bx), math.ceil(rows / by))  # (grid.x, grid.y)
    # every thread's coordinates, shape (grid.y, grid.x, by, bx)
    col = (torch.arange(grid[0])[None, :, None, None] * bx + torch.arange(bx)[None, None, None, :]).expand(
        grid[1], grid[0], by, bx
    )
    row = (torch.arange(grid[1])[:, None, None, None] * by + torch.arange(by)[None, None, :, None]).expand(
        grid[1], grid[0], by, bx
    )
    active = (row < rows) & (col < cols)
    stride = a.stride(0)  # elements per row
    offset = row[active] * stride + col[active]  # where the thread reads and writes
    c = torch.full((rows * cols,), float("nan"))
    c[offset] = a.reshape(-1)[offset] + b.reshape(-1)[offset]
    # the first warp: 32 consecutive threads of block (0, 0), linear id = threadIdx.y * blockDim.x + threadIdx.x
    tid = torch.arange(32)
    warp_offsets = (tid // bx) * stride + tid % bx
    return {
        "c": c.view(rows, cols),
        "grid": grid,
        "threads_launched": grid[0] * grid[1] * bx * by,
        "threads_idle": int((~active).sum()),
        "writes_per_element": torch.bincount(offset, minlength=rows * cols),
        "first_warp_offsets": warp_offsets,
    }


# ============================================================================================ nvcc / CUDA
def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def nvcc_compile(source: Path, output: Path, ptx: bool = False, defines: tuple[str, ...] = ()) -> Path:
    """Compile one .cu file with nvcc to an object file (or PTX assembly); raise with nvcc's message on failure."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found on PATH: install the CUDA toolkit to compile the .cu files")
    cmd = [nvcc, "--ptx" if ptx else "-c", str(source), "-o", str(output), *(f"-D{d}" for d in defines)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source.name}:\n{result.stderr}")
    return output


def load_cuda_extension(verbose: bool = False):
    """Compile both .cu files plus the bindings into a Python module (cached by torch after the first build)."""
    from torch.utils.cpp_extension import load_inline

    prelude = (
        "#include <c10/cuda/CUDAException.h>\n"
        "#define CUDA_CHECK(call) C10_CUDA_CHECK(call)\n"  # raise a Python error instead of exit(1)
        "#define VECTOR_ADD_NO_MAIN\n#define MATRIX_ADD_NO_MAIN\n"
    )
    cuda_source = prelude + SOURCES["vector_add"].read_text() + SOURCES["matrix_add"].read_text() + _BINDINGS
    return load_inline(
        name="llm_scratch_cuda_intro",
        cpp_sources=_DECLARATIONS,
        cuda_sources=cuda_source,
        functions=["vector_add", "vector_add_ms", "matrix_add", "matrix_add_ms"],
        extra_cuda_cflags=["-O2"],
        extra_include_paths=[str(CUDA_DIR)],  # for #include "cuda_utils.cuh"
        verbose=verbose,
    )


def run_on_gpu(n: int, threads: int, rows: int, cols: int, device: torch.device) -> dict:
    ext = load_cuda_extension()
    a, b = torch.randn(n, device=device), torch.randn(n, device=device)
    c = ext.vector_add(a, b, threads)
    ma, mb = torch.randn(rows, cols, device=device), torch.randn(rows, cols, device=device)
    mc = ext.matrix_add(ma, mb, 16, 16)
    wide = torch.randn(rows, cols + 7, device=device)[:, :cols]  # padded rows: stride(0) = cols + 7
    mc_strided = ext.matrix_add(wide, mb, 16, 16)
    big = 1 << 24
    ba, bb = torch.randn(big, device=device), torch.randn(big, device=device)
    ms_vec = ext.vector_add_ms(ba, bb, threads, 20)
    side = 4096
    ms_mat = ext.matrix_add_ms(ba[: side * side].view(side, side), bb[: side * side].view(side, side), 16, 16, 20)
    out = {
        "vector_error": (c - (a + b)).abs().max().item(),
        "matrix_error": (mc - (ma + mb)).abs().max().item(),
        "strided_matrix_error": (mc_strided - (wide + mb)).abs().max().item(),
        "vector_add_ms": ms_vec,
        "vector_add_GBps": 3 * big * 4 / ms_vec / 1e6,
        "matrix_add_ms": ms_mat,
        "matrix_add_GBps": 3 * side * side * 4 / ms_mat / 1e6,
    }
    print(
        f"CUDA vector_add n={n}: max error vs a + b {out['vector_error']:.1e}; matrix_add {rows}x{cols}: "
        f"{out['matrix_error']:.1e} (padded rows {out['strided_matrix_error']:.1e})"
    )
    print(
        f"timed with CUDA events: vector_add 2^24 floats {ms_vec:.3f} ms = {out['vector_add_GBps']:.0f} GB/s, "
        f"matrix_add {side}x{side} {ms_mat:.3f} ms = {out['matrix_add_GBps']:.0f} GB/s"
    )
    return out


def main(
    n: int = 1000, threads: int = 256, rows: int = 37, cols: int = 45, device: str = "auto", seed: int = 0
) -> dict:
    dev = resolve_device(device)
    seed_everything(seed)
    a, b = torch.randn(n), torch.randn(n)
    sim = simulate_vector_add(a, b, threads)
    print(
        f"vector_add, n={n}, {threads} threads per block -> grid of ceil({n}/{threads}) = {sim['blocks']} blocks, "
        f"{sim['threads_launched']} threads, {sim['threads_idle']} idle behind the guard `if (i < n)`"
    )
    for blk, thr in ((0, 0), (0, 1), (1, 0), (sim["blocks"] - 1, threads - 1)):
        i = blk * threads + thr
        print(
            f"  blockIdx.x={blk:<3} threadIdx.x={thr:<4} -> i = {blk}*{threads}+{thr} = {i:<5} "
            f"{'writes c[i]' if i < n else 'i >= n: does nothing'}"
        )
    vec_ok = bool(torch.equal(sim["c"], a + b)) and bool((sim["writes_per_element"] == 1).all())
    print(f"  simulated c == a + b and every element written exactly once: {vec_ok}")

    ma, mb = torch.randn(rows, cols), torch.randn(rows, cols)
    msim = simulate_matrix_add(ma, mb)
    mat_ok = bool(torch.equal(msim["c"], ma + mb)) and bool((msim["writes_per_element"] == 1).all())
    print(
        f"matrix_add {rows}x{cols}, 16x16 blocks -> grid {msim['grid'][0]}x{msim['grid'][1]}, "
        f"{msim['threads_launched']} threads, {msim['threads_idle']} idle; c == a + b, each once: {mat_ok}"
    )
    print(
        f"  first warp (32 threads) touches offsets {msim['first_warp_offsets'].tolist()[:4]} ... "
        f"{msim['first_warp_offsets'].tolist()[-2:]}: two runs of 16 consecutive floats (coalesced)"
    )
    result = {"vector": sim, "matrix": msim, "vector_ok": vec_ok, "matrix_ok": mat_ok, "gpu": None, "ptx": None}

    if dev.type == "cuda" and nvcc_path() is not None:
        result["gpu"] = run_on_gpu(n, threads, rows, cols, dev)
    elif nvcc_path() is not None:
        ptx = nvcc_compile(SOURCES["vector_add"], out_dir("cuda_intro") / "vector_add.ptx", ptx=True)
        lines = [ln.strip() for ln in ptx.read_text().splitlines()]
        index_math = [ln for ln in lines if any(r in ln for r in ("%ctaid.x", "%ntid.x", "%tid.x", "setp"))]
        print(f"no CUDA device; nvcc compiled vector_add.cu to PTX ({ptx}). The index math and the guard:")
        for ln in index_math:
            print(f"    {ln}")
        result["ptx"] = ptx
    else:
        print("no CUDA device and no nvcc: the simulation above is the whole lesson here")
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="vector length")
    parser.add_argument("--threads", type=int, default=256, help="threads per block (1..1024)")
    parser.add_argument("--rows", type=int, default=37)
    parser.add_argument("--cols", type=int, default=45)
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser)
    return parser.parse_args()


if __name__ == "__main__":
    main(**vars(parse_args()))
