"""GPU evidence in one command: ``bash .ci/gpu`` (this module does the work; ``.ci/gpu`` only calls it).

On a machine with one CUDA GPU, and only with the packages it already has (nothing is installed, nothing is
downloaded), six parts run one after the other, each in its own process with its own time limit, so a part that
hangs or runs out of time is reported as such and the next one still starts on a clean GPU:

1. environment: GPU, compute capability, driver, CUDA, torch, triton; a 4096^3 bf16 matmul and a 1 GiB
   device-to-device copy, timed with CUDA events: the peak and the bandwidth every later percentage uses;
2. ``pytest -m gpu`` on the test files that hold ``gpu`` tests (the kernels' correctness on real hardware), with
   pytest-xdist workers where it is installed: most of the time is Triton compiling kernels, one at a time per
   process;
3. the flash-attention benchmark of chapter 4 (lesson 21's ``benchmark_rows``) on a trimmed grid, ours vs SDPA's
   flash backend, with the targets forward >= 0.9x and backward >= 0.7x SDPA at N = 4096; every kernel the grid's
   autotuning will ask for is first compiled by parallel processes into Triton's on-disk cache; on a Hopper GPU
   also TMA vs pointer loads;
4. the GPT-2 124M training-step ladder of chapter 2 (lesson 11's building blocks, ``speed_ladder.py``) at B=16,
   T=1024, plus ``attn_impl="triton"``, ms/step and MFU against the measured bf16 peak (target >= 45% on the last rung);
5. LLaMA decode on a random ~1B-parameter model in bf16: tokens/s of our KV-cache ``generate`` (and of
   Hugging Face ``generate`` on the same weights when transformers is installed), and the fraction of the
   measured copy bandwidth that the weight reads per token reach;
6. ``train_gpt2.py --preset gpt2-124M`` on random tokens: 20 steps in two runs (checkpoint at step 10, then
   ``--resume``), loss falling; and the same under ``torchrun --nproc_per_node=1`` (NCCL initialises).

The report goes to ``out/gpu_report/report.md`` and ``report.json`` (or ``$GPU_REPORT_DIR``); it is rewritten
after every part, so an interrupted run still leaves one.

``--dry-run`` needs no GPU: it lists the parts with their limits and checks that every module a part imports
imports and that every chapter function it calls exists with the parameters it passes (all calls into the
chapters go through the small adapters below, and the dry run checks exactly those), so a renamed function
fails CI instead of the first GPU run.

``--rehearse`` needs no GPU either: it *runs* parts 1, 2 and 4-6 on the CPU at tiny sizes (``REHEARSAL_SIZES``,
no ``torch.compile``; part 3 needs the compiled kernels and is skipped) and writes the report to
``out/gpu_report_rehearsal``, so that a bug in this module's own code (a key error in a table, a wrong field of a
result) shows up in CI instead of costing minutes of a GPU. Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import inspect
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOTAL_BUDGET_S = 475  # the whole run, CUDA start-up and compilation included, stays under 8 minutes
PART_OVERHEAD_S = 1  # kept back per later part for starting and stopping its process
# the CPU rehearsal (``--rehearse`` sets it, so the parts' processes inherit it): tiny sizes, see REHEARSAL_SIZES
REHEARSAL = os.environ.get("GPU_REPORT_REHEARSAL") == "1"
GPT2_CH = "pytorch_gpt2_from_scratch"
LLAMA_CH = "pytorch_llama2_from_scratch"
FLASH_CH = "triton_flash_attention_scratch"


# ============================================================================================ small helpers
def load_lesson(chapter: str, number: int):
    """Import ``<chapter>/<NN>_*.py`` by path (lesson file names start with a digit)."""
    matches = sorted((ROOT / chapter).glob(f"{number:02d}_*.py"))
    if len(matches) != 1:
        raise ImportError(f"expected one lesson {chapter}/{number:02d}_*.py, found {[m.name for m in matches]}")
    name = f"{chapter}.lesson_{matches[0].stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, matches[0])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def fmt(x, spec: str = ".1f", none: str = "-") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return format(x, spec)


class CheckFailed(Exception):
    """An adapter found a chapter function missing or with other parameters than it passes."""


def require(obj, name: str, params: tuple[str, ...] = (), where: str = ""):
    """``getattr(obj, name)``, checked: it exists, and (for callables) accepts every keyword in ``params``."""
    where = where or getattr(obj, "__name__", type(obj).__name__)
    if not hasattr(obj, name):
        raise CheckFailed(f"{where}.{name} does not exist")
    value = getattr(obj, name)
    if params:
        try:
            sig = inspect.signature(value)
        except (TypeError, ValueError) as e:
            raise CheckFailed(f"{where}.{name}: no signature ({e})") from None
        names = set(sig.parameters)
        takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        missing = [p for p in params if p not in names]
        if missing and not takes_kwargs:
            raise CheckFailed(f"{where}.{name}{sig} lacks parameter(s) {missing}")
    return value


# ============================================================================================ adapters
# Every call into the chapters goes through these functions; the dry run calls each ``check_*`` below.
def ch2_model():
    """GPT-2 model module: GPTConfig.preset(name, attn_impl=..., pad_vocab_to=...), GPT."""
    from pytorch_gpt2_from_scratch import model

    require(model, "GPT")
    require(model.GPTConfig, "preset", ("name",), "GPTConfig")
    fields = {f.name for f in dataclasses.fields(model.GPTConfig)}
    for f in ("attn_impl", "pad_vocab_to"):
        if f not in fields:
            raise CheckFailed(f"GPTConfig has no field {f!r}")
    import triton_flash_attention_scratch.triton_flash  # noqa: F401  (registers attn_impl="triton")

    if "triton" not in model.attention_impls():
        offered = model.attention_impls()
        raise CheckFailed(f"GPTConfig.attn_impl does not offer 'triton' (attention_impls() = {offered})")
    return model


def ch2_speed_ladder():
    """Lesson 11's machinery (``speed_ladder.py``): the ladder, StepSetup, build_model, make_train_step, time_steps,
    train_flops, matmul_precision, GPU_BF16_PEAK."""
    from pytorch_gpt2_from_scratch import speed_ladder as sl

    require(sl, "LADDER")
    setup_fields = {f.name for f in dataclasses.fields(sl.StepSetup)}
    for f in ("attn_impl", "pad_vocab_to", "tf32", "amp", "compile"):
        if f not in setup_fields:
            raise CheckFailed(f"speed_ladder.StepSetup has no field {f!r}")
    for _, change, *_ in sl.LADDER:
        unknown = set(change) - setup_fields
        if unknown:
            raise CheckFailed(f"speed_ladder.LADDER changes unknown StepSetup field(s) {sorted(unknown)}")
    require(sl, "build_model", ("config", "setup", "device", "seed"))
    require(sl, "make_train_step", ("model", "setup", "device"))
    require(sl, "time_steps", ("steps_fns", "x", "y", "device", "warmup", "steps", "budget_s"))
    require(sl, "train_flops", ("config", "B", "T"))
    require(sl, "matmul_precision", ("tf32",))
    require(sl, "GPU_BF16_PEAK")
    return sl


def ch4_kernels():
    """Chapter 4's Triton module: flash_attention, attention_flops, do_bench_ms, GPU_DEFAULT_CONFIGS."""
    from triton_flash_attention_scratch import triton_flash as tf

    require(tf, "flash_attention", ("q", "k", "v", "causal"))
    require(tf, "attention_flops", ("B", "H", "N", "D", "causal", "mode"))
    require(tf, "do_bench_ms", ("fn",))
    return tf


def ch4_lesson21():
    """Lesson 21's benchmark: bench_one(impl, N, D, dtype, causal, dev) -> dict of ms and TFLOP/s."""
    les = load_lesson(FLASH_CH, 21)
    require(les, "bench_one", ("impl", "N", "D", "dtype", "causal", "dev"))
    require(les, "PEAK_TFLOPS")
    return les


def ch4_benchmark_rows(les):
    """Lesson 21's ``benchmark_rows`` (ours and SDPA side by side, with the spread, stopping at a time limit), or
    ``None`` for a lesson 21 without it (then this module loops over ``bench_one``)."""
    if not hasattr(les, "benchmark_rows"):
        return None, "lesson 21 has no benchmark_rows: bench_one per case (ours, then SDPA)"
    params = ("seq_lens", "head_dims", "dtypes", "causal", "time_limit_s", "device", "log")
    return require(les, "benchmark_rows", params), "lesson 21 benchmark_rows (ours and SDPA side by side, spread)"


def ch3_llama():
    """LLaMA: ModelArgs, Transformer, generate(model, prompts, max_new_tokens), the HF state-dict converter."""
    from pytorch_llama2_from_scratch import generate, loading, model

    fields = {f.name for f in dataclasses.fields(model.ModelArgs)}
    for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_batch_size", "max_seq_len"):
        if f not in fields:
            raise CheckFailed(f"ModelArgs has no field {f!r}")
    require(model, "Transformer")
    require(model.Transformer, "init_weights", ("std",), "Transformer")
    require(model, "kv_cache_bytes", ("args", "batch", "context", "dtype"))
    require(generate, "generate", ("model", "prompts", "max_new_tokens"))
    require(loading, "hf_to_meta_state_dict", ("hf_state", "args"))
    return model, generate, loading


def ch3_fast_decode():
    """``fast_decode.benchmark(model, prompt_len, new_tokens, repeats, compile, hf_model)`` (static cache, compiled
    step, GEMV-bandwidth probe); ``(None, note)`` where the module does not exist (then plain ``generate`` is timed)."""
    if importlib.util.find_spec(f"{LLAMA_CH}.fast_decode") is None:
        return None, "pytorch_llama2_from_scratch/fast_decode.py not present: part 5 times generate.generate only"
    mod = importlib.import_module(f"{LLAMA_CH}.fast_decode")
    require(mod, "benchmark", ("model", "prompt_len", "new_tokens", "repeats", "compile", "hf_model"))
    require(mod, "bytes_per_token", ("model", "context"))
    return mod, "fast_decode.benchmark: dynamic cache, static cache, static + torch.compile, HF generate"


def ch2_train():
    """train_gpt2.py: the gpt2-124M preset, make_config(**overrides), parse_args(argv); shard writer of fineweb."""
    from pytorch_gpt2_from_scratch import fineweb, train_gpt2

    if "gpt2-124M" not in train_gpt2.PRESETS:
        raise CheckFailed(f"train_gpt2.PRESETS has no 'gpt2-124M' (has {sorted(train_gpt2.PRESETS)})")
    require(train_gpt2, "make_config", ("preset",))
    require(train_gpt2, "parse_args", ("argv",))
    require(fineweb, "shard_path", ("directory", "prefix", "index"))
    require(fineweb, "write_shard", ("path", "tokens"))
    return train_gpt2, fineweb


