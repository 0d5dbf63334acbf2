"""Does part 3's precompile step compile what part 3's benchmark then asks for?  Checked on a CPU, no GPU.

``.ci/gpu`` part 3 first compiles the kernels in parallel processes (``flash_precompile_jobs``: B = 1, N = 256)
so that the benchmark grid (B·N = 16k tokens, N up to 16k, autotuned) finds every binary in Triton's on-disk
cache instead of compiling one kernel at a time. That only works if the two ask Triton for the *same*
specialisations: same kernel, constexprs, argument types, divisibility attributes and compile options. This script
records both without compiling or launching anything:

* a stand-in CUDA driver (``triton.runtime.driver.set_active``) tells Triton it targets ``cuda:<arch>``;
* ``triton.knobs.runtime.jit_cache_hook`` sees every kernel Triton is about to compile, with the
  ``specialization_data`` that its cache key is made of, records it and answers "skip" (no compile, no launch);
* the timer (lesson 21's ``_quantiles_ms``) calls the function once, and SDPA is replaced by a cheap stand-in,
  so that the grid's real code (``benchmark_rows``, ``tma_rows``, the autotuners and their pruning) runs on CPU
  tensors of the grid's real shapes.

Then every specialisation of the grid must be among the precompiled ones. The register step's kernels
(``register_jobs``: the defaults compiled ahead of time with ``aot_source``, whose signature and attributes are
written by hand) must be among the grid's as well, so that its ptxas counts are those of kernels the benchmark
runs; the same jobs with general sizes (no ``sizes``) are counted too, to show that the comparison can tell the
difference. Last, ``launch_vs_aot`` launches the four kernels at ``LAUNCH_CASES`` (shapes that take every branch
of Triton's specialisation of an integer) and compares what Triton asks for with ``aot_source`` for the same
sizes. Exit status 0 if all match, 1 with the missing ones listed. ``--json`` prints the counts as JSON (the
test reads them).

Run:  python .ci/precompile_coverage.py [--arch 90|80]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compiled-kernel code paths (before triton_flash is imported)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Shared memory per block (opt-in) and TMA, per target: CUDA C programming guide, compute capabilities table.
ARCHS = {90: {"smem": 227 * 1024, "tma": True}, 80: {"smem": 163 * 1024, "tma": False}}


def load_gpu_report():
    spec = importlib.util.spec_from_file_location("ci_gpu_report", ROOT / ".ci" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci_gpu_report"] = module
    spec.loader.exec_module(module)
    return module


def install_stand_in_driver(arch: int, seen: list) -> None:
    """Make Triton believe it compiles for ``cuda:<arch>`` and record, instead of compiling, every kernel asked for."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class StandInCudaDriver(DriverBase):
        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty: str) -> str:
            return "void*"

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            def bench(fn, quantiles=None, **kw):  # the autotuner's: one call records the config's kernel
                fn()
                return [1.0, 1.0, 1.0] if quantiles else 1.0

            return bench

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_device_interface(self):
            return torch.cuda

        def get_empty_cache_for_benchmark(self):
            return torch.empty(1)

        def clear_cache(self, cache):
            pass

    triton.runtime.driver.set_active(StandInCudaDriver())

    def hook(*args, **kw):
        compile_ = kw.get("compile") or {}
        data = json.loads(compile_.get("specialization_data") or kw["specialization_data"])
        # "key" is the in-process cache key, which also spells out the options a launch passes explicitly (the
        # autotuner passes num_ctas=1, an explicit launch leaves it at its default); it is not part of the on-disk
        # cache key. Everything else is: signature, constexprs, attributes, parsed options, target.
        data.pop("key", None)
        seen.append((data["name"].rsplit(".", 1)[-1], json.dumps(data)))
        return True  # skip: neither compiled nor launched

    triton.knobs.runtime.jit_cache_hook = hook


