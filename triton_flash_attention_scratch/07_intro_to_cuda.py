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
kernel to PTX, prints it line by line with what each instruction does (the index ``mad.lo.s32``, the guard as a
predicate ``setp.ge.s32`` plus a predicated branch), and *executes* that integer arithmetic for every thread of
launches with awkward sizes (n = 1, 31, 33, 255, 257, 1000, 4097 over blocks of 32 … 1024) to check that the
compiled code stores exactly where the simulation does. Triton (part 2) hides threads: one *program* handles
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

from pytorch_basis.common import add_device_argument, out_dir, positive_int, resolve_device, seed_everything, seed_int

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
# ============================================================================================ the PTX, read
# What each PTX instruction of vector_add_kernel does (PTX ISA manual, "Instruction set"): the lesson prints the
# kernel's body with these notes, then *executes* the index arithmetic below for every thread of a launch and
# checks it against the simulation above.
PTX_NOTES = {
    "ld.param.u64": "load a 64-bit kernel argument (a pointer: a, b or c)",
    "ld.param.u32": "load the 32-bit argument n",
    "mov.u32 %ctaid.x": "blockIdx.x  (ctaid = cooperative thread array id: the block's index in the grid)",
    "mov.u32 %ntid.x": "blockDim.x  (ntid = number of threads per block)",
    "mov.u32 %tid.x": "threadIdx.x",
    "mad.lo.s32": "i = blockIdx.x * blockDim.x + threadIdx.x  (multiply-add, low 32 bits, signed)",
    "setp.ge.s32": "the bounds guard: predicate p = (i >= n)",
    "@%p1 bra": "threads with p set jump past the body: the `if (i < n)` is a predicated branch",
    "cvta.to.global.u64": "convert a generic address to a global-memory address",
    "mul.wide.s32": "byte offset = i * 4 (sizeof(float)), widened to 64 bits",
    "add.s64": "address = base + byte offset",
    "ld.global.nc.f32": "load a float through the read-only (non-coherent) cache: a[i], b[i] (__restrict__ const)",
    "add.f32": "a[i] + b[i]",
    "st.global.f32": "store c[i]",
    "ret": "end of the kernel (the guarded threads arrive here directly)",
}


def kernel_ptx_body(ptx_text: str, kernel: str = "vector_add_kernel") -> list[str]:
    """The instruction lines of one ``.entry`` in a PTX file (declarations and braces dropped)."""
    lines, inside = [], False
    for raw in ptx_text.splitlines():
        line = raw.strip()
        if line.startswith(".visible .entry") and kernel in line:
            inside = True
        elif inside and line == "}":
            break
        elif inside and line and not line.startswith((".", "{", ")", "//")) and "_param_" not in line[:6]:
            lines.append(" ".join(line.rstrip(";").split()))  # tabs -> single spaces
    if not lines:
        raise ValueError(f"no .entry for {kernel} in the PTX")
    return lines


def annotate_ptx(body: list[str]) -> list[tuple[str, str]]:
    """Pair every PTX line with what it does (``PTX_NOTES``; labels and unknown lines get an empty note)."""
    out = []
    for line in body:
        note = ""
        for key, text in PTX_NOTES.items():
            op, _, operand = key.partition(" ")
            if line.startswith(op) and (not operand or operand in line):
                note = text
                break
        if line.endswith(":"):
            note = "label: the first instruction after the guarded body"
        out.append((line, note))
    return out