# ============================================================================================ part plumbing
class Recorder:
    """What a part measured, written to its JSON file after every change (a killed part keeps its rows)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = {"status": "running", "rows": [], "notes": [], "targets": [], "summary": {}}
        self.flush()

    def flush(self) -> None:
        write_json(self.data, self.path)

    def row(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.flush()

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.data["notes"].append(text)
        self.flush()

    def summary(self, **kw) -> None:
        self.data["summary"].update(kw)
        self.flush()

    def target(self, name: str, value, goal, met: bool | None) -> None:
        self.data["targets"].append({"name": name, "value": value, "goal": goal, "met": met})
        self.flush()

    def fail(self, text: str) -> None:
        self.data.setdefault("failures", []).append(text)
        print(f"FAILED: {text}", flush=True)
        self.flush()


def report_device():
    """The device the parts measure: ``cuda`` (``CUDA_VISIBLE_DEVICES`` picks the GPU); ``$GPU_REPORT_DEVICE=cpu``
    runs the parts' code on the CPU, which only makes sense with tiny sizes (how this module's code is exercised
    without a GPU)."""
    import torch

    return torch.device(os.environ.get("GPU_REPORT_DEVICE", "cuda"))


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed_s(fn: Callable[[], object], dev) -> tuple[float, object]:
    """Seconds of one call of ``fn`` (CUDA events on a GPU, synchronised before and after) and its result."""
    import torch

    sync(dev)
    if dev.type != "cuda":
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3, out


def cuda_ms(fn: Callable[[], object], dev, inner: int, reps: int = 5, warmup: int = 3) -> list[float]:
    """Milliseconds per call of ``fn``: ``reps`` timings (CUDA events) of ``inner`` back-to-back calls each."""

    def batch():
        for _ in range(inner):
            fn()

    for _ in range(warmup):
        fn()
    return [timed_s(batch, dev)[0] * 1e3 / inner for _ in range(reps)]


MATMUL_N, COPY_BYTES = 4096, 1 << 30


def measure_peaks(n: int | None = None, copy_bytes: int | None = None) -> dict:
    """The bf16 matmul peak (TFLOP/s) and device-to-device copy bandwidth (GB/s, read + write) of this GPU."""
    import torch

    n, copy_bytes = n or MATMUL_N, copy_bytes or COPY_BYTES
    dev = report_device()
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
    mm = cuda_ms(lambda: torch.matmul(a, b, out=c), dev, inner=50)
    a = b = c = None
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=dev)
    src.fill_(1)
    dst = torch.empty_like(src)
    cp = cuda_ms(lambda: dst.copy_(src), dev, inner=20)
    src = dst = None
    free_cuda()
    flops = 2 * n**3
    return {
        "matmul_n": n,
        "bf16_tflops": flops / (min(mm) * 1e-3) / 1e12,
        "bf16_tflops_median": flops / (statistics.median(mm) * 1e-3) / 1e12,
        "matmul_ms_all": mm,
        "copy_bytes": copy_bytes,
        "copy_gbps": 2 * copy_bytes / (min(cp) * 1e-3) / 1e9,
        "copy_gbps_median": 2 * copy_bytes / (statistics.median(cp) * 1e-3) / 1e9,
        "copy_ms_all": cp,
    }


def _num(x: float) -> str:
    """A measured rate for a line of text: whole numbers from 100 up, three significant digits below (a CPU
    rehearsal's 0.03 TFLOP/s must not print as 0)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def peaks_from(ctx: dict) -> dict:
    """Part 1's measured peaks, or (when part 1 did not run) a quick measurement here."""
    peaks = ctx.get("peaks")
    if peaks and peaks.get("bf16_tflops"):
        return peaks
    print("part 1's peaks are not available: measuring them here", flush=True)
    return measure_peaks()


def free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ============================================================================================ part 1: environment
def _nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        q = "name,driver_version,clocks.max.sm,power.limit"
        res = subprocess.run(
            [exe, f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        values = [v.strip() for v in res.stdout.strip().splitlines()[0].split(",")]
        return dict(zip(("smi_name", "driver", "max_sm_clock", "power_limit"), values))
    except (OSError, IndexError, subprocess.SubprocessError):
        return {}


def compile_cache_sizes() -> dict:
    """Entries in Triton's and inductor's on-disk caches before the run (warm caches make parts 2-6 much faster)."""
    import getpass

    dirs = {
        "triton": Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache"),
        "inductor": Path(
            os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            or Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
        ),
    }
    return {k: (sum(1 for _ in d.iterdir()) if d.is_dir() else 0) for k, d in dirs.items()}


def run_environment(rec: Recorder, ctx: dict) -> None:
    import torch

    from pytorch_basis.common import cpu_model_name

    dev = report_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False: no CUDA GPU visible to this torch build")
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env = {
            "gpu": torch.cuda.get_device_name(dev),
            "gpu_count": torch.cuda.device_count(),
            "capability": "{}.{}".format(*torch.cuda.get_device_capability(dev)),
            "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
        }
    else:  # the CPU rehearsal
        env = {"gpu": f"none ({dev.type} rehearsal)", "gpu_count": 0, "capability": "-", "sm_count": "-",
               "memory_gib": "-"}  # fmt: skip
    env |= {
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model_name() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    for name in ("transformers", "tiktoken", "pytest", "numpy", "tqdm", "matplotlib"):
        env[f"has_{name}"] = has_module(name)
    env.update(_nvidia_smi())
    env["nvcc"] = shutil.which("nvcc")
    env["compile_caches"] = compile_cache_sizes()
    rec.summary(env=env)
    print(json.dumps(env, indent=1), flush=True)
    peaks = measure_peaks()
    rec.summary(peaks=peaks)
    published = ch2_speed_ladder().GPU_BF16_PEAK  # data-sheet peaks, only to compare with
    pub = next((v for k, v in published.items() if k in env["gpu"]), None)
    rec.summary(published_bf16_tflops=pub / 1e12 if pub else None)
    sheet = f", {peaks['bf16_tflops'] / (pub / 1e12):.0%} of the data sheet" if pub else ""
    print(
        f"bf16 {peaks['matmul_n']}^3 matmul: best {_num(peaks['bf16_tflops'])} TFLOP/s (median "
        f"{_num(peaks['bf16_tflops_median'])}){sheet}; {peaks['copy_bytes'] / 2**30:g} GiB device copy: "
        f"{_num(peaks['copy_gbps'])} GB/s (read + write, median {_num(peaks['copy_gbps_median'])})",
        flush=True,
    )


def check_environment() -> list[str]:
    import torch

    from pytorch_basis import common

    require(common, "cpu_model_name")
    ch2_speed_ladder()
    return [f"torch {torch.__version__}; measure_peaks uses torch.matmul(out=) and Tensor.copy_ with CUDA events"]


# ============================================================================================ part 2: gpu tests
GPU_TESTS_FIRST = ("test_triton_flash.py",)
GPU_MARK = re.compile(r"pytest\.mark\.gpu\b")
OUTCOMES = "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS"
RESULT_LINE = re.compile(rf"^(tests/\S+::\S+) ({OUTCOMES})\b")  # pytest -v, one process
XDIST_RESULT_LINE = re.compile(rf"^\[gw\d+\] ({OUTCOMES}) (tests/\S+::\S+)")  # pytest -v -n N (pytest-xdist)


def parse_result_line(line: str) -> tuple[str, str] | None:
    """``(test id, outcome)`` of a ``pytest -v`` result line, with or without pytest-xdist, else None (the
    short summary at the end, which repeats the failures, is not a result line)."""
    m = RESULT_LINE.match(line)
    if m:
        return m.group(1), m.group(2)
    m = XDIST_RESULT_LINE.match(line)
    return (m.group(2), m.group(1)) if m else None


def xdist_workers() -> int:
    """pytest-xdist workers for part 2, 0 without the package: the tests compile their kernels in parallel (each
    test process compiles what it runs; Triton's compiler is single-threaded), one GPU shared by all."""
    if not has_module("xdist"):
        return 0
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def gpu_test_files() -> list[str]:
    """Test files that hold at least one ``@pytest.mark.gpu`` test (only these are collected on the GPU, so a
    test module that needs a package this machine lacks cannot stop the run at collection)."""
    files = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if GPU_MARK.search(path.read_text(encoding="utf-8", errors="replace")):
            files.append(str(path.relative_to(ROOT)))
    # the kernels' own tests first: if the part runs out of time (e.g. compiling a CUDA extension), they have run
    return sorted(files, key=lambda f: (Path(f).name not in GPU_TESTS_FIRST, f))


def pytest_command(junit: Path) -> list[str]:
    workers = xdist_workers()
    return [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        *(["-n", str(workers)] if workers else []),
        "-v",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        f"--junitxml={junit}",
        "-o",
        "console_output_style=classic",
        *gpu_test_files(),
    ]


def _junit_failures(junit: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    out = {}
    if not junit.exists():
        return out
    for case in ET.parse(junit).getroot().iter("testcase"):
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                msg = (el.get("message") or el.text or "").strip().splitlines()
                out[case.get("name", "")] = (msg[0] if msg else tag)[:300]
    return out


def run_gpu_tests(rec: Recorder, ctx: dict) -> None:
    junit = Path(ctx["report_dir"]) / "gpu_tests.junit.xml"
    cmd = pytest_command(junit)
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_SCRATCH_FORBID_SKIPS", "TRITON_INTERPRET")}
    rec.summary(command=" ".join(cmd[1:]), autotune=os.environ.get("LLM_SCRATCH_AUTOTUNE") or "small (default)")
    counts: dict[str, int] = {}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        tail = (tail + [line.rstrip()])[-30:]
        result = parse_result_line(line)
        if result:
            test, outcome = result
            counts[outcome] = counts.get(outcome, 0) + 1
            rec.data["rows"].append({"test": test, "outcome": outcome})
            if sum(counts.values()) % 10 == 0:
                rec.summary(counts=counts)
    rc = proc.wait()
    failures = _junit_failures(junit)
    for row in rec.data["rows"]:
        name = row["test"].split("::", 1)[1]
        if name in failures:
            row["message"] = failures[name]
    rec.summary(counts=counts, pytest_rc=rc, tail=tail[-5:])
    if rc not in (0, 5):
        rec.fail(f"pytest -m gpu exited {rc}: {counts}")
    if counts.get("SKIPPED") and report_device().type == "cuda":
        rec.fail(f"{counts['SKIPPED']} gpu test(s) skipped although a GPU is present (see the junit file)")


def check_gpu_tests() -> list[str]:
    if not has_module("pytest"):
        raise CheckFailed("pytest is not installed")
    files = gpu_test_files()
    if not files:
        raise CheckFailed("no test file under tests/ has a @pytest.mark.gpu test")
    n = sum(len(GPU_MARK.findall((ROOT / f).read_text())) for f in files)
    workers = xdist_workers()
    how = f"pytest-xdist, {workers} workers" if workers else "one process (pytest-xdist not installed here)"
    return [f"{n} gpu-marked test functions in {len(files)} file(s): {', '.join(files)}; {how}"]


# ============================================================================================ part 3: flash bench
FLASH_SEQ_LENS = (4096, 1024, 16384)  # the target length first: a part that runs out of time still has it
FLASH_HEAD_DIMS = (64, 128)
FLASH_DTYPES = ("float16", "bfloat16")
FLASH_TARGET_N = 4096
FLASH_TARGETS = {"fwd": 0.9, "bwd": 0.7}


def autotune_mode(tf) -> str:
    """The kernels' autotuning volume (``LLM_SCRATCH_AUTOTUNE``: small by default, full opt-in, off)."""
    mode = getattr(tf, "AUTOTUNE_MODE", None)
    if mode is None:
        return "this version of triton_flash.py has no autotune modes (full config space)"
    return f"LLM_SCRATCH_AUTOTUNE={mode}" + (" (the default)" if mode == "small" else "")


def flash_targets(rec: Recorder, ratios: list[dict]) -> None:
    at_target = [r for r in ratios if r["N"] == FLASH_TARGET_N]
    for mode, goal in FLASH_TARGETS.items():
        if at_target:
            worst = min(r[mode] for r in at_target)
            met = sum(r[mode] >= goal for r in at_target)
            rec.target(
                f"{mode} ours/SDPA at N={FLASH_TARGET_N} (worst of {len(at_target)}; {met} meet it)",
                round(worst, 3),
                f">= {goal}",
                worst >= goal,
            )


TMA_RESERVE_S = 25  # kept back from the main grid on a Hopper GPU for the first TMA-vs-pointer row
TMA_ROW_S = 25  # a TMA row compiles three kernels and times two load paths: started only with this much left
TMA_CASES = ((128, True), (64, False), (128, False), (64, True))  # (D, causal), most telling first
GQA_RESERVE_S = 15  # kept back from the main grid for the first GQA row (its kernels are precompiled)
GQA_ROW_S = 15  # a GQA row checks and times three backward paths: started only with this much left


def tma_available(les) -> str | None:
    """None if this GPU and lesson 21 can compare TMA with pointer loads, else why not."""
    import torch

    if not hasattr(les, "tma_rows"):
        return "lesson 21 has no tma_rows"
    cap = torch.cuda.get_device_capability()
    if cap < (9, 0):
        return f"compute capability {cap[0]}.{cap[1]} has no Tensor Memory Accelerator (9.0+)"
    return None


def run_flash_bench(rec: Recorder, ctx: dict) -> None:

    les = ch4_lesson21()
    tf = ch4_kernels()
    rec.note(f"autotuning: {autotune_mode(tf)}")
    peak = peaks_from(ctx)["bf16_tflops"]
    dev = report_device()
    rec.summary(peak_tflops=peak, grid=dict(N=FLASH_SEQ_LENS, D=FLASH_HEAD_DIMS, dtypes=FLASH_DTYPES))
    rows_fn, how = ch4_benchmark_rows(les)
    rec.note(how)
    no_tma = tma_available(les)
    precompiled = precompile_flash(rec, ctx, flash_precompile_jobs(tf, les, with_tma=no_tma is None))
    margin = FLASH_MARGIN_PRECOMPILED_S if precompiled else FLASH_MARGIN_S
    if rows_fn is not None:
        reserve = (0 if no_tma else TMA_RESERVE_S) + (GQA_RESERVE_S if hasattr(les, "gqa_rows") else 0) + margin
        _flash_with_benchmark_rows(rec, ctx, rows_fn, peak, dev, reserve_s=reserve)
    else:
        _flash_with_bench_one(rec, les, peak, dev)
    try:
        from triton_flash_attention_scratch.triton_flash import best_configs

        rec.summary(best_configs=best_configs())
    except Exception as e:
        rec.note(f"best_configs unavailable: {e}")
    if no_tma:
        rec.note(f"TMA vs pointer loads: not run, {no_tma}")
    else:
        tma_comparison(rec, ctx, les)
    gqa_comparison(rec, ctx, les)
    register_facts(rec, ctx, tf, les)


PRECOMPILE_N = 256  # a multiple of every tile: the kernels specialise as for the grid's lengths (N % 16 == 0, EVEN_M)
PRECOMPILE_MAX_WORKERS = 14
PRECOMPILE_LIMIT_S = 60  # a worker still compiling after this is stopped; the grid then compiles what is left


def _config_dict(cfg) -> dict:
    return {"BLOCK_M": cfg.kwargs["BLOCK_M"], "BLOCK_N": cfg.kwargs["BLOCK_N"], "num_warps": cfg.num_warps,
            "num_stages": cfg.num_stages}  # fmt: skip


def flash_precompile_jobs(tf, les, with_tma: bool) -> list[dict]:
    """The launches that compile every kernel part 3 will ask for: per dtype, head dim and causality of the grid,
    the i-th config of each kernel's pruned autotuning space together (one launch compiles forward, dK/dV and dQ),
    and the TMA rows' defaults. Shapes as the grid's (H = model width / D) but N = PRECOMPILE_N, B = 1: Triton
    specialises on the divisibility of the lengths and strides, not on their values, so the binaries are the ones
    the grid loads from Triton's on-disk cache."""
    jobs = []
    smem = tf.smem_limit_bytes()
    for dtype in FLASH_DTYPES:
        for D in FLASH_HEAD_DIMS:
            spaces = {
                k: [c for c in tf.config_space(k) if tf.config_is_valid(k, c, FLASH_TARGET_N, D, 2, smem)] or
                   tf.config_space(k)[-1:]
                for k in tf.KERNELS
            }  # fmt: skip
            for causal in (False, True):
                for i in range(max(len(v) for v in spaces.values())):
                    configs = {k: _config_dict(v[min(i, len(v) - 1)]) for k, v in spaces.items()}
                    jobs.append(dict(dtype=dtype, D=D, causal=causal, H=les.MODEL_WIDTH // D, N=PRECOMPILE_N,
                                     configs=configs, tma=False))  # fmt: skip
    if with_tma:
        for D, causal in TMA_CASES:
            jobs.append(dict(dtype="bfloat16", D=D, causal=causal, H=les.MODEL_WIDTH // D, N=PRECOMPILE_N,
                             configs=tf.GPU_DEFAULT_CONFIGS, tma=True))  # fmt: skip
    g = getattr(les, "GQA_GRID", None)
    for _, H, H_kv in g["heads"] if g else ():  # the GQA rows: each split, K/V heads as theirs (1 is a constant)
        for split in (1, H // H_kv):
            jobs.append(dict(dtype=g["dtype"], D=g["head_dim"], causal=g["causal"], H=H, H_kv=H_kv, split=split,
                             N=PRECOMPILE_N, configs=tf.GPU_DEFAULT_CONFIGS, tma=False))  # fmt: skip
    return jobs


def precompile_job(job: dict, dev) -> None:
    """One precompile launch: the job's forward and backward once, at B = 1 and N = ``job["N"]``."""
    import torch

    from triton_flash_attention_scratch import triton_flash as tf

    dtype = getattr(torch, job["dtype"])
    q = torch.randn(1, job["H"], job["N"], job["D"], device=dev, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(1, job.get("H_kv", job["H"]), job["N"], job["D"], device=dev, dtype=dtype, requires_grad=True)
            for _ in range(2))  # fmt: skip
    o = tf.flash_attention(q, k, v, causal=job["causal"], configs=job["configs"], tma=job["tma"],
                           dkdv_split=job.get("split", 1))  # fmt: skip
    o.backward(torch.ones_like(o))
    sync(dev)


def precompile_worker(jobs_path: str) -> None:
    """``--precompile-worker``: run each job's forward and backward once (compiling its kernels into Triton's
    on-disk cache) and print one ``PRECOMPILED {json}`` line per job."""
    dev = report_device()
    for job in json.loads(Path(jobs_path).read_text()):
        t0 = time.perf_counter()
        try:
            precompile_job(job, dev)
            status = "ok"
        except Exception as e:  # noqa: BLE001 - e.g. a config this GPU cannot fit: the grid's autotuner skips it too
            status = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        print("PRECOMPILED " + json.dumps({**job, "status": status, "seconds": round(time.perf_counter() - t0, 2)}),
              flush=True)  # fmt: skip


def precompile_flash(rec: Recorder, ctx: dict, jobs: list[dict], workers: int | None = None) -> bool:
    """Compile part 3's kernels before the grid asks for them, in parallel processes: Triton compiles one kernel
    at a time per process (about a second each), and the grid needs about a hundred. True when every job ran."""
    if not jobs:
        return True
    workers = workers or max(1, min(len(jobs), (os.cpu_count() or 2) - 2, PRECOMPILE_MAX_WORKERS))
    left = ctx["deadline"] - time.monotonic() - 30 if "deadline" in ctx else PRECOMPILE_LIMIT_S
    limit = min(PRECOMPILE_LIMIT_S, left)
    if limit < 10:
        rec.note(f"precompile: not run, {left:.0f} s of the part left")
        return False
    folder = Path(ctx["report_dir"]) / "parts"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    t0, procs = time.perf_counter(), []
    for i in range(workers):
        path, log = folder / f"precompile_{i}.json", folder / f"precompile_{i}.log"
        write_json(jobs[i::workers], path)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--precompile-worker", str(path)]
        with open(log, "w") as f:  # a file, not a pipe: a worker that prints a lot cannot block on a full pipe
            procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True,
                                           start_new_session=True), log))  # fmt: skip
    done, timed_out = [], 0
    for proc, log in procs:
        try:
            proc.wait(timeout=max(1.0, limit - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            timed_out += 1
        marker = "PRECOMPILED "
        done += [json.loads(line[len(marker) :]) for line in log.read_text().splitlines() if line.startswith(marker)]
    failed = [d for d in done if d["status"] != "ok"]
    seconds = round(time.perf_counter() - t0, 1)
    rec.summary(precompile={"jobs": len(jobs), "done": len(done), "failed": len(failed), "workers": workers,
                            "seconds": seconds})  # fmt: skip
    rec.note(f"precompile: {len(done)} of {len(jobs)} launches compiled in {seconds} s by {workers} processes"
             + (f"; {timed_out} worker(s) stopped at {limit:.0f} s" if timed_out else ""))  # fmt: skip
    for d in failed[:5]:
        rec.note(f"precompile: {d['dtype']} D={d['D']} causal={d['causal']} {d['configs']}: {d['status']}")
    return len(done) == len(jobs)


def _rows_while_time_left(rec: Recorder, ctx: dict, what: str, key: str, cases, row_s: float, run, name) -> None:
    """``run(case)`` (one lesson-21 row) per case while ``row_s`` seconds of the part are left: the rows so far go
    to the summary under ``key`` after each, a failing row becomes a failure named ``name(case)``, and the cases
    left over a note with the command that gives them the time."""
    done = []
    for case in cases:
        left = ctx["deadline"] - time.monotonic() - REGISTER_MARGIN_S if "deadline" in ctx else None
        if left is not None and left < row_s:
            rec.note(
                f"{what}: {len(done)} of {len(cases)} rows run, {left:.0f} s of the part left; "
                "`bash .ci/gpu --only flash --limit 3=400` gives them the time"
            )
            break
        done.append(run(case))
        rec.summary(**{key: done})
        if done[-1].get("status") != "ok":
            rec.fail(f"{name(case)}: {done[-1].get('status')}")


def _print_line(line: str) -> None:
    print(line, flush=True)


def tma_comparison(rec: Recorder, ctx: dict, les) -> None:
    """Lesson 21's ``tma_rows``, one (D, causal) at a time while time is left: the same kernels and tiles
    (``GPU_DEFAULT_CONFIGS``) with their streamed tiles loaded by TMA or by pointer arithmetic, N = 4096, bf16."""
    _rows_while_time_left(
        rec, ctx, "TMA vs pointer loads", "tma_rows", TMA_CASES, TMA_ROW_S,
        lambda c: les.tma_rows(head_dims=(c[0],), causal=(c[1],), device=str(report_device()), log=_print_line)[0],
        lambda c: f"TMA row D={c[0]} causal={c[1]}",
    )  # fmt: skip


def gqa_comparison(rec: Recorder, ctx: dict, les) -> None:
    """Lesson 21's ``gqa_rows``, one shape at a time while time is left: the GQA backward with the group in one
    dK/dV program and split among H / H_kv, and SDPA, GPU_DEFAULT_CONFIGS, N = 4096, D = 128, bf16, causal."""
    if not hasattr(les, "gqa_rows"):
        rec.note("GQA backward: not run, lesson 21 has no gqa_rows")
        return
    _rows_while_time_left(
        rec, ctx, "GQA backward", "gqa_rows", les.GQA_GRID["heads"], GQA_ROW_S,
        lambda c: les.gqa_rows(heads=(c,), device=str(report_device()), log=_print_line)[0],
        lambda c: f"GQA row {c[0]} H={c[1]} H_kv={c[2]}",
    )  # fmt: skip


REGISTER_MARGIN_S = 15  # six compilations of a few seconds each, run only when this much of the part is left


def register_jobs(tf, les, arch: int) -> list[dict]:
    """The default configs as the benchmark's target row launches them: bf16, causal, N = FLASH_TARGET_N and
    lesson 21's H = model width / D (Triton specialises on those sizes: a multiple of 16 is compiled differently)."""
    jobs = []
    for d in FLASH_HEAD_DIMS:
        sizes = {"H": les.MODEL_WIDTH // d, "H_KV": les.MODEL_WIDTH // d, "N_CTX": FLASH_TARGET_N}
        jobs += [{"kernel": k, "arch": arch, "dtype": "bfloat16", "head_dim": d, "causal": True,
                  "config": tf.GPU_DEFAULT_CONFIGS[k], "sizes": sizes} for k in ("fwd", "dkdv", "dq")]  # fmt: skip
    return jobs


def register_facts(rec: Recorder, ctx: dict, tf, les) -> None:
    """ptxas' registers per thread and spill bytes of the default configs, compiled for this GPU with this
    machine's Triton (its ptxas may differ from the one the chapter's table was made with), specialised as the
    benchmark's N = FLASH_TARGET_N rows launch them."""
    import torch

    aot = getattr(tf, "compile_ahead_of_time", None)
    defaults = getattr(tf, "GPU_DEFAULT_CONFIGS", None)
    if aot is None or defaults is None:
        rec.note("register use: this version of triton_flash.py cannot compile ahead of time")
        return
    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    left = ctx["deadline"] - time.monotonic() if "deadline" in ctx else None
    if left is not None and left < REGISTER_MARGIN_S:
        rec.note(f"register use: not compiled, {left:.0f} s of the part left")
        return
    jobs = register_jobs(tf, les, arch)
    try:
        facts = aot(jobs)
    except Exception as e:  # e.g. an architecture the helper does not know: report, do not fail the part
        rec.note(f"register use on sm_{arch}: not compiled ({type(e).__name__}: {str(e)[:200]})")
        return
    keep = ("kernel", "arch", "dtype", "head_dim", "config", "sizes", "registers", "spill_stores", "spill_loads",
            "shared_bytes")  # fmt: skip
    rec.summary(registers=[{k: f.get(k) for k in keep} for f in facts])


FLASH_MARGIN_S = 45  # a row started just before the time limit may still autotune and time (tens of seconds)
FLASH_MARGIN_PRECOMPILED_S = 15  # the same with every kernel already compiled: tuning and timing only


def _flash_with_benchmark_rows(rec: Recorder, ctx: dict, rows_fn, peak: float, dev, reserve_s: float) -> None:
    """Lesson 21's trimmed-grid benchmark: no row starts later than ``reserve_s`` before the part's deadline."""
    left = ctx["deadline"] - time.monotonic() - reserve_s if "deadline" in ctx else None
    rows = rows_fn(seq_lens=FLASH_SEQ_LENS, head_dims=FLASH_HEAD_DIMS, dtypes=FLASH_DTYPES, causal=(False, True),
                   time_limit_s=None if left is None else max(left, 1.0), device=str(dev),
                   log=lambda line: print(line, flush=True))  # fmt: skip
    ratios, skipped = [], 0
    for row in rows:
        key = {k: row[k] for k in ("N", "D", "dtype", "causal")}
        if row.get("status") == "time limit":
            skipped += 1
            continue
        if row.get("status") != "ok":
            rec.row({"impl": "both", **key, "error": row.get("status")})
            rec.fail(f"N={row['N']} D={row['D']} {row['dtype']} causal={row['causal']}: {row.get('status')}")
            continue
        for impl, prefix in (("triton", "ours"), ("sdpa", "sdpa")):
            r = {"impl": impl, **key, "B": row["B"], "H": row["H"]}
            for mode in ("fwd", "bwd"):
                r[f"{mode}_tflops"] = row[f"{prefix}_{mode}_tflops"]
                r[f"{mode}_peak_fraction"] = row[f"{prefix}_{mode}_tflops"] / peak
                for q in ("", "_q20", "_q80"):
                    r[f"{mode}_ms{q}"] = row.get(f"{prefix}_{mode}_ms{q}")
            rec.row(r)
        ratios.append({**key, "fwd": row["fwd_vs_sdpa"], "bwd": row["bwd_vs_sdpa"]})
    rec.summary(ratios=ratios)
    if skipped:
        rec.fail(f"{skipped} of {len(rows)} benchmark rows not run: the part's time ran out")
    flash_targets(rec, ratios)


def _flash_with_bench_one(rec: Recorder, les, peak: float, dev) -> None:
    import torch

    ratios = []
    for N in FLASH_SEQ_LENS:
        for dtype in FLASH_DTYPES:
            for D in FLASH_HEAD_DIMS:
                for causal in (False, True):
                    pair = {}
                    for impl in ("triton", "sdpa"):
                        t0 = time.perf_counter()
                        try:
                            r = les.bench_one(impl=impl, N=N, D=D, dtype=getattr(torch, dtype), causal=causal, dev=dev)
                        except Exception as e:  # a config that fails to compile or to launch: report, go on
                            r = {
                                "impl": impl,
                                "N": N,
                                "D": D,
                                "dtype": dtype,
                                "causal": causal,
                                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                            }
                            rec.fail(f"{impl} N={N} D={D} {dtype} causal={causal}: {r['error']}")
                        r["seconds"] = round(time.perf_counter() - t0, 2)
                        for mode in ("fwd", "bwd"):
                            if f"{mode}_tflops" in r:
                                r[f"{mode}_peak_fraction"] = r[f"{mode}_tflops"] / peak
                        pair[impl] = r
                        rec.row(r)
                        print(
                            f"{impl:6s} {dtype:8s} causal={causal!s:5s} D={D:3d} N={N:5d} "
                            f"fwd {fmt(r.get('fwd_tflops'))} bwd {fmt(r.get('bwd_tflops'))} TFLOP/s "
                            f"({r['seconds']:.1f} s incl. tuning)",
                            flush=True,
                        )
                        free_cuda()
                    if all("fwd_tflops" in pair[i] for i in pair):
                        ratio = {m: pair["triton"][f"{m}_tflops"] / pair["sdpa"][f"{m}_tflops"] for m in ("fwd", "bwd")}
                        ratios.append({"N": N, "D": D, "dtype": dtype, "causal": causal, **ratio})
                        rec.summary(ratios=ratios)
        if N == FLASH_TARGET_N:  # the targets as soon as their rows exist (the part may run out of time later)
            flash_targets(rec, ratios)


def check_flash_bench() -> list[str]:
    tf = ch4_kernels()
    les = ch4_lesson21()
    _, how = ch4_benchmark_rows(les)
    require(tf, "compile_ahead_of_time", ("jobs",))
    require(tf, "GPU_DEFAULT_CONFIGS")
    require(les, "tma_rows", ("head_dims", "causal", "device", "log"))
    require(les, "gqa_rows", ("heads", "device", "log"))
    require(les, "GQA_GRID")
    require(tf, "flash_attention", ("dkdv_split",))
    n = len(FLASH_SEQ_LENS) * len(FLASH_HEAD_DIMS) * len(FLASH_DTYPES) * 2
    return [
        f"lesson 21 over N={FLASH_SEQ_LENS} x D={FLASH_HEAD_DIMS} x {FLASH_DTYPES} x causal/not: "
        f"{n} cases x (triton, sdpa); B*N = {les.TOKENS} tokens; autotuning: {autotune_mode(tf)}",
        how,
        f"first the grid's kernels compiled in parallel processes ({len(flash_precompile_jobs(tf, les, True))} "
        f"launches, at most {PRECOMPILE_LIMIT_S} s), then the rows",
        f"on compute capability 9.0+: TMA vs pointer loads (lesson 21 tma_rows, GPU_DEFAULT_CONFIGS, N=4096, bf16) "
        f"for (D, causal) in {TMA_CASES} while {TMA_ROW_S} s per row are left ({TMA_RESERVE_S} s kept from the grid)",
        f"then the GQA backward, the group in one dK/dV program vs split (lesson 21 gqa_rows, H/H_kv in "
        f"{[(h, kv) for _, h, kv in les.GQA_GRID['heads']]}, N={les.GQA_GRID['seq_len']}) while {GQA_ROW_S} s per "
        f"row are left ({GQA_RESERVE_S} s kept from the grid)",
        f"then ptxas' register use of GPU_DEFAULT_CONFIGS at D={FLASH_HEAD_DIMS} for this GPU, if "
        f"{REGISTER_MARGIN_S} s of the part are left",
    ]


# ============================================================================================ part 4: GPT-2 ladder
GPT2_PRESET, GPT2_B, GPT2_T = "gpt2", 16, 1024
GPT2_STEPS = 5  # timed steps per rung (after the warm-up steps)
GPT2_MFU_TARGET = 0.45
TRITON_RUNG = ("+ Triton flash attention (chapter 4 kernels)", {"attn_impl": "triton"}, None)


def gpt2_rungs(sl) -> list[tuple[str, dict, float | None]]:
    """Lesson 11's ladder (``speed_ladder.LADDER``) without its CPU-only rung, strictly cumulative, then the Triton
    attention rung."""
    rungs = [tuple(r) for r in sl.LADDER if "keep_freed_memory" not in r[1]]
    rungs += [TRITON_RUNG]
    if REHEARSAL:  # torch.compile's CPU warm-up would take minutes per rung
        rungs = [
            (f"{name} (rehearsal: not compiled)" if "compile" in change else name,
             {k: v for k, v in change.items() if k != "compile"}, ms)
            for name, change, ms in rungs
        ]  # fmt: skip
        # Triton's interpreter refuses bf16 (its bf16 tl.dot is wrong): the kernels run in fp16 there
        name, change, _ = rungs[-1]
        rungs[-1] = (f"{name} (rehearsal: fp16)", {**change, "amp": "fp16"}, None)
    return rungs


def gpt2_run_order(n: int) -> list[int]:
    """The order part 4 measures the ``n`` rungs in: the whole recipe first (the rung of the MFU target), then the
    Triton rung, then the ladder from its foot. Each compiled rung costs tens of seconds of torch.compile, so a part
    that runs out of time still has the target. The report lists the rungs in ladder order."""
    return [n - 2, n - 1, *range(n - 2)] if n >= 2 else list(range(n))


def run_gpt2_ladder(rec: Recorder, ctx: dict) -> None:
    import torch

    sl = ch2_speed_ladder()
    model_mod = ch2_model()
    peak = peaks_from(ctx)["bf16_tflops"] * 1e12
    dev = report_device()
    config = model_mod.GPTConfig.preset(GPT2_PRESET)
    g = torch.Generator().manual_seed(1337)
    x = torch.randint(0, config.vocab_size, (GPT2_B, GPT2_T), generator=g).to(dev)
    y = torch.randint(0, config.vocab_size, (GPT2_B, GPT2_T), generator=g).to(dev)
    flops = sl.train_flops(config=config, B=GPT2_B, T=GPT2_T)
    model_name = "gpt2 (124M)" if GPT2_PRESET == "gpt2" else f"GPTConfig.preset({GPT2_PRESET!r})"
    rec.summary(B=GPT2_B, T=GPT2_T, flops_per_step=flops, peak_tflops=peak / 1e12, model=model_name)
    rungs, setups, setup = gpt2_rungs(sl), [], sl.StepSetup()
    for _, change, _ in rungs:  # each rung adds its change to everything below it
        setup = dataclasses.replace(setup, **change)
        setups.append(setup)
    order = gpt2_run_order(len(rungs))
    rec.summary(order=[rungs[i][0].strip() for i in order])
    for index in order:
        (name, change, ref_ms), setup = rungs[index], setups[index]
        tries = [setup] if not setup.compile or change.get("attn_impl") != "triton" else [setup, None]
        for attempt in tries:
            if attempt is None:  # the compiled Triton rung failed: measure the kernels without torch.compile
                attempt = dataclasses.replace(setup, compile=False)
                name = name + " (eager: compiled version failed)"
            row = {"rung": name.strip(), "index": index, "setup": dataclasses.asdict(attempt), "video_ms": ref_ms}
            t0 = time.perf_counter()
            try:
                model = sl.build_model(config=config, setup=attempt, device=dev, seed=1337)
                with sl.matmul_precision(tf32=attempt.tf32):
                    step = sl.make_train_step(model=model, setup=attempt, device=dev)
                    warmup = 2 if attempt.compile else 1
                    firsts, times = sl.time_steps(
                        steps_fns=[step], x=x, y=y, device=dev, warmup=warmup, steps=GPT2_STEPS, budget_s=20.0
                    )
                ms = statistics.median(times[0])
                row.update(
                    ms=ms,
                    ms_min=min(times[0]),
                    ms_max=max(times[0]),
                    steps=len(times[0]),
                    first_step_s=firsts[0],
                    tokens_per_s=GPT2_B * GPT2_T / ms * 1e3,
                    mfu=flops / (ms * 1e-3) / peak,
                    max_mem_gib=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
                )
                print(
                    f"{name:48s} {ms:8.1f} ms/step  MFU {row['mfu']:6.1%}  first step {firsts[0]:.1f} s  "
                    f"(min {row['ms_min']:.1f}, max {row['ms_max']:.1f}, {row['steps']} steps)",
                    flush=True,
                )
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                rec.fail(f"{name}: {row['error']}")
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rec.row(row)
            model = step = None
            free_cuda()
            if "error" not in row:
                break
    measured = [r for r in rec.data["rows"] if "ms" in r and "triton" not in r["rung"].lower()]
    if measured:
        last = max(measured, key=lambda r: r["index"])
        rec.target(
            f"MFU of '{last['rung']}'", round(last["mfu"], 3), f">= {GPT2_MFU_TARGET}", last["mfu"] >= GPT2_MFU_TARGET
        )


def check_gpt2_ladder() -> list[str]:
    import torch

    sl = ch2_speed_ladder()
    model_mod = ch2_model()
    rungs = gpt2_rungs(sl)
    cfg = model_mod.GPTConfig.preset("gpt2")
    flops = sl.train_flops(config=cfg, B=GPT2_B, T=GPT2_T)
    setup = sl.StepSetup()
    for _, change, _ in rungs:
        setup = dataclasses.replace(setup, **change)
        with torch.device("meta"):
            sl.build_model(config=cfg, setup=setup, device=torch.device("meta"), seed=0)
    return [
        f"{len(rungs)} rungs: " + " -> ".join(r[0].lstrip("+ ") for r in rungs),
        f"{flops / 1e12:.1f} TFLOP per step (B={GPT2_B}, T={GPT2_T}); every rung's model builds on the meta device",
    ]


# ============================================================================================ part 5: LLaMA decode
# A ~1.1B-parameter LLaMA shape (the TinyLlama-1.1B layout: 22 layers, dim 2048, 32 query / 4 key-value heads).
DECODE_SHAPE = dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, hidden_dim=5632, vocab_size=32000)
DECODE_PROMPT, DECODE_NEW, DECODE_REPEATS = 16, 128, 2


def decode_args(llama_model, max_seq_len: int):
    return llama_model.ModelArgs(**DECODE_SHAPE, max_batch_size=1, max_seq_len=max_seq_len)


def hf_llama_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        tie_word_embeddings=False,
    )


def _decode_models(rec: Recorder, llama_model, loading, args, dev):
    """Our random bf16 LLaMA on the GPU and, with transformers, a LlamaForCausalLM holding the same weights."""
    import torch

    torch.manual_seed(0)
    with torch.device(dev):
        ours = llama_model.Transformer(args)
    ours.init_weights(std=0.02)
    ours = ours.to(torch.bfloat16).eval()
    hf = None
    if has_module("transformers"):
        from transformers import LlamaForCausalLM

        with torch.device(dev):
            hf = LlamaForCausalLM(hf_llama_config(args)).to(torch.bfloat16).eval()
        hf.generation_config.eos_token_id = None  # exactly new_tokens tokens
        hf.generation_config.pad_token_id = 0
        ours.load_state_dict(loading.hf_to_meta_state_dict(hf.state_dict(), args))
    else:
        rec.note("transformers is not installed: HF generate skipped (ours only)")
    return ours, hf


def _decode_rows(rec: Recorder, res: dict, copy_gbps: float, only: tuple[str, ...] = ()) -> None:
    """One row per method of a ``fast_decode.benchmark`` result (``res["methods"]``: {method: {"tok_s": samples,
    "pct_of_limit": samples, "bytes_per_token", "same_tokens"}}), with the fraction of part 1's copy bandwidth."""
    for method, r in res["methods"].items():
        if only and method not in only:
            continue
        tps, bpt = statistics.median(r["tok_s"]), r["bytes_per_token"]
        pct = [v for v in r.get("pct_of_limit", []) if not math.isnan(v)]
        row = {
            "method": method, "tokens_per_s": tps, "tok_s_samples": r["tok_s"], "bytes_per_token": bpt,
            "weight_read_gbps": tps * bpt / 1e9, "bandwidth_fraction": tps * bpt / 1e9 / copy_gbps,
            "pct_of_gemv_limit": statistics.median(pct) if pct else None, "same_tokens_as_ours": r.get("same_tokens"),
        }  # fmt: skip
        if method == "static + compile":
            row["compile_seconds"] = res.get("compile_seconds")
        rec.row(row)
        print(f"{method:18s} {tps:8.1f} tok/s (samples {', '.join(f'{v:.0f}' for v in r['tok_s'])})  "
              f"{row['weight_read_gbps']:6.0f} GB/s read = {row['bandwidth_fraction']:.1%} of the copy bandwidth, "
              f"{fmt(row['pct_of_gemv_limit'], '.0f')}% of the GEMV limit", flush=True)  # fmt: skip


def run_decode(rec: Recorder, ctx: dict) -> None:
    import torch

    llama_model, gen, loading = ch3_llama()
    fast, fast_note = ch3_fast_decode()
    rec.note(fast_note)
    peaks = peaks_from(ctx)
    dev = report_device()
    total = DECODE_PROMPT + DECODE_NEW
    args = decode_args(llama_model, total)
    ours, hf = _decode_models(rec, llama_model, loading, args, dev)
    rec.summary(params=sum(p.numel() for p in ours.parameters()), shape=DECODE_SHAPE, prompt=DECODE_PROMPT,
                new_tokens=DECODE_NEW, dtype="bfloat16", batch=1, copy_gbps=peaks["copy_gbps"])  # fmt: skip
    if fast is not None:
        # eager methods first (HF included), so that a part that runs out of time during compilation keeps them
        res = fast.benchmark(model=ours, prompt_len=DECODE_PROMPT, new_tokens=DECODE_NEW, repeats=DECODE_REPEATS,
                             compile=False, hf_model=hf)  # fmt: skip
        rec.summary(
            gemv_gbps=res["bandwidth_GBs"], limit_tok_s=res["limit_tok_s"], bytes_per_token=res["bytes_per_token"]
        )
        _decode_rows(rec, res, peaks["copy_gbps"])
        free_cuda()
        if REHEARSAL:
            rec.note("rehearsal: static + torch.compile left out (its CPU warm-up takes minutes)")
            return
        res = fast.benchmark(model=ours, prompt_len=DECODE_PROMPT, new_tokens=DECODE_NEW, repeats=DECODE_REPEATS,
                             compile=True, hf_model=None)  # fmt: skip
        _decode_rows(rec, res, peaks["copy_gbps"], only=("static + compile",))
        rec.summary(compile_seconds=res.get("compile_seconds"), break_even_tokens=res.get("break_even_tokens"))
        return
    # without fast_decode.py: our generate (dynamic KV cache) vs HF generate, timed here
    emb = ours.tok_embeddings.weight
    bpt = sum(p.numel() * p.element_size() for p in ours.parameters()) - emb.numel() * emb.element_size()
    bpt += llama_model.kv_cache_bytes(args=args, batch=1, context=total, dtype=torch.bfloat16) // 2
    prompt = torch.randint(3, args.vocab_size, (DECODE_PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    methods = {"dynamic cache": lambda n: gen.generate(model=ours, prompts=[prompt], max_new_tokens=n)[0]}
    if hf is not None:

        def hf_run(n):
            ids = torch.tensor([prompt], device=dev)
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False)  # fmt: skip
            return out[0, len(prompt) :].tolist()

        methods["HF generate"] = hf_run
    samples = {name: [] for name in methods}
    outputs = {}
    with torch.inference_mode():
        for fn in methods.values():
            fn(8)  # warm-up: cuBLAS handles, allocator, kernels
        for _ in range(DECODE_REPEATS):
            for name, fn in methods.items():  # interleaved
                seconds, outputs[name] = timed_s(lambda fn=fn: fn(DECODE_NEW), dev)
                samples[name].append(DECODE_NEW / seconds)
    ref = outputs["dynamic cache"]
    same = {m: sum(a == b for a, b in zip(o, ref)) / len(ref) for m, o in outputs.items()}
    rows = {m: {"tok_s": samples[m], "bytes_per_token": bpt, "same_tokens": same[m]} for m in outputs}
    _decode_rows(rec, {"methods": rows}, peaks["copy_gbps"])


def check_decode() -> list[str]:
    import torch

    llama_model, _, _ = ch3_llama()
    fast, fast_note = ch3_fast_decode()
    args = decode_args(llama_model, DECODE_PROMPT + DECODE_NEW)
    lines = [
        f"random LLaMA {args.num_params() / 1e9:.2f} B parameters, bf16, batch 1, prompt {DECODE_PROMPT}, "
        f"{DECODE_NEW} new tokens, median of {DECODE_REPEATS} interleaved runs"
    ]
    with torch.device("meta"):
        require(llama_model.Transformer(args), "tok_embeddings", where="Transformer")
    if has_module("transformers"):
        hf_llama_config(args)
    else:
        lines.append("transformers not installed here: HF generate would be skipped")
    return lines + [fast_note]


# ============================================================================================ part 6: train smoke
SMOKE_B, SMOKE_T, SMOKE_STEPS, SMOKE_STOP, SMOKE_VOCAB = 64, 1024, 20, 10, 1024


def write_random_shards(folder: Path, fineweb) -> Path:
    """A val shard and a train shard of random tokens in fineweb.py's format (ids below SMOKE_VOCAB, so the loss
    has somewhere to fall: from ~ln 50257 = 10.8 towards ln 1024 = 6.9)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = {0: SMOKE_B * SMOKE_T * 2 + 1, 1: SMOKE_B * SMOKE_T * (SMOKE_STEPS + 2) + 1}
    for index, n in sizes.items():
        fineweb.write_shard(fineweb.shard_path(folder, "random", index), rng.integers(0, SMOKE_VOCAB, n))
    return folder


REHEARSAL_SMOKE = dict(n_layer=2, n_head=2, n_embd=64, device="cpu", dtype="fp32", compile=False)


def smoke_overrides(data: Path, out: Path) -> dict:
    """train_gpt2 options of the smoke run (the gpt2-124M preset, shortened: one micro-step per optimizer step;
    in the rehearsal also a 2-layer model on the CPU, ``REHEARSAL_SMOKE``)."""
    rehearsal = {**REHEARSAL_SMOKE, "block_size": SMOKE_T} if REHEARSAL else {}
    return rehearsal | dict(
        data=str(data),
        out=str(out),
        max_steps=SMOKE_STEPS,
        warmup_steps=2,
        total_batch_size=SMOKE_B * SMOKE_T,
        batch_size=SMOKE_B,
        seq_len=SMOKE_T,
        eval_every=1000,
        val_steps=1,
        hellaswag=False,
        sample_every=1000,
        checkpoint_every=1000,
        log_every=1,
        progress=False,
    )


def smoke_argv(overrides: dict, stop_after: int | None, resume: bool) -> list[str]:
    argv = ["--preset", "gpt2-124M"]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if key == "progress":
            continue  # not a command-line option: the CLI shows its bar
        if isinstance(value, bool):
            argv += [flag] if value else ["--no-" + key.replace("_", "-")]
        else:
            argv += [flag, str(value)]
    if stop_after is not None:
        argv += ["--stop-after", str(stop_after)]
    if resume:
        argv += ["--resume"]
    return argv


def cli_takes_num_samples(train_gpt2) -> bool:
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            train_gpt2.parse_args(["--num-samples", "0"])
            return True
        except SystemExit:
            return False


def smoke_uses_cli(train_gpt2) -> tuple[bool, str]:
    """The CLI can be used when it can turn off text samples, or when tiktoken's GPT-2 files load offline."""
    if cli_takes_num_samples(train_gpt2):
        return True, "train_gpt2.py --num-samples 0"
    try:
        from pytorch_gpt2_from_scratch.data import gpt2_encoding

        gpt2_encoding()
        return True, "train_gpt2.py (tiktoken's GPT-2 files load: the final text samples work)"
    except Exception as e:
        return False, (
            f"tiktoken's GPT-2 files do not load ({type(e).__name__}) and the CLI cannot turn samples off: "
            "train_gpt2.main(...) with num_samples=0 via this module's --train-worker"
        )


def torchrun_launcher() -> list[str]:
    """``torchrun`` of this Python (the script beside the interpreter), else ``python -m torch.distributed.run``."""
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _run_logged(cmd: list[str], env: dict, log: Path) -> tuple[int, str]:
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        text = []
        for line in proc.stdout:
            f.write(line)
            text.append(line)
            if "NCCL INFO" not in line:
                print(line, end="", flush=True)
        return proc.wait(), "".join(text)


def _losses(out: Path) -> dict[int, float]:
    path = out / "log.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def run_train_smoke(rec: Recorder, ctx: dict) -> None:
    train_gpt2, fineweb = ch2_train()
    report = Path(ctx["report_dir"])
    data = write_random_shards(report / "train_smoke" / "shards", fineweb)
    use_cli, how = smoke_uses_cli(train_gpt2)
    no_samples = cli_takes_num_samples(train_gpt2)
    rec.note(f"smoke runs through {how}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = str(ROOT / GPT2_CH / "train_gpt2.py") if use_cli else str(Path(__file__).resolve())

    def command(out: Path, stop_after, resume, launcher: list[str], compile_: bool = True) -> list[str]:
        ov = smoke_overrides(data, out)
        if not compile_:
            ov["compile"] = False
        if use_cli:
            extra = ["--num-samples", "0"] if no_samples else []
            return launcher + [script] + smoke_argv(ov, stop_after, resume) + extra
        ov.update(num_samples=0, stop_after=stop_after, resume="auto" if resume else None)
        return launcher + [script, "--train-worker", json.dumps(ov)]

    single = report / "train_smoke" / "single"
    shutil.rmtree(single, ignore_errors=True)
    runs = [
        ("first run (stops at step 10)", single, SMOKE_STOP, False, [sys.executable]),
        ("--resume to step 20", single, None, True, [sys.executable]),
    ]
    launcher = torchrun_launcher()
    ddp = report / "train_smoke" / "torchrun"
    shutil.rmtree(ddp, ignore_errors=True)
    # under torchrun the point is NCCL and DDP; without torch.compile (the runs above compiled) to save a compilation
    runs.append(("torchrun --nproc_per_node=1 (3 steps, no compile)", ddp, 3, False,
                 launcher + ["--standalone", "--nproc_per_node=1"]))  # fmt: skip
    for name, out, stop_after, resume, launch in runs:
        cmd = command(out, stop_after, resume, launch, compile_="torchrun" not in name)
        run_env = dict(env, NCCL_DEBUG="INFO") if "torchrun" in name else env
        t0 = time.perf_counter()
        rc, text = _run_logged(cmd, run_env, report / f"train_smoke_{len(rec.data['rows'])}.log")
        row = {
            "run": name,
            "rc": rc,
            "seconds": round(time.perf_counter() - t0, 1),
            "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)).replace(f"{ROOT}/", ""),
        }
        losses = _losses(out)
        row["steps_logged"] = sorted(losses)
        row["checkpoint"] = (out / "ckpt.pt").exists()
        if resume:
            row["resumed"] = "resumed from" in (out / "log.txt").read_text() if (out / "log.txt").exists() else False
        if "torchrun" in name:
            m = re.search(r"NCCL version ([\w.+-]+)", text)
            row["nccl"] = m.group(1) if m else ("NCCL INFO" in text)
        rec.row(row)
        if rc != 0:
            rec.fail(f"{name}: exit code {rc}")
    losses = _losses(single)
    first = [losses[s] for s in range(3) if s in losses]
    last = [losses[s] for s in range(SMOKE_STEPS - 3, SMOKE_STEPS) if s in losses]
    rec.summary(losses=losses)
    if first and last:
        drop = statistics.mean(first) - statistics.mean(last)
        rec.target("train loss: mean of steps 0-2 minus mean of steps 17-19", round(drop, 3), "> 0", drop > 0)
    else:
        rec.fail(f"train loss not logged for steps 0-2 and 17-19 (logged: {sorted(losses)})")
    rows = rec.data["rows"]
    if len(rows) >= 2 and not (rows[0]["checkpoint"] and rows[1].get("resumed")):
        rec.fail("checkpoint not written or not resumed")
    if len(rows) >= 3 and not rows[2].get("nccl") and report_device().type == "cuda":  # CPU: gloo
        rec.fail("torchrun run: no sign of NCCL initialising (NCCL_DEBUG=INFO printed nothing)")


def train_worker(overrides_json: str) -> None:
    """``--train-worker``: ``train_gpt2.main(preset="gpt2-124M", **overrides)`` (used when the CLI would need
    tiktoken for its text samples and this machine cannot load it)."""
    train_gpt2, _ = ch2_train()
    res = train_gpt2.main(preset="gpt2-124M", **json.loads(overrides_json))
    print(f"train worker: {res.steps_done} steps done, checkpoint {res.checkpoint}")


def check_train_smoke() -> list[str]:
    train_gpt2, fineweb = ch2_train()
    with tempfile.TemporaryDirectory() as d:
        data = write_random_shards(Path(d), fineweb)
        ov = smoke_overrides(data, Path(d) / "out")
        cfg = train_gpt2.make_config("gpt2-124M", **ov, num_samples=0, stop_after=SMOKE_STOP)  # validates
        args = train_gpt2.parse_args(smoke_argv(ov, SMOKE_STOP, True))
        lines = []
        if args.resume != "auto" or args.max_steps != SMOKE_STEPS:
            raise CheckFailed(f"train_gpt2.parse_args did not parse the smoke options: {args}")
        if cli_takes_num_samples(train_gpt2):
            lines.append("train_gpt2.py takes --num-samples: the CLI runs without tiktoken")
        else:
            lines.append("train_gpt2.py has no --num-samples: without tiktoken the smoke falls back to --train-worker")
    torchrun = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(torchrun_launcher()))
    return lines + [
        f"preset gpt2-124M: B={cfg.batch_size} T={cfg.seq_len}, compile={cfg.compile}, "
        f"{SMOKE_STEPS} steps in two runs + 3 steps under {torchrun} (no compile)"
    ]


# ============================================================================================ the parts
@dataclasses.dataclass(frozen=True)
class Part:
    number: int
    key: str
    title: str
    limit_s: int
    requires: tuple[str, ...]  # modules without which the part is skipped (with a line saying so)
    run: Callable[[Recorder, dict], None]
    check: Callable[[], list[str]]


# Own limits in seconds (a part also gets what the parts before it left unused). Nearly all of the time is
# compilation: Triton kernels (parts 2-3, cached on disk for the next run) and torch.compile (parts 4-6).
PARTS = [
    Part(1, "env", "environment, bf16 matmul peak, device copy bandwidth", 20, ("torch",),
         run_environment, check_environment),
    Part(2, "tests", "pytest -m gpu (kernel correctness)", 95, ("torch", "triton", "pytest"),
         run_gpu_tests, check_gpu_tests),
    Part(3, "flash", "flash attention: ours vs SDPA flash, trimmed grid", 95, ("torch", "triton"),
         run_flash_bench, check_flash_bench),
    Part(4, "gpt2", "GPT-2 124M training-step ladder, B=16 T=1024", 125, ("torch", "triton"),
         run_gpt2_ladder, check_gpt2_ladder),
    Part(5, "decode", "LLaMA ~1B bf16 decode, KV cache vs HF generate", 60, ("torch",),
         run_decode, check_decode),
    Part(6, "train", "train_gpt2.py --preset gpt2-124M smoke + resume + torchrun", 75,
         ("torch", "numpy", "tqdm", "matplotlib"), run_train_smoke, check_train_smoke),
]  # fmt: skip
PART_BY_KEY = {p.key: p for p in PARTS} | {str(p.number): p for p in PARTS}
REHEARSAL_SKIPS = {"flash": "needs CUDA: Triton compiles the kernels only for a GPU (their CPU checks are the tests)"}
# Module constants the rehearsal replaces (set in every process, the parts' included, from $GPU_REPORT_REHEARSAL)
REHEARSAL_SIZES = dict(
    MATMUL_N=256, COPY_BYTES=1 << 22,
    GPT2_PRESET="tiny", GPT2_B=2, GPT2_T=32, GPT2_STEPS=2,
    DECODE_SHAPE=dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, vocab_size=256),
    DECODE_PROMPT=4, DECODE_NEW=8, DECODE_REPEATS=1,
    SMOKE_B=2, SMOKE_T=32,
)  # fmt: skip


def apply_rehearsal() -> None:
    """Switch this process to the CPU rehearsal: tiny sizes, the CPU as the device, and the same for the parts'
    processes and the training runs they start (environment variables)."""
    global REHEARSAL
    REHEARSAL = True
    os.environ["GPU_REPORT_REHEARSAL"] = "1"
    os.environ["GPU_REPORT_DEVICE"] = "cpu"
    globals().update(REHEARSAL_SIZES)


# Two parts that need no GPU, for the tests of the plumbing (a part that finishes, one that overruns its limit).
def _selftest_ok(rec: Recorder, ctx: dict) -> None:
    rec.row({"value": 1})
    rec.target("selftest value", 1, ">= 1", True)


def _selftest_hang(rec: Recorder, ctx: dict) -> None:
    rec.row({"value": 1})
    print("selftest: sleeping past the limit", flush=True)
    time.sleep(600)


SELFTEST_PARTS = {
    "selftest-ok": Part(91, "selftest-ok", "selftest: a part that finishes", 10, (), _selftest_ok, list),
    "selftest-hang": Part(92, "selftest-hang", "selftest: a part that overruns", 10, (), _selftest_hang, list),
}
PART_BY_KEY |= SELFTEST_PARTS


def _run_part_child(part: Part, out: Path, ctx_path: Path, time_limit: float | None = None) -> int:
    """Inside the part's own process (``ctx["deadline"]``: ``time.monotonic()`` at which it will be killed)."""
    ctx = json.loads(ctx_path.read_text()) if ctx_path.exists() else {}
    if time_limit is not None:
        ctx["deadline"] = time.monotonic() + time_limit
    rec = Recorder(out)
    try:
        part.run(rec, ctx)
    except Exception as e:
        import traceback

        traceback.print_exc()
        rec.data["status"] = "crashed"
        rec.data["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        rec.flush()
        return 1
    rec.data["status"] = "failed" if rec.data.get("failures") else "ok"
    rec.flush()
    return 0


def _stream(proc: subprocess.Popen, prefix: str, log: Path) -> threading.Thread:
    def pump():
        with open(log, "w") as f:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                sys.stdout.write(f"{prefix}{line}")
                sys.stdout.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def _kill_group(proc: subprocess.Popen) -> int:
    """SIGTERM the part's process group (the part and everything it started), SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def run_part(part: Part, limit: float, report_dir: Path, ctx_path: Path) -> dict:
    """Run ``part`` in a new process group; kill the whole group when it exceeds ``limit`` seconds."""
    out = report_dir / "parts" / f"{part.number}_{part.key}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--run-part",
        part.key,
        "--part-out",
        str(out),
        "--context",
        str(ctx_path),
        "--time-limit",
        str(limit),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    pump = _stream(proc, f"[{part.number}] ", report_dir / "parts" / f"{part.number}_{part.key}.log")
    timed_out = False
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        rc = _kill_group(proc)
    except BaseException:  # Ctrl-C: the part runs in its own session, so stop it too
        _kill_group(proc)
        raise
    pump.join(timeout=5)
    result = json.loads(out.read_text()) if out.exists() else {"status": "crashed", "rows": [], "notes": []}
    if timed_out:
        result["status"] = "timed out"
    elif result.get("status") == "running":
        result["status"] = "crashed"
    result.update(
        number=part.number,
        key=part.key,
        title=part.title,
        limit_s=part.limit_s,
        granted_s=round(limit),
        rc=rc,
        wall_s=round(time.perf_counter() - t0, 1),
    )
    return result


# ============================================================================================ the report
def _part_headline(p: dict) -> str:
    s, rows = p.get("summary", {}), p.get("rows", [])
    if p["key"] == "env" and s.get("peaks"):
        e, k = s.get("env", {}), s["peaks"]
        return f"{e.get('gpu')}: bf16 {k['bf16_tflops']:.0f} TFLOP/s, copy {k['copy_gbps']:.0f} GB/s"
    if p["key"] == "tests" and s.get("counts"):
        return ", ".join(f"{v} {k.lower()}" for k, v in sorted(s["counts"].items()))
    if p["key"] == "flash":
        at = [r for r in s.get("ratios", []) if r["N"] == FLASH_TARGET_N]
        worst = f"; at N={FLASH_TARGET_N} ours/SDPA fwd >= {min(r['fwd'] for r in at):.2f}, bwd >= " if at else ""
        return f"{len(rows)} rows" + (worst + f"{min(r['bwd'] for r in at):.2f}" if at else "")
    if p["key"] == "gpt2":
        done = sorted((r for r in rows if "ms" in r), key=lambda r: r.get("index", 0))
        return (
            f"{len(done)} rungs; last {done[-1]['rung']}: {done[-1]['ms']:.0f} ms, MFU {done[-1]['mfu']:.0%}"
            if done
            else ""
        )
    if p["key"] == "decode" and rows:
        return "; ".join(f"{r['method']} {r['tokens_per_s']:.0f} tok/s" for r in rows if "tokens_per_s" in r)
    if p["key"] == "train" and rows:
        return "; ".join(f"{r['run']}: rc {r['rc']}" for r in rows)
    return p.get("error", "") or (p.get("skip_reason") or "")


def granted(p: dict) -> str:
    g = p.get("granted_s")
    return f" (given {g})" if g is not None and g != round(p.get("limit_s") or -1) else ""


def markdown_report(parts: list[dict], started: str, total_s: float, budget: float = TOTAL_BUDGET_S) -> str:
    env = next((p.get("summary", {}).get("env") for p in parts if p["key"] == "env"), None) or {}
    peaks = next((p.get("summary", {}).get("peaks") for p in parts if p["key"] == "env"), None) or {}
    lines = ["# GPU report (`bash .ci/gpu`)", ""]
    if REHEARSAL:
        lines += ["**Rehearsal on the CPU** (`bash .ci/gpu --rehearse`): tiny sizes, no torch.compile, part 3 skipped. "
                  "It shows that every part's code runs; its numbers mean nothing.", ""]  # fmt: skip
    if env:
        lines.append(
            f"{env.get('gpu')} (compute capability {env.get('capability')}, {env.get('sm_count')} SMs, "
            f"{env.get('memory_gib')} GiB), driver {env.get('driver', '?')}, CUDA {env.get('cuda_runtime')}, "
            f"torch {env.get('torch')}, triton {env.get('triton')}, Python {env.get('python')}; "
            f"{env.get('date_utc')} UTC."
        )
    if peaks:
        lines.append(
            f"Measured in this run: bf16 {peaks['matmul_n']}³ matmul {_num(peaks['bf16_tflops'])} TFLOP/s (best of "
            f"5, median {_num(peaks['bf16_tflops_median'])}); {peaks['copy_bytes'] / 2**30:g} GiB device-to-device "
            f"copy {_num(peaks['copy_gbps'])} GB/s "
            f"(read + write, median {_num(peaks['copy_gbps_median'])}). Every percentage below is against these."
        )
    lines += [
        f"Started {started} UTC; total {total_s:.0f} s (capped at {budget:.0f} s; each part has its own limit "
        "plus what the parts before it left unused).",
        "",
        "| part | status | wall s | limit s | headline |",
        "|---|---|---:|---:|---|",
    ]
    for p in parts:
        lines.append(
            f"| {p['number']}. {p['title']} | {p['status']} | {fmt(p.get('wall_s'), '.0f')} | "
            f"{fmt(p.get('limit_s'), '.0f', '')}{granted(p)} | {_part_headline(p)} |"
        )
    targets = [(p, t) for p in parts for t in p.get("targets", [])]
    if targets:
        lines += ["", "| target | measured | goal | met |", "|---|---:|---|---|"]
        for p, t in targets:
            lines.append(f"| {p['number']}. {t['name']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    for p in parts:
        lines += ["", f"## {p['number']}. {p['title']} — {p['status']}", ""]
        if p.get("skip_reason"):
            lines.append(f"Skipped: {p['skip_reason']}")
        if p.get("error"):
            lines.append(f"Error: `{p['error']}`")
        for n in p.get("notes", []):
            lines.append(f"- {n}")
        for f in p.get("failures", [])[:20]:
            lines.append(f"- FAILED: {f}")
        lines += _part_table(p)
    return "\n".join(lines) + "\n"


def _status_rows(rows: list[dict], head: str, start, cells) -> list[str]:
    """Markdown rows under ``head``: ``start(r)`` (the leading cells) then ``cells(r)``, or the row's status where it
    is not "ok", padded to the header's columns."""
    width = head.count("|") - 1
    out = []
    for r in rows:
        lead = start(r)
        if r.get("status") != "ok":
            out.append(f"{lead} {r.get('status')} |" + " |" * (width - lead.count("|")))
        else:
            out.append(f"{lead} {cells(r)}")
    return out


def _part_table(p: dict) -> list[str]:
    rows, key = p.get("rows", []), p["key"]
    out = [""]
    if key == "env" and p.get("summary", {}).get("env"):
        s = p["summary"]
        out.append("; ".join(f"{k}: {v}" for k, v in s["env"].items()))
        if s.get("published_bf16_tflops") and s.get("peaks"):
            out += ["", f"The measured bf16 matmul is {s['peaks']['bf16_tflops'] / s['published_bf16_tflops']:.0%} "
                        f"of the data sheet's dense peak ({s['published_bf16_tflops']:.0f} TFLOP/s)."]  # fmt: skip
    elif key == "tests":
        bad = [r for r in rows if r["outcome"] not in ("PASSED", "SKIPPED")]
        out.append(f"{len(rows)} tests reported; command `{p.get('summary', {}).get('command', '')}`.")
        if bad:
            out += ["", "| test | outcome | message |", "|---|---|---|"]
            out += [f"| `{r['test']}` | {r['outcome']} | {r.get('message', '')} |" for r in bad[:40]]
    elif key == "flash" and rows:
        out += [
            "| impl | dtype | causal | D | N | fwd TFLOP/s | bwd TFLOP/s | fwd % peak | bwd % peak |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(rows, key=lambda r: (r["dtype"], r["D"], r["causal"], r["N"], r["impl"])):
            if "error" in r:
                out.append(f"| {r['impl']} | {r['dtype']} | {r['causal']} | {r['D']} | {r['N']} | {r['error']} |||")
                continue
            out.append(
                f"| {r['impl']} | {r['dtype']} | {r['causal']} | {r['D']} | {r['N']} | {r['fwd_tflops']:.0f} | "
                f"{r['bwd_tflops']:.0f} | {r['fwd_peak_fraction']:.0%} | {r['bwd_peak_fraction']:.0%} |"
            )
        ratios = p.get("summary", {}).get("ratios", [])
        if ratios:
            out += ["", "| dtype | causal | D | N | fwd ours/SDPA | bwd ours/SDPA |", "|---|---|---:|---:|---:|---:|"]
            for r in sorted(ratios, key=lambda r: (r["dtype"], r["D"], r["causal"], r["N"])):
                out.append(f"| {r['dtype']} | {r['causal']} | {r['D']} | {r['N']} | {r['fwd']:.2f} | {r['bwd']:.2f} |")
    elif key == "gpt2" and rows:
        s = p.get("summary", {})
        if s.get("flops_per_step"):
            out += [f"{s['model']}, B={s['B']}, T={s['T']}, AdamW (fused); {s['flops_per_step'] / 1e12:.1f} TFLOP per "
                    f"step (6N + 12LCT per token); MFU against the measured bf16 peak ({s['peak_tflops']:.0f} "
                    "TFLOP/s); "
                    "median of the timed steps after warm-up (the first step, compilation included, is timed apart); "
                    "each rung adds one change to the one above; measured with the whole recipe (the MFU target) "
                    "first, then the Triton rung, then from the foot of the ladder.", ""]  # fmt: skip
        out += [
            "| rung | ms/step (median) | min-max | tokens/s | MFU | first step s | video ms (A100) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(rows, key=lambda r: r.get("index", 0)):  # ladder order (measured: the recipe first)
            if "error" in r:
                out.append(f"| {r['rung']} | failed: {r['error']} ||||||")
                continue
            out.append(
                f"| {r['rung']} | {r['ms']:.1f} | {r['ms_min']:.1f}-{r['ms_max']:.1f} | "
                f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['first_step_s']:.1f} | {r.get('video_ms') or ''} |"
            )
    elif key == "decode" and rows:
        s = p.get("summary", {})
        if s.get("bytes_per_token"):
            out += [f"{s['params'] / 1e9:.2f} B parameters, bf16, batch 1, greedy, prompt {s['prompt']} + "
                    f"{s['new_tokens']} new tokens (prefill included); {s['bytes_per_token'] / 1e9:.2f} GB read per "
                    f"token; medians of interleaved runs.", ""]  # fmt: skip
        out += [
            "| method | tok/s | samples | GB/s read | % of copy bandwidth | % of GEMV limit | same tokens "
            "| compile s |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r['method']} | {r['tokens_per_s']:.1f} | {', '.join(f'{v:.0f}' for v in r['tok_s_samples'])} | "
                f"{r['weight_read_gbps']:.0f} | {r['bandwidth_fraction']:.1%} | "
                f"{fmt(r.get('pct_of_gemv_limit'), '.0f')} | "
                f"{fmt(r.get('same_tokens_as_ours'), '.0%')} | {fmt(r.get('compile_seconds'), '.0f')} |"
            )
    elif key == "train" and rows:
        out += ["| run | exit | s | steps logged | checkpoint | resumed / NCCL |", "|---|---:|---:|---|---|---|"]
        for r in rows:
            steps = r["steps_logged"]
            span = f"{steps[0]}-{steps[-1]}" if steps else "none"
            extra = r.get("resumed", r.get("nccl", ""))
            out.append(f"| `{r['command']}` | {r['rc']} | {r['seconds']} | {span} | {r['checkpoint']} | {extra} |")
        losses = p.get("summary", {}).get("losses", {})
        if losses:
            out += [
                "",
                "train loss by step: "
                + ", ".join(f"{k}: {v:.3f}" for k, v in sorted(((int(k), v) for k, v in losses.items()))),
            ]
    tma = p.get("summary", {}).get("tma_rows", []) if key == "flash" else []
    if tma:
        out += ["", "TMA vs pointer loads, same kernels and tiles (GPU_DEFAULT_CONFIGS), TFLOP/s:", "",
                "| dtype | causal | D | N | fwd pointer | fwd TMA | fwd TMA/pointer | bwd pointer | bwd TMA | "
                "bwd TMA/pointer | max error vs SDPA (pointer / TMA) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        out += _status_rows(
            tma, out[-2], lambda r: f"| {r['dtype']} | {r['causal']} | {r['D']} | {r['N']} |",
            lambda r: f"{r['ptr_fwd_tflops']:.0f} | {r['tma_fwd_tflops']:.0f} | {r['fwd_tma_vs_ptr']:.2f} | "
                      f"{r['ptr_bwd_tflops']:.0f} | {r['tma_bwd_tflops']:.0f} | {r['bwd_tma_vs_ptr']:.2f} | "
                      f"{r['ptr_max_err']:.1e} / {r['tma_max_err']:.1e} |",
        )  # fmt: skip
    gqa = p.get("summary", {}).get("gqa_rows", []) if key == "flash" else []
    if gqa:
        out += ["", "GQA backward, the group of H / H_kv query heads in one dK/dV program (split 1) or one program "
                "per query head (split H / H_kv), GPU_DEFAULT_CONFIGS, bf16, causal, D = 128, TFLOP/s:", "",
                "| shape | B×H/H_kv | N | bwd split 1 | bwd split H/H_kv | split / 1 | bwd SDPA | best / SDPA | "
                "fwd ours/SDPA | max error vs SDPA (split 1 / split) | SDPA GQA by |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
        out += _status_rows(
            gqa, out[-2], lambda r: f"| {r['shape']} | {r['B']}×{r['H']}/{r['H_kv']} | {r['N']} |",
            lambda r: f"{r['s1_bwd_tflops']:.0f} | {r['sg_bwd_tflops']:.0f} | {r['bwd_split_vs_1']:.2f} | "
                      f"{r['sdpa_bwd_tflops']:.0f} | {r['bwd_best_vs_sdpa']:.2f} | {r['fwd_vs_sdpa']:.2f} | "
                      f"{r['s1_max_err']:.1e} / {r['sg_max_err']:.1e} | {r['sdpa_gqa']} |",
        )  # fmt: skip
    regs = p.get("summary", {}).get("registers", []) if key == "flash" else []
    if regs:
        n = (regs[0].get("sizes") or {}).get("N_CTX")
        out += ["", "GPU_DEFAULT_CONFIGS compiled for this GPU (bf16, causal" + (f", specialised as the N = {n} rows "
                "launch them" if n else "") + "), as ptxas reports them:", "",
                "| kernel | D | config | registers/thread | spill stores B | spill loads B | shared KiB |",
                "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in regs:
            c = r["config"]
            out.append(
                f"| {r['kernel']} | {r['head_dim']} | {c['BLOCK_M']}x{c['BLOCK_N']} w{c['num_warps']} "
                f"s{c['num_stages']} | {fmt(r['registers'], 'd')} | {fmt(r['spill_stores'], 'd')} | "
                f"{fmt(r['spill_loads'], 'd')} | {r['shared_bytes'] / 1024:.0f} |"
            )
    return out


def write_report(
    parts: list[dict], report_dir: Path, started: str, total_s: float, budget: float = TOTAL_BUDGET_S
) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    meta = {"started_utc": started, "total_s": round(total_s, 1), "budget_s": budget}
    write_json({**meta, "parts": parts}, report_dir / "report.json")
    tmp = report_dir / ".report.md.tmp"
    tmp.write_text(markdown_report(parts, started, total_s, budget))
    os.replace(tmp, report_dir / "report.md")


# ============================================================================================ dry run and main
def dry_run(parts: list[Part], limits: dict[int, float], budget: float) -> int:
    """List the parts and check every import and adapter they use; 1 when any check fails."""
    print(
        f".ci/gpu --dry-run: {len(parts)} part(s), limits add up to {sum(limits[q.number] for q in parts):.0f} s "
        f"(whole run capped at {budget:.0f} s)"
    )
    failed = 0
    for part in parts:
        print(f"\n{part.number}. {part.title}  [limit {limits[part.number]:.0f} s]")
        missing = [m for m in part.requires if not has_module(m)]
        if missing:
            print(f"   note: {', '.join(missing)} not installed here: on such a machine this part is skipped")
        try:
            for line in part.check():
                print(f"   ok: {line}")
        except Exception as e:  # CheckFailed, ImportError, AttributeError, ...
            failed += 1
            print(f"   FAILED: {type(e).__name__}: {e}")
    print(f"\ndry run {'FAILED' if failed else 'passed'}: {failed} part(s) with a failing check")
    return 1 if failed else 0


def parse_limits(items: list[str]) -> dict[int, float]:
    limits = {p.number: float(p.limit_s) for p in PARTS}
    for item in items:
        key, _, value = item.partition("=")
        if key not in PART_BY_KEY or key in SELFTEST_PARTS or not value:
            raise SystemExit(
                f"error: --limit {item!r}: expected PART=SECONDS, PART one of 1-6, {', '.join(q.key for q in PARTS)}"
            )
        try:
            limits[PART_BY_KEY[key].number] = float(value)
        except ValueError:
            raise SystemExit(f"error: --limit {item!r}: {value!r} is not a number of seconds") from None
    return limits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="list the parts and check imports/adapters; no GPU needed")
    p.add_argument("--only", nargs="+", default=None, metavar="PART", help="run only these parts (1-6 or names)")
    p.add_argument("--limit", nargs="+", default=[], metavar="PART=S", help="override a part's time limit")
    p.add_argument(
        "--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for the whole run (default %(default)s)"
    )
    p.add_argument("--out", default=None, help="report folder (default: $GPU_REPORT_DIR or out/gpu_report)")
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="no GPU needed: run parts 1, 2, 4-6 on the CPU at tiny sizes (report in out/gpu_report_rehearsal)",
    )
    p.add_argument("--run-part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--time-limit", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--part-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--context", default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--precompile-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.train_worker is not None:
        train_worker(args.train_worker)
        return 0
    if args.precompile_worker is not None:
        precompile_worker(args.precompile_worker)
        return 0
    if args.run_part is not None:
        return _run_part_child(PART_BY_KEY[args.run_part], Path(args.part_out), Path(args.context), args.time_limit)

    unknown = [k for k in (args.only or []) if k not in PART_BY_KEY or k in SELFTEST_PARTS]
    if unknown:
        print(f"error: --only {unknown}: parts are 1-6 or {', '.join(p.key for p in PARTS)}", file=sys.stderr)
        return 2
    parts = [PART_BY_KEY[k] for k in args.only] if args.only else PARTS
    parts = sorted(set(parts), key=lambda q: q.number)
    limits = parse_limits(args.limit)
    if args.dry_run:
        return dry_run(parts, limits, args.budget)
    if args.rehearse:
        apply_rehearsal()

    import torch

    if not REHEARSAL and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU visible to torch here; `bash .ci/gpu --dry-run` checks the parts without one, "
            "`bash .ci/gpu --rehearse` runs them on the CPU at tiny sizes",
            file=sys.stderr,
        )
        return 2
    default_dir = ROOT / "out" / ("gpu_report_rehearsal" if REHEARSAL else "gpu_report")
    report_dir = Path(args.out or os.environ.get("GPU_REPORT_DIR") or default_dir).resolve()
    (report_dir / "parts").mkdir(parents=True, exist_ok=True)
    ctx_path = report_dir / "parts" / "context.json"
    ctx = {"report_dir": str(report_dir)}
    write_json(ctx, ctx_path)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t_start = time.perf_counter()
    results: list[dict] = []
    runnable = [q for q in parts if all(has_module(m) for m in q.requires)]
    for part in parts:
        remaining = args.budget - (time.perf_counter() - t_start)
        # a part gets its own limit plus whatever the parts before it left unused, never the time of later parts
        later = sum(limits[q.number] + PART_OVERHEAD_S for q in runnable if q.number > part.number)
        base = dict(number=part.number, key=part.key, title=part.title, rows=[], notes=[], limit_s=limits[part.number])
        missing = [m for m in part.requires if not has_module(m)]
        if missing:
            res = dict(base, status="skipped", skip_reason=f"{', '.join(missing)} not installed on this machine")
        elif REHEARSAL and part.key in REHEARSAL_SKIPS:
            res = dict(base, status="skipped", skip_reason=f"rehearsal: {REHEARSAL_SKIPS[part.key]}")
        elif remaining < min(15, limits[part.number]):
            res = dict(base, status="not run", skip_reason=f"the whole run's {args.budget:.0f} s were used up")
        else:
            limit = min(remaining, max(limits[part.number], remaining - later))
            print(f"\n=== part {part.number}/{len(PARTS)}: {part.title} (limit {limit:.0f} s)", flush=True)
            res = run_part(part, limit, report_dir, ctx_path)
            res["limit_s"] = limits[part.number]
            if part.key == "env" and res.get("summary", {}).get("peaks"):
                ctx["peaks"] = res["summary"]["peaks"]
                write_json(ctx, ctx_path)
        print(
            f"=== part {part.number}: {res['status']}"
            + (f" ({res.get('skip_reason')})" if res.get("skip_reason") else "")
            + (f" in {res['wall_s']} s" if "wall_s" in res else ""),
            flush=True,
        )
        results.append(res)
        write_report(results, report_dir, started, time.perf_counter() - t_start, args.budget)
    total = time.perf_counter() - t_start
    write_report(results, report_dir, started, total, args.budget)
    print(f"\nreport: {report_dir / 'report.md'} (and report.json); {total:.0f} s in all")
    for r in results:
        print(f"  {r['number']}. {r['title']}: {r['status']}")
    bad = [r for r in results if r["status"] in ("failed", "crashed", "timed out")]
    return 1 if bad else 0


if REHEARSAL:  # a part's process (or a training worker) of a rehearsal: the same tiny sizes as its parent
    apply_rehearsal()

if __name__ == "__main__":
    sys.exit(main())