def patch_cuda(arch: int, tf, les, smem: int) -> None:
    """What the grid's code asks of CUDA, answered as a GPU of ``arch`` would; SDPA and the timer as stand-ins."""
    import torch
    import torch.nn.functional as F

    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_capability = lambda *a: divmod(arch, 10)
    torch.cuda.get_device_name = lambda *a: f"stand-in sm_{arch}"
    tf.SMEM_LIMIT_BYTES_DEFAULT = smem  # the pruner's limit for tensors that are not on a GPU
    tf.smem_limit_bytes = lambda device=None: smem
    tf.validate_attention_inputs = lambda q, k, v: None  # it rejects CPU tensors for compiled kernels

    def sdpa(q, k, v, is_causal=False, **kw):  # shape and autograd of SDPA, none of its N x N work
        return q * 1.0 + 0.0 * (k + v)

    F.scaled_dot_product_attention = sdpa

    class ZeroedTorch:  # the skipped launches write nothing: the kernels' outputs start as zeros, not garbage
        empty, empty_like = staticmethod(torch.zeros), staticmethod(torch.zeros_like)

        def __getattr__(self, name):
            return getattr(torch, name)

    tf.torch = ZeroedTorch()  # so that the TMA rows' error check compares like with like

    class ZeroInputsTorch(ZeroedTorch):  # the grid's inputs: their values never reach a kernel, only their shapes
        randn, randn_like = staticmethod(torch.zeros), staticmethod(torch.zeros_like)

    les.torch = ZeroInputsTorch()  # (filling 64 MB tensors with random numbers was half of this script's time)

    def one_call(fn, grad_to_none=None, warmup=25, rep=100):
        fn()
        return 1.0, 1.0, 1.0

    les._quantiles_ms = one_call


def clear_autotuners(tf) -> None:
    for tuned in (tf._attn_fwd_tuned, tf._attn_bwd_dkdv_tuned, tf._attn_bwd_dq_tuned):
        tuned.cache.clear()


def coverage(arch: int, precompile_n: int | None = None, seq_lens: tuple[int, ...] | None = None) -> dict:
    seen: list = []
    install_stand_in_driver(arch, seen)
    gr = load_gpu_report()
    tf, les = gr.ch4_kernels(), gr.ch4_lesson21()
    if tf.INTERPRET:
        raise SystemExit("precompile_coverage: TRITON_INTERPRET=1 was set before this script; it needs 0")
    smem, tma = ARCHS[arch]["smem"], ARCHS[arch]["tma"]
    patch_cuda(arch, tf, les, smem)
    import torch

    dev = torch.device("cpu")
    if precompile_n is not None:
        gr.PRECOMPILE_N = precompile_n
    jobs = gr.flash_precompile_jobs(tf, les, with_tma=tma)
    failed = []
    for job in jobs:
        try:
            gr.precompile_job(job, dev)
        except Exception as e:  # noqa: BLE001 - a job the real worker would report as failed
            failed.append(f"{job}: {type(e).__name__}: {e}")
    precompiled = {data: name for name, data in seen}
    seen.clear()
    clear_autotuners(tf)
    rows = les.benchmark_rows(seq_lens=seq_lens or gr.FLASH_SEQ_LENS, head_dims=gr.FLASH_HEAD_DIMS,
                              dtypes=gr.FLASH_DTYPES, causal=(False, True), device="cpu", log=None)  # fmt: skip
    if tma:
        rows += les.tma_rows(head_dims=tuple(sorted({d for d, _ in gr.TMA_CASES})),
                             causal=(False, True), device="cpu", log=None)  # fmt: skip
    rows += les.gqa_rows(device="cpu", log=None)
    grid = {data: name for name, data in seen}
    missing = sorted(set(grid) - set(precompiled))
    grid_cores = {_core(_parts(data)) for data in grid}
    register_jobs = gr.register_jobs(tf, les, arch)
    register = [_core(_ast_parts(tf, job)) in grid_cores for job in register_jobs]
    general = [_core(_ast_parts(tf, {**job, "sizes": None})) in grid_cores for job in register_jobs]
    seen.clear()
    mismatches = launch_vs_aot(tf, arch, seen)
    per_kernel = {}
    for data, name in grid.items():
        c = per_kernel.setdefault(name, {"grid": 0, "missing": 0})
        c["grid"] += 1
        c["missing"] += data in missing
    return {
        "arch": arch,
        "smem_bytes": smem,
        "jobs": len(jobs),
        "jobs_failed": failed,
        "precompiled": len(precompiled),
        "grid": len(grid),
        "grid_rows": len(rows),
        "grid_row_errors": [r["status"] for r in rows if r.get("status") != "ok"],
        "missing": len(missing),
        "per_kernel": per_kernel,
        "missing_examples": [_describe(d, list(precompiled)) for d in missing[:5]],
        "register_jobs": len(register),
        "register_missing": register.count(False),
        "register_general_missing": general.count(False),
        "launch_cases": len(LAUNCH_CASES),
        "launch_mismatches": mismatches,
    }


