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

Then every specialisation of the grid must be among the precompiled ones. Exit status 0 if so, 1 with the
missing ones listed. ``--json`` prints the counts as JSON (the test reads them).

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
    grid = {data: name for name, data in seen}
    missing = sorted(set(grid) - set(precompiled))
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
    parts["target"] = str(obj["target"])
    return obj["name"].rsplit(".", 1)[-1], parts


def _describe(data: str, precompiled: list[str]) -> str:
    """A missing kernel and how the closest precompiled one of the same name differs from it."""
    name, want = _parts(data)
    shown = " ".join(f"{k}={want[k]}" for k in ("BLOCK_M", "BLOCK_N", "HEAD_DIM", "CAUSAL", "USE_TMA") if k in want)
    best = None
    for other in precompiled:
        other_name, have = _parts(other)
        if other_name == name:
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
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
    res = coverage(args.arch, args.precompile_n, tuple(args.seq_lens) if args.seq_lens else None)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"sm_{res['arch']}: {res['jobs']} precompile launches ask for {res['precompiled']} kernels; "
            f"the grid ({res['grid_rows']} rows) asks for {res['grid']}; {res['missing']} of them not precompiled"
        )
        for name, c in sorted(res["per_kernel"].items()):
            print(f"  {name}: {c['grid']} kernels, {c['missing']} missing")
        for line in res["missing_examples"] + res["jobs_failed"]:
            print(f"  {line}")
    return 1 if res["missing"] or res["jobs_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
