"""Step 20 — Triton tricks: software pipelining with ``num_stages``, seen in the compiled code.

What this step adds: the forward loop does, per key block, *load K_j, V_j from HBM* then *compute with them*.
Run naively, the tensor cores wait for every load. With ``num_stages = s`` the compiler rewrites the ``for`` loop
(``tl.range`` in the kernels) into a pipeline: while block j is being computed, the loads of the next blocks are
already in flight into rotating shared-memory buffers:

    stages=1:  load K0 | math 0 | load K1 | math 1 | load K2 | math 2          memory and math take turns
    stages=3:  load K0  load K1  load K2
                        math 0 · load K3
                                 math 1 · load K4 ...                       the load latency is hidden

The price is shared memory: s × (K tile + V tile) = s × 2 × BLOCK_N × D × 2 bytes (fp16). Too many stages spill
out of shared memory (the config fails to compile, which the autotuner's pruning avoids) or cost occupancy
(fewer programs per SM), so the best s depends on the tile and the GPU: that is why ``num_stages`` is part of the
autotuned config space (step 19).

What the compiled code shows (``compile_ahead_of_time``: ``triton.compile`` for sm_80 / sm_90, no GPU needed):
per ``num_stages`` the lesson prints the shared memory of the compiled kernel and the number of asynchronous
copy instructions in its PTX, next to the formula. ``cp.async.cg/ca`` (Ampere's global→shared copy that does not
go through registers) appears only from 2 stages on and grows with s, as does the shared memory. On sm_90
(Hopper) the same kernel also uses ``cp.async`` for its loads — **not** TMA (``cp.async.bulk.tensor``, which
Triton emits for tensor descriptors, not for the pointer arithmetic these kernels use) — and ``wgmma.mma_async``
(warpgroup matmul) instead of Ampere's ``mma.sync`` for the tensor cores. (Under the interpreter ``num_stages`` is
accepted and ignored: there is no memory hierarchy to overlap, so only the compiled code can show it.)

The table also gives ptxas' report of each compiled kernel: registers per thread (at most 255 on these GPUs) and
the bytes *spilled* to local memory when the live values do not fit — the accumulator tile alone is
BLOCK_M × D fp32 values spread over 32 × num_warps threads, so BLOCK_M = 128, D = 128 with 4 warps needs 128 of
them for it, before Q, the scores and the pipeline's addresses. A deeper pipeline keeps more loads in flight and
can tip a tile that fitted into spilling (the dK/dV kernel's 32×64 tiles with 8 warps at D = 128 on sm_90: nothing
with 2 stages, 68 bytes per thread with 3); the table of every default and small-space config is in NOTES.md.

Then the same kernels with their streamed tiles loaded through **tensor descriptors** (``tma=True``, compiled for
sm_90 only: the Tensor Memory Accelerator came with Hopper). Instead of every thread computing its own addresses
and starting ``cp.async`` copies of a few bytes each, one thread hands the TMA unit a 128-byte descriptor of the
(N, D) matrix plus the tile's coordinates, and the whole tile arrives in shared memory, with rows past N and lanes
past D zero-filled by the hardware; the consumer waits on an ``mbarrier`` for its bytes. The table compares, for the
three kernels with ``GPU_DEFAULT_CONFIGS``: the copies in the PTX (``cp.async`` vs ``cp.async.bulk.tensor``), the
``mbarrier`` waits, registers per thread, shared memory and the global scratch the descriptors live in. (The
dK/dV kernel keeps some ``cp.async``: its per-row L and D vectors still load through pointers.)

On CUDA the lesson also times the forward kernel with one fixed tile and num_stages = 1 … 4 (TFLOP/s, do_bench);
``21_running_the_code_benchmark.py --tma`` times the TMA path against the pointer path on a Hopper GPU.

Run:  python triton_flash_attention_scratch/20_software_pipelining.py [--seq-len 4096 --head-dim 64]
      (ahead-of-time compilation: ~5 s per kernel and target on a CPU)
"""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import positive_int, seed_everything
from triton_flash_attention_scratch.triton_flash import (
    GPU_DEFAULT_CONFIGS,
    attention_flops,
    attention_forward,
    compile_ahead_of_time,
    do_bench_ms,
    lesson_parser,
    padded_head_dim,
    resolve_kernel_device,
    smem_estimate_bytes,
)