def _parts(data: str) -> tuple[str, dict[str, str]]:
    """A specialisation as kernel name and ``{what: value}``: each parameter's type and attributes (or constexpr
    value), and each compile option."""
    obj = json.loads(data)
    names = list(obj["signature"])
    parts = {f"{n} type": str(t) for n, t in obj["signature"].items()}
    parts |= {f"{names[k[0]]} attributes": str(v) for k, v in zip(obj["attrs_keys"], obj["attrs_vals"])}
    parts |= {f"{names[k[0]]}": str(v) for k, v in zip(obj["constant_keys"], obj["constant_vals"])}
    parts |= {f"option {k}": str(v) for k, v in obj["options"].items()}
    if "target" in obj:  # triton 3.9 records it; 3.6 keeps it out of this data
        parts["target"] = str(obj["target"])
    return obj["name"].rsplit(".", 1)[-1], parts


# (dtype, D, H, H_KV, N, causal, dkdv_split): shapes whose sizes take every branch of a launch's specialisation:
# general values (GPT-2's 12 heads, N = 1000, so the dK/dV kernel's EVEN_M is false), a single key/value head
# (Triton makes 1 a constant), multiples of 16, a head dim (40) whose row stride is not one, and a dK/dV kernel
# whose GQA group is split among 3 programs (a general KV_SPLIT, fp32 partial dK/dV).
LAUNCH_CASES = (
    ("float16", 64, 12, 4, 1000, True, 1),
    ("bfloat16", 40, 8, 1, 64, False, 1),
    ("bfloat16", 128, 16, 16, 4096, True, 1),
    ("float16", 64, 12, 4, 1000, True, 3),
)


def launch_vs_aot(tf, arch: int, seen: list) -> list[str]:
    """Launch forward and backward of each ``LAUNCH_CASES`` shape with the default configs (the stand-in driver
    records into ``seen``, compiles nothing) and compare each kernel Triton asks for with ``aot_source`` for the
    same sizes. Returns one line per mismatch."""
    import torch

    bad = []
    for dtype, D, H, H_KV, N, causal, split in LAUNCH_CASES:
        seen.clear()
        q = torch.zeros(2, H, N, D, dtype=getattr(torch, dtype), requires_grad=True)
        k, v = (torch.zeros(2, H_KV, N, D, dtype=q.dtype, requires_grad=True) for _ in range(2))
        tf.flash_attention(q, k, v, causal=causal, configs=tf.GPU_DEFAULT_CONFIGS, dkdv_split=split).sum().backward()
        launched = {name: _core(_parts(data)) for name, data in seen}
        sizes = {"H": H, "H_KV": H_KV, "N_CTX": N}
        even_m = N % tf.GPU_DEFAULT_CONFIGS["dkdv"]["BLOCK_M"] == 0
        for kernel, name in (("fwd", "_attn_fwd"), ("preprocess", "_attn_bwd_preprocess"),
                             ("dkdv", "_attn_bwd_dkdv"), ("dq", "_attn_bwd_dq")):  # fmt: skip
            job = dict(kernel=kernel, arch=arch, dtype=dtype, head_dim=D, causal=causal,
                       config=tf.GPU_DEFAULT_CONFIGS.get(kernel), even_m=even_m, sizes=sizes,
                       kv_split=split if kernel == "dkdv" else 1)  # fmt: skip
            variants = {"": job}
            if all(x != 1 and x % 16 for x in sizes.values()):  # general sizes: what aot_source gives without any
                variants[" (general sizes)"] = {**job, "sizes": None}
            for label, j in variants.items():
                ours = _core(_ast_parts(tf, j))
                if launched.get(name) != ours:
                    diff = _differing(dict(launched.get(name, ("", ()))[1]), dict(ours[1]))
                    bad.append(f"{name} {dtype} D={D} H={H} H_KV={H_KV} N={N} split={split}{label}: "
                               "aot_source differs in " + ", ".join(diff))  # fmt: skip
    return bad