def run_ptx_index_math(body: list[str], n: int, threads_per_block: int) -> dict:
    """Execute the integer part of the PTX (params, special registers, mad, setp, the predicated branch,
    mul.wide, the store's address) for every (block, thread) of a ``ceil(n / threads)`` launch, vectorized.

    Returns which threads reach the store and the byte offset of c each of them stores to. An independent
    reading of the compiled code: if nvcc had computed the index or the guard differently, it would show here.
    """
    blocks = math.ceil(n / threads_per_block)
    shape = (blocks, threads_per_block)
    special = {
        "%ctaid.x": torch.arange(blocks)[:, None].expand(shape),
        "%ntid.x": torch.full(shape, threads_per_block),
        "%tid.x": torch.arange(threads_per_block)[None, :].expand(shape),
    }
    params = {0: 0, 1: 0, 2: 0, 3: n}  # pointers as base 0: offsets relative to each array
    reg: dict[str, torch.Tensor] = {}
    alive = torch.ones(shape, dtype=torch.bool)  # threads not branched away
    stores = []

    def val(x: str) -> torch.Tensor:
        x = x.strip()
        if x in reg:
            return reg[x]
        if x in special:
            return special[x]
        return torch.full(shape, int(x), dtype=torch.int64)

    for line in body:
        if line.endswith(":") or line == "ret":
            continue
        op, _, rest = line.partition(" ")
        args = [a.strip() for a in rest.split(",")]
        if op.startswith("ld.param"):
            idx = int(args[1].rsplit("_param_", 1)[1].rstrip("]"))
            reg[args[0]] = torch.full(shape, params[idx], dtype=torch.int64)
        elif op == "mov.u32":
            reg[args[0]] = val(args[1]).to(torch.int64)
        elif op == "mad.lo.s32":
            r = val(args[1]) * val(args[2]) + val(args[3])
            reg[args[0]] = ((r + 2**31) % 2**32) - 2**31  # low 32 bits, signed
        elif op.startswith("setp."):
            cmp = op.split(".")[1]
            a_, b_ = val(args[1]), val(args[2])
            reg[args[0]] = {"ge": a_ >= b_, "lt": a_ < b_, "gt": a_ > b_, "le": a_ <= b_}[cmp]
        elif op.startswith("@"):
            pred = op[1:].lstrip("!")
            taken = reg[pred] if not op[1:].startswith("!") else ~reg[pred]
            alive = alive & ~taken  # a forward branch past the body: those threads skip the rest
        elif op.startswith("cvta"):
            reg[args[0]] = val(args[1])
        elif op == "mul.wide.s32":
            reg[args[0]] = val(args[1]) * val(args[2])
        elif op == "add.s64":
            reg[args[0]] = val(args[1]) + val(args[2])
        elif op.startswith("st.global"):
            stores.append(val(args[0].strip("[]")))
        # ld.global / add.f32 move data, not indices: not needed for the index check
    if len(stores) != 1:
        raise ValueError(f"expected one store in the kernel, found {len(stores)}")
    return {"stores": alive, "store_byte_offset": stores[0], "blocks": blocks}


def check_ptx_against_simulation(body: list[str], n: int, threads_per_block: int) -> bool:
    """The PTX's storing threads and offsets equal the simulation's guard and index (c[i] at byte 4·i)."""
    ran = run_ptx_index_math(body, n, threads_per_block)
    sim = simulate_vector_add(torch.zeros(n), torch.zeros(n), threads_per_block)
    i = torch.arange(sim["blocks"])[:, None] * threads_per_block + torch.arange(threads_per_block)[None, :]
    same_threads = torch.equal(ran["stores"], i < n) and ran["blocks"] == sim["blocks"]
    offsets = ran["store_byte_offset"][ran["stores"]]
    return bool(same_threads and torch.equal(offsets, 4 * i[i < n]) and (sim["writes_per_element"] == 1).all())


AWKWARD_SIZES = [(1, 32), (31, 32), (33, 32), (255, 256), (257, 256), (1000, 256), (4097, 1024), (5, 1)]


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
        body = kernel_ptx_body(ptx.read_text())
        print(f"\nno CUDA device; nvcc compiled vector_add.cu to PTX ({ptx.name}). vector_add_kernel, line by line:")
        for line, note in annotate_ptx(body):
            print(f"    {line:<40} {('// ' + note) if note else ''}")
        checks = {(size, t): check_ptx_against_simulation(body, size, t) for size, t in AWKWARD_SIZES}
        print("the PTX's index math executed for every thread vs the simulation (which threads store, and where):")
        print("    " + "  ".join(f"n={size}/{t}: {'OK' if ok else 'DIFFERENT'}" for (size, t), ok in checks.items()))
        result.update(ptx=ptx, ptx_body=body, ptx_checks=checks)
    else:
        print("no CUDA device and no nvcc: the simulation above is the whole lesson here")
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=1000, help="vector length")
    parser.add_argument("--threads", type=positive_int, default=256, help="threads per block (1..1024)")
    parser.add_argument("--rows", type=positive_int, default=37)
    parser.add_argument("--cols", type=positive_int, default=45)
    parser.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(parser)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