def stage_smem_bytes(num_stages: int, block_n: int, head_dim: int, itemsize: int = 2) -> int:
    """Shared memory of the pipelined K and V tiles: num_stages × 2 tiles × BLOCK_N × D elements (the module's
    ``smem_estimate_bytes``, which the autotuner's pruning and the explicit-config check use)."""
    return smem_estimate_bytes("fwd", 16, block_n, num_stages, head_dim, itemsize)


def time_stages(batch, heads, seq_len, head_dim, block_m, block_n, num_warps, stages, dev) -> dict:
    """GPU only: forward TFLOP/s per num_stages, causal and not."""
    tflops: dict = {}
    for causal in (False, True):
        q, k, v = (torch.randn(batch, heads, seq_len, head_dim, device=dev, dtype=torch.float16) for _ in range(3))
        flops = attention_flops(batch, heads, seq_len, head_dim, causal)
        print(f"\nB={batch} H={heads} N={seq_len} D={head_dim} fp16 causal={causal}")
        for s in stages:
            cfg = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": s}
            try:
                ms = do_bench_ms(partial(attention_forward, q, k, v, causal=causal, config=cfg))
            except Exception as e:  # e.g. out of shared memory for a deep pipeline
                print(f"  num_stages={s}: failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
                continue
            tflops[(causal, s)] = flops / ms * 1e-9
            print(f"  num_stages={s}: {ms:8.3f} ms  {flops / ms * 1e-9:7.1f} TFLOP/s")
    return tflops


def tma_table(head_dim: int, arch: int = 90) -> dict:
    """Compile fwd, dK/dV and dQ with GPU_DEFAULT_CONFIGS for ``arch``, pointer loads and TMA; print the table."""
    jobs = [
        {"kernel": k, "arch": arch, "dtype": "float16", "head_dim": head_dim, "causal": False, "tma": tma}
        for k in ("fwd", "dkdv", "dq") for tma in (False, True)
    ]  # fmt: skip
    facts = {(f["kernel"], f["use_tma"]): f for f in compile_ahead_of_time(jobs)}
    print(f"\npointer loads vs TMA (tensor descriptors), sm_{arch}, D={head_dim}, fp16, GPU_DEFAULT_CONFIGS")
    print(f"{'kernel':<7} {'loads':<8} {'config':<16} {'cp.async':>9} {'TMA':>4} {'mbarrier waits':>15} "
          f"{'registers':>10} {'spilled B':>10} {'shared KiB':>11} {'scratch B':>10}")  # fmt: skip
    for (kernel, tma), f in facts.items():
        c = GPU_DEFAULT_CONFIGS[kernel]
        cfg = f"{c['BLOCK_M']}x{c['BLOCK_N']} w{c['num_warps']} s{c['num_stages']}"
        print(f"{kernel:<7} {'TMA' if tma else 'pointer':<8} {cfg:<16} {f['cp_async']:>9} {f['tma']:>4} "
              f"{f['mbarrier_waits']:>15} {f['registers']!s:>10} {f['spill_stores']!s:>10} "
              f"{f['shared_bytes'] / 1024:>11.1f} {f['global_scratch_bytes']:>10}")  # fmt: skip
    print("scratch: global memory per program for the descriptors, built on the device (two per kernel).")
    return facts


def main(
    batch: int = 4,
    heads: int = 16,
    seq_len: int = 4096,
    head_dim: int = 64,
    block_m: int = 128,
    block_n: int = 64,
    num_warps: int = 8,
    stages: tuple[int, ...] = (1, 2, 3, 4),
    archs: tuple[int, ...] = (80, 90),
    tma: bool = True,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    print(f"forward tile BLOCK_M={block_m}, BLOCK_N={block_n}, D={head_dim}, fp16, {num_warps} warps: "
          "compiled ahead of time")  # fmt: skip
    smem = {s_: stage_smem_bytes(s_, block_n, head_dim) for s_ in stages}
    jobs = [
        {"kernel": "fwd", "arch": arch, "dtype": "float16", "head_dim": head_dim, "causal": False,
         "config": {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": s_}}
        for arch in archs for s_ in stages
    ]  # fmt: skip
    facts = compile_ahead_of_time(jobs)
    compiled = {(f["arch"], f["config"]["num_stages"]): f for f in facts}
    one_stage = smem[stages[0]] // stages[0]  # one K tile + one V tile
    q_tile = block_m * padded_head_dim(head_dim) * 2
    print(f"{'target':<7} {'stages':>6} {'formula KiB':>12} {'compiled KiB':>13} {'K/V buffers':>12} {'cp.async':>9} "
          f"{'TMA':>4} {'tensor-core op':>15} {'registers':>10} {'spilled B':>10}")  # fmt: skip
    for arch in archs:
        for s_ in stages:
            f = compiled[(arch, s_)]
            f["kv_buffers"] = (f["shared_bytes"] - q_tile) / one_stage
            mma = f"wgmma x{f['wgmma']}" if f["wgmma"] else f"mma.sync x{f['mma_sync']}"
            regs, spilled = (str(f.get(k, "-")) for k in ("registers", "spill_stores"))
            print(f"sm_{arch:<4} {s_:>6} {smem[s_] / 1024:>12.0f} {f['shared_bytes'] / 1024:>13.0f} "
                  f"{f['kv_buffers']:>12.1f} {f['cp_async']:>9} {f['tma']:>4} {mma:>15} {regs:>10} "
                  f"{spilled:>10}")  # fmt: skip
    print("formula: num_stages x 2 tiles (K, V) x BLOCK_N x D x 2 bytes. compiled: the kernel's shared memory;")
    print(
        f"K/V buffers = (compiled - the Q tile's {q_tile // 1024} KiB) / one K+V tile ({one_stage // 1024} KiB). "
        "Each extra stage costs one K+V tile;"
    )
    print("whether the compiler keeps s or s-1 buffers (the last load can reuse the buffer being consumed) depends")
    print("on the target and the Triton version. An H100 allows up to 227 KiB per block, an A100 163 KiB.")
    print("registers: per thread (255 at most); spilled: bytes per thread that did not fit and go through local")
    print("memory instead (ptxas -v, the assembler's own report).")
    out = {"smem": smem, "compiled": compiled, "tflops": {}, "tma": {}}
    if tma and 90 in archs:
        out["tma"] = tma_table(head_dim)
    dev = resolve_kernel_device(device)
    if dev.type == "cuda":
        out["tflops"] = time_stages(batch, heads, seq_len, head_dim, block_m, block_n, num_warps, stages, dev)
    else:
        print("\ntiming the pipeline needs a CUDA GPU")
    return out


def parse_args():
    p = lesson_parser(__doc__, batch=4, heads=16, seq_len=4096, head_dim=64, block_m=128, block_n=64, num_warps=8)
    p.add_argument("--stages", type=positive_int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--no-tma", dest="tma", action="store_false", help="leave out the TMA table (6 compilations)")
    p.add_argument(
        "--archs",
        type=int,
        nargs="+",
        default=[80, 90],
        choices=[80, 86, 89, 90],
        help="compute capabilities to compile for (80 = A100, 90 = H100)",
    )
    args = p.parse_args()
    args.stages, args.archs = tuple(args.stages), tuple(args.archs)
    return args


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