def _ast_parts(tf, job: dict) -> tuple[str, dict[str, str]]:
    """An ahead-of-time job's specialisation (``aot_source``), written as ``_parts`` writes a launch's."""
    src, options, _ = tf.aot_source(**job)
    names = [p.name for p in src.fn.params]
    parts = {f"{n} type": str(t) for n, t in src.signature.items()}
    parts |= {f"{names[k[0]]} attributes": str(v) for k, v in src.attrs.items()}
    parts |= {f"{names[k[0]]}": str(v) for k, v in src.constants.items()}
    parts |= {f"option {k}": str(v) for k, v in options.items()}
    return src.fn.__name__, parts


def _core(parts: tuple[str, dict[str, str]]) -> tuple:
    """What both a launch and an ahead-of-time source spell out: kernel, parameter types, non-empty attributes,
    constexpr values, warps and stages (a launch's other options are the backend's defaults; the target is the
    stand-in driver's for both)."""
    name, p = parts
    empty = {k for k, v in p.items() if k.endswith(" attributes") and v == "[]"}
    keep = {k: v for k, v in p.items() if not k.startswith("option ") and k != "target" and k not in empty}
    keep |= {k: p[k] for k in ("option num_warps", "option num_stages")}
    return name, tuple(sorted(keep.items()))


def _differing(a: dict, b: dict) -> list[str]:
    """The keys on which two specialisations (``_parts`` dicts) differ, sorted."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _describe(data: str, precompiled: list[str]) -> str:
    """A missing kernel and how the closest precompiled one of the same name differs from it."""
    name, want = _parts(data)
    shown = " ".join(f"{k}={want[k]}" for k in ("BLOCK_M", "BLOCK_N", "HEAD_DIM", "CAUSAL", "USE_TMA") if k in want)
    best = None
    for other in precompiled:
        other_name, have = _parts(other)
        if other_name == name:
            diff = _differing(want, have)
            best = diff if best is None or len(diff) < len(best) else best
    how = "no precompiled kernel of that name" if best is None else "the closest precompiled one differs in " + (
        ", ".join(best[:6]))  # fmt: skip
    return f"{name} {shown} warps={want['option num_warps']} stages={want['option num_stages']}: {how}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, choices=sorted(ARCHS), default=90, help="compute capability x 10")
    ap.add_argument("--precompile-n", type=int, help="the precompile launches' sequence length (default: .ci/gpu's)")
    ap.add_argument("--seq-lens", type=int, nargs="+", help="the grid's sequence lengths (default: .ci/gpu's)")
    ap.add_argument("--json", action="store_true", help="print the counts as one JSON line")
    args = ap.parse_args(argv)
    # The grid's CPU tensors have its real shapes (tens of MB each): with glibc's default thresholds every one is a
    # fresh mmap that page-faults in and is unmapped on free, which was two thirds of this script's time
    from pytorch_gpt2_from_scratch.speed_ladder import keep_freed_memory

    keep_freed_memory(True)
    res = coverage(args.arch, args.precompile_n, tuple(args.seq_lens) if args.seq_lens else None)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"sm_{res['arch']}: {res['jobs']} precompile launches ask for {res['precompiled']} kernels; "
            f"the grid ({res['grid_rows']} rows) asks for {res['grid']}; {res['missing']} of them not precompiled"
        )
        print(
            f"  register step: {res['register_missing']} of its {res['register_jobs']} ahead-of-time kernels are not "
            f"among the grid's (with general sizes: {res['register_general_missing']})"
        )
        print(
            f"  aot_source vs launches of {res['launch_cases']} shapes: {len(res['launch_mismatches'])} kernels differ"
        )
        for name, c in sorted(res["per_kernel"].items()):
            print(f"  {name}: {c['grid']} kernels, {c['missing']} missing")
        for line in res["missing_examples"] + res["jobs_failed"] + res["launch_mismatches"]:
            print(f"  {line}")
    return 1 if res["missing"] or res["jobs_failed"] or res["register_missing"] or res["launch_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
