"""``.ci/gpu``, the GPU report, without a GPU: its dry run, its adapters and its per-part time limits.

* ``bash .ci/gpu --dry-run`` must pass on this CPU machine: every module a part imports imports and every chapter
  function it calls exists with the parameters it passes;
* a renamed chapter function or a changed signature makes the dry run fail with a line naming it;
* a part that overruns its limit is killed and reported as "timed out" with the rows it had written, and the
  report is still written.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_report():
    name = "ci_gpu_report"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / ".ci" / "gpu_report.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.slow
def test_dry_run_passes():
    res = subprocess.run(["bash", ".ci/gpu", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "dry run passed" in res.stdout
    for n in range(1, 7):
        assert f"\n{n}. " in res.stdout, f"part {n} is not listed"
    assert "FAILED" not in res.stdout


def test_dry_run_catches_a_removed_function(gpu_report, monkeypatch, capsys):
    lesson21 = gpu_report.ch4_lesson21()
    monkeypatch.delattr(lesson21, "bench_one")
    limits = {p.number: p.limit_s for p in gpu_report.PARTS}
    assert gpu_report.dry_run([gpu_report.PART_BY_KEY["flash"]], limits, 470) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "bench_one does not exist" in out


def test_dry_run_catches_a_changed_signature(gpu_report, monkeypatch, capsys):
    speed_ladder = gpu_report.ch2_speed_ladder()
    monkeypatch.setattr(speed_ladder, "time_steps", lambda steps_fns, x, y, device, warmup, steps: None)
    limits = {p.number: p.limit_s for p in gpu_report.PARTS}
    assert gpu_report.dry_run([gpu_report.PART_BY_KEY["gpt2"]], limits, 470) == 1
    out = capsys.readouterr().out
    assert "time_steps" in out and "lacks parameter(s) ['budget_s']" in out


def test_limits_fit_the_eight_minutes(gpu_report):
    assert [p.number for p in gpu_report.PARTS] == [1, 2, 3, 4, 5, 6]
    assert sum(p.limit_s for p in gpu_report.PARTS) <= gpu_report.TOTAL_BUDGET_S < 8 * 60
    assert gpu_report.parse_limits(["4=200", "flash=10"])[4] == 200.0
    with pytest.raises(SystemExit, match="--limit '9=3'"):
        gpu_report.parse_limits(["9=3"])


def test_a_part_that_overruns_is_killed_and_reported(gpu_report, tmp_path):
    (tmp_path / "parts").mkdir()
    ctx = tmp_path / "parts" / "context.json"
    ctx.write_text("{}")
    ok = gpu_report.run_part(gpu_report.PART_BY_KEY["selftest-ok"], 30, tmp_path, ctx)
    t0 = time.perf_counter()
    hung = gpu_report.run_part(gpu_report.PART_BY_KEY["selftest-hang"], 2, tmp_path, ctx)
    assert time.perf_counter() - t0 < 20
    assert ok["status"] == "ok" and ok["rows"] == [{"value": 1}] and ok["targets"][0]["met"] is True
    assert hung["status"] == "timed out" and hung["rows"] == [{"value": 1}]  # what it wrote before the kill
    assert "sleeping past the limit" in (tmp_path / "parts" / "92_selftest-hang.log").read_text()
    gpu_report.write_report([ok, hung], tmp_path, "2026-12-01 00:00", 3.0)
    md = (tmp_path / "report.md").read_text()
    assert "| 92. selftest: a part that overruns | timed out |" in md
    assert "| 91. selftest value | 1 | >= 1 | yes |" in md
    assert (tmp_path / "report.json").exists()


@pytest.mark.slow
def test_register_table_is_compiled_and_rendered(gpu_report, monkeypatch, tmp_path):
    """Part 3's register step, the code the GPU runs, on this CPU: the defaults compiled for sm_90 (no GPU needed,
    ahead of time), their ptxas counts in the summary and in report.md."""
    import torch

    from triton_flash_attention_scratch import triton_flash as tf

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    les = gpu_report.ch4_lesson21()
    rec = gpu_report.Recorder(tmp_path / "03_flash.json")
    gpu_report.register_facts(rec, {}, tf, les)
    regs = rec.data["summary"]["registers"]
    assert [(r["kernel"], r["head_dim"]) for r in regs] == [
        (k, d) for d in gpu_report.FLASH_HEAD_DIMS for k in ("fwd", "dkdv", "dq")
    ]
    for r in regs:
        assert r["arch"] == 90 and r["config"] == tf.GPU_DEFAULT_CONFIGS[r["kernel"]]
        assert 0 < r["registers"] <= 255 and r["spill_stores"] >= 0 and r["spill_loads"] >= 0
        # the benchmark's target row: N = 4096, H = model width / D heads
        assert r["sizes"] == {"H": les.MODEL_WIDTH // r["head_dim"], "H_KV": les.MODEL_WIDTH // r["head_dim"],
                              "N_CTX": gpu_report.FLASH_TARGET_N}  # fmt: skip
    md = "\n".join(gpu_report._part_table({"key": "flash", "rows": [], **rec.data}))
    first = regs[0]
    c = first["config"]
    assert (f"| fwd | {first['head_dim']} | {c['BLOCK_M']}x{c['BLOCK_N']} w{c['num_warps']} s{c['num_stages']} | "
            f"{first['registers']} | {first['spill_stores']} |") in md  # fmt: skip
    # no time left: the step says so instead of compiling
    rec2 = gpu_report.Recorder(tmp_path / "03_flash_late.json")
    gpu_report.register_facts(rec2, {"deadline": time.monotonic() + 1}, tf, les)
    assert "registers" not in rec2.data["summary"] and "not compiled" in rec2.data["notes"][0]


def test_tma_comparison_records_rows_until_time_runs_out(gpu_report, monkeypatch, tmp_path):
    """Part 3's TMA step with lesson 21's ``tma_rows`` faked (timing needs a GPU): rows recorded one at a time,
    a failing row reported, the rest skipped with the command that gives them time, the table in report.md."""
    import types

    import torch

    calls = []

    def tma_rows(head_dims, causal, device, log):
        (D,), (c,) = head_dims, causal
        calls.append((D, c))
        row = {"dtype": "bfloat16", "D": D, "N": 4096, "B": 4, "H": 2048 // D, "causal": c}
        if len(calls) == 2:
            return [{**row, "status": "RuntimeError: TMA path error"}]
        return [{**row, "status": "ok", "ptr_fwd_tflops": 400.0, "tma_fwd_tflops": 440.0, "fwd_tma_vs_ptr": 1.1,
                 "ptr_bwd_tflops": 200.0, "tma_bwd_tflops": 180.0, "bwd_tma_vs_ptr": 0.9, "ptr_max_err": 1e-2,
                 "tma_max_err": 1e-2}]  # fmt: skip

    les = types.SimpleNamespace(tma_rows=tma_rows)
    monkeypatch.setattr(gpu_report, "report_device", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert gpu_report.tma_available(les) is None
    assert "has no tma_rows" in gpu_report.tma_available(types.SimpleNamespace())
    rec = gpu_report.Recorder(tmp_path / "03_flash.json")
    gpu_report.tma_comparison(rec, {}, les)  # no deadline: every case
    assert calls == list(gpu_report.TMA_CASES) and len(rec.data["summary"]["tma_rows"]) == 4
    assert rec.data["failures"] == ["TMA row D=64 causal=False: RuntimeError: TMA path error"]
    md = "\n".join(gpu_report._part_table({"key": "flash", "rows": [], **rec.data}))
    assert "| bfloat16 | True | 128 | 4096 | 400 | 440 | 1.10 | 200 | 180 | 0.90 | 1.0e-02 / 1.0e-02 |" in md
    assert "| bfloat16 | False | 64 | 4096 | RuntimeError: TMA path error |" in md
    # a deadline too close for a row: nothing run, a note with the command instead
    calls.clear()
    rec2 = gpu_report.Recorder(tmp_path / "03_flash_late.json")
    gpu_report.tma_comparison(rec2, {"deadline": time.monotonic() + 5}, les)
    assert calls == [] and "0 of 4 rows run" in rec2.data["notes"][0] and "--only flash" in rec2.data["notes"][0]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert "8.0 has no Tensor Memory Accelerator" in gpu_report.tma_available(les)


def test_gqa_comparison_records_rows_until_time_runs_out(gpu_report, monkeypatch, tmp_path):
    """Part 3's GQA step with lesson 21's ``gqa_rows`` faked (timing needs a GPU): one row per shape, a failing
    row reported, no row started too close to the deadline, the table in report.md."""
    import types

    calls = []

    def gqa_rows(heads, device, log):
        ((name, H, H_kv),) = heads
        calls.append((H, H_kv))
        row = {"shape": name, "dtype": "bfloat16", "D": 128, "N": 4096, "B": 1, "H": H, "H_kv": H_kv,
               "causal": True, "split": H // H_kv}  # fmt: skip
        if len(calls) == 2:
            return [{**row, "status": "RuntimeError: dkdv_split error"}]
        return [{**row, "status": "ok", "s1_bwd_tflops": 100.0, "sg_bwd_tflops": 300.0, "bwd_split_vs_1": 3.0,
                 "sdpa_bwd_tflops": 400.0, "bwd_best_vs_sdpa": 0.75, "fwd_vs_sdpa": 0.9, "s1_max_err": 1e-2,
                 "sg_max_err": 1e-2, "sdpa_gqa": "enable_gqa"}]  # fmt: skip

    grid = {"heads": (("one K/V head", 8, 1), ("Llama-3-8B", 32, 8))}
    les = types.SimpleNamespace(gqa_rows=gqa_rows, GQA_GRID=grid)
    monkeypatch.setattr(gpu_report, "report_device", lambda: "cuda")
    rec = gpu_report.Recorder(tmp_path / "03_flash.json")
    gpu_report.gqa_comparison(rec, {}, les)  # no deadline: every shape
    assert calls == [(8, 1), (32, 8)] and len(rec.data["summary"]["gqa_rows"]) == 2
    assert rec.data["failures"] == ["GQA row Llama-3-8B H=32 H_kv=8: RuntimeError: dkdv_split error"]
    md = "\n".join(gpu_report._part_table({"key": "flash", "rows": [], **rec.data}))
    row = "| one K/V head | 1×8/1 | 4096 | 100 | 300 | 3.00 | 400 | 0.75 | 0.90 | 1.0e-02 / 1.0e-02 | enable_gqa |"
    assert row in md
    assert "| Llama-3-8B | 1×32/8 | 4096 | RuntimeError: dkdv_split error |" in md
    calls.clear()
    rec2 = gpu_report.Recorder(tmp_path / "03_flash_late.json")
    gpu_report.gqa_comparison(rec2, {"deadline": time.monotonic() + 5}, les)
    assert calls == [] and "0 of 2 rows run" in rec2.data["notes"][0] and "--only flash" in rec2.data["notes"][0]
    rec3 = gpu_report.Recorder(tmp_path / "03_flash_old.json")
    gpu_report.gqa_comparison(rec3, {}, types.SimpleNamespace())
    assert "has no gqa_rows" in rec3.data["notes"][0]


@pytest.mark.slow
def test_rehearsal_runs_every_part_on_the_cpu(tmp_path):
    """``bash .ci/gpu --rehearse``: parts 1, 2, 4, 5, 6 run for real on this CPU at tiny sizes, each in its own
    process, and the report has every table (part 3 needs compiled kernels and is skipped). This is what catches a
    bug in the report's own code before a GPU is paid for: the first rehearsal found part 5 reading a key that
    fast_decode.benchmark does not return, and the Triton rung asking the interpreter for bf16."""
    import json
    import os

    env = {**os.environ, "GPU_REPORT_DIR": str(tmp_path)}
    env.pop("LLM_SCRATCH_FORBID_SKIPS", None)  # part 2's gpu tests all skip on a CPU, as they should
    res = subprocess.run(["bash", ".ci/gpu", "--rehearse"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=env)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    status = {p["key"]: p["status"] for p in report["parts"]}
    assert status == {"env": "ok", "tests": "ok", "flash": "skipped", "gpt2": "ok", "decode": "ok", "train": "ok"}
    parts = {p["key"]: p for p in report["parts"]}
    rungs = parts["gpt2"]["rows"]
    assert len(rungs) == 7 and all(r["ms"] > 0 and "error" not in r for r in rungs), rungs
    assert [r["index"] for r in rungs] == [5, 6, 0, 1, 2, 3, 4]  # the whole recipe first, then the Triton rung
    assert "triton" in rungs[1]["setup"]["attn_impl"] and rungs[0]["setup"]["pad_vocab_to"] == 64
    assert parts["gpt2"]["targets"][0]["name"] == f"MFU of '{rungs[0]['rung']}'"
    methods = {r["method"] for r in parts["decode"]["rows"]}
    assert {"dynamic cache", "static cache", "HF generate"} <= methods
    assert all(r["same_tokens_as_ours"] == 1.0 for r in parts["decode"]["rows"])  # same weights, greedy
    train = parts["train"]["rows"]
    assert [r["rc"] for r in train] == [0, 0, 0] and train[0]["checkpoint"] and train[1]["resumed"]
    assert train[1]["steps_logged"][-1] == 19 and parts["train"]["targets"][0]["met"]  # the loss fell
    md = (tmp_path / "report.md").read_text()
    assert "**Rehearsal on the CPU**" in md
    for heading in ("| rung | ms/step", "| method | tok/s", "| run | exit |", "| part | status |"):
        assert heading in md, heading
    ladder = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if line.startswith(("| fp32", "| +"))]
    assert ladder[0].startswith("fp32 baseline") and ladder[-1].startswith("+ Triton"), ladder  # ladder order


def test_pytest_result_lines_with_and_without_xdist(gpu_report):
    """Part 2 counts outcomes from ``pytest -v`` lines, in one process or under pytest-xdist (``-n``), and not the
    short summary at the end, which repeats the failures."""
    parse = gpu_report.parse_result_line
    assert parse("tests/a/test_x.py::test_y[1-2] PASSED [ 10%]") == ("tests/a/test_x.py::test_y[1-2]", "PASSED")
    assert parse("[gw3] FAILED tests/a/test_x.py::test_z ") == ("tests/a/test_x.py::test_z", "FAILED")
    assert parse("[gw0] [ 50%] SKIPPED tests/a/test_x.py::test_w") is None  # not a format pytest -v prints
    assert parse("FAILED tests/a/test_x.py::test_z - AssertionError: boom") is None
    assert parse("tests/a/test_x.py::test_z") is None


def test_flash_precompile_jobs_cover_the_autotuning_space(gpu_report):
    """One launch per i-th config of each kernel's pruned small space, per dtype, D and causality of the grid,
    plus the TMA rows' defaults; every config passes the module's own check; the first is GPU_DEFAULT_CONFIGS."""
    tf = gpu_report.ch4_kernels()
    les = gpu_report.ch4_lesson21()
    jobs = gpu_report.flash_precompile_jobs(tf, les, with_tma=True)
    gqa = [j for j in jobs if "H_kv" in j]
    grid = [j for j in jobs if not j["tma"] and "H_kv" not in j]
    combos = {(j["dtype"], j["D"], j["causal"]) for j in grid}
    assert combos == {(dt, d, c) for dt in gpu_report.FLASH_DTYPES for d in gpu_report.FLASH_HEAD_DIMS
                      for c in (False, True)}  # fmt: skip
    for dt, d, c in combos:
        mine = [j["configs"] for j in grid if (j["dtype"], j["D"], j["causal"]) == (dt, d, c)]
        assert mine[0] == tf.GPU_DEFAULT_CONFIGS
        for kernel in tf.KERNELS:  # every kept config of the space is compiled by some launch
            smem = tf.smem_limit_bytes()
            space = [gpu_report._config_dict(x) for x in tf.config_space(kernel)
                     if tf.config_is_valid(kernel, x, gpu_report.FLASH_TARGET_N, d, 2, smem)]  # fmt: skip
            assert {str(m[kernel]) for m in mine} == {str(x) for x in space}, (kernel, d)
            for m in mine:
                tf.check_config(kernel, m[kernel], d, getattr(__import__("torch"), dt), smem_limit=1 << 30)
    assert all(j["H"] == les.MODEL_WIDTH // j["D"] for j in jobs if j not in gqa)
    assert all(j["N"] % 128 == 0 for j in jobs)
    assert [(j["D"], j["causal"]) for j in jobs if j["tma"]] == list(gpu_report.TMA_CASES)
    # the GQA rows: their K/V heads, both splits, the defaults
    want = [(h, kv, s) for _, h, kv in les.GQA_GRID["heads"] for s in (1, h // kv)]
    assert [(j["H"], j["H_kv"], j["split"]) for j in gqa] == want == [(8, 1, 1), (8, 1, 8), (32, 8, 1), (32, 8, 4)]
    assert all(j["configs"] == tf.GPU_DEFAULT_CONFIGS and not j["tma"] for j in gqa)


@pytest.mark.slow
def test_precompile_runs_jobs_in_parallel_processes(gpu_report, tmp_path, monkeypatch):
    """The workers of part 3's precompile step, here under the interpreter with tiny shapes: every job reported,
    a bad config reported as failed without stopping the others."""
    small = {"fwd": {"BLOCK_M": 32, "BLOCK_N": 16}, "dkdv": {"BLOCK_M": 16, "BLOCK_N": 32},
             "dq": {"BLOCK_M": 32, "BLOCK_N": 16}}  # fmt: skip
    job = dict(dtype="float16", D=16, H=2, N=32, configs=small, tma=False)
    bad = dict(job, configs={**small, "fwd": {"BLOCK_M": 48, "BLOCK_N": 16}})
    jobs = [dict(job, causal=False), dict(job, causal=True), dict(job, causal=True, tma=True), dict(bad, causal=False)]
    (tmp_path / "parts").mkdir()
    monkeypatch.setenv("GPU_REPORT_DEVICE", "cpu")  # the workers inherit it
    rec = gpu_report.Recorder(tmp_path / "03_flash.json")
    assert gpu_report.precompile_flash(rec, {"report_dir": str(tmp_path)}, jobs, workers=2) is True
    summary = rec.data["summary"]["precompile"]
    assert summary["jobs"] == summary["done"] == 4 and summary["failed"] == 1 and summary["workers"] == 2
    assert any("BLOCK_M=48" in n for n in rec.data["notes"]), rec.data["notes"]


def test_flash_rows_from_the_lesson_render_in_the_report(gpu_report, monkeypatch, tmp_path):
    """Part 3 reads the rows lesson 21's measuring code writes: one real row (kernels under the interpreter, SDPA,
    a stand-in for the CUDA timer) through the part's row handling, targets and table."""
    import torch

    les = gpu_report.ch4_lesson21()

    def stand_in_timer(fn, grad_to_none=None, warmup=25, rep=100):
        fn()
        return 1.0, 2.0, 3.0  # 20 %, 50 %, 80 % quantiles, ms

    monkeypatch.setattr(les, "_quantiles_ms", stand_in_timer)
    row = {"dtype": "float32", "D": 16, "N": gpu_report.FLASH_TARGET_N, "B": 1, "H": 1, "causal": True}
    small = dict(row, N=40)  # measured at N = 40 (the interpreter is slow), reported as the target length
    les._measure_pair(small, torch.float32, None, torch.device("cpu"), 1, 1)
    row = {**small, "N": gpu_report.FLASH_TARGET_N, "status": "ok"}

    def rows_fn(**kw):
        return [row, {**row, "D": 64, "status": "time limit"}]

    rec = gpu_report.Recorder(tmp_path / "03_flash.json")
    gpu_report._flash_with_benchmark_rows(rec, {}, rows_fn, peak=100.0, dev="cpu", reserve_s=0)
    impls = [r["impl"] for r in rec.data["rows"]]
    assert impls == ["triton", "sdpa"] and rec.data["rows"][0]["fwd_ms_q20"] == 1.0
    assert rec.data["summary"]["ratios"] == [{"N": 4096, "D": 16, "dtype": "float32", "causal": True, "fwd": 1.0,
                                              "bwd": 1.0}]  # fmt: skip
    assert [t["met"] for t in rec.data["targets"]] == [True, True]  # ratio 1.0 >= 0.9 and >= 0.7
    assert rec.data["failures"] == ["1 of 2 benchmark rows not run: the part's time ran out"]
    md = "\n".join(gpu_report._part_table({"key": "flash", "rows": rec.data["rows"], **rec.data}))
    assert "| triton | float32 | True | 16 | 4096 |" in md and "| float32 | True | 16 | 4096 | 1.00 | 1.00 |" in md


def _precompile_coverage(*args: str) -> tuple[int, dict]:
    """``.ci/precompile_coverage.py --json`` in a process of its own (it installs a stand-in CUDA driver)."""
    import json
    import os

    drop = ("TRITON_INTERPRET", "LLM_SCRATCH_AUTOTUNE", "LLM_SCRATCH_FULL_AUTOTUNE")  # the default autotuning
    env = {k: v for k, v in os.environ.items() if k not in drop}
    res = subprocess.run([sys.executable, ".ci/precompile_coverage.py", "--json", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert res.stdout.strip(), res.stderr[-3000:]
    return res.returncode, json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_precompile_asks_for_every_kernel_the_grid_asks_for(gpu_report):
    """Part 3's precompile launches (B = 1, N = 256, explicit configs) must leave in Triton's on-disk cache every
    kernel its benchmark grid (B·N = 16k, N up to 16k, autotuned) and TMA rows then ask for, or the grid compiles
    them again one at a time. Both run on the CPU against a stand-in sm_90 driver; Triton's own cache hook reports
    what each would compile (signature, constexprs, divisibility attributes, options)."""
    rc, res = _precompile_coverage("--arch", "90")
    assert not res["jobs_failed"] and not res["grid_row_errors"], res
    assert res["missing"] == 0 and rc == 0, res["missing_examples"]
    n_grid = len(gpu_report.FLASH_SEQ_LENS) * len(gpu_report.FLASH_HEAD_DIMS) * len(gpu_report.FLASH_DTYPES) * 2
    assert res["grid_rows"] == n_grid + len(gpu_report.TMA_CASES) + len(gpu_report.ch4_lesson21().GQA_GRID["heads"])
    kernels = res["per_kernel"]
    assert set(kernels) == {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq", "_attn_bwd_preprocess"}
    combos = len(gpu_report.FLASH_HEAD_DIMS) * len(gpu_report.FLASH_DTYPES)
    # specialised on dtype and head dim, and on H only where it is not a multiple of 16: the GQA row with H = 8
    assert kernels["_attn_bwd_preprocess"]["grid"] == combos + 1
    for name in ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"):  # >= 2 tuned configs per (dtype, D, causal), + TMA
        assert kernels[name]["grid"] >= 2 * 2 * combos + len(gpu_report.TMA_CASES), kernels
    # the register step compiles, ahead of time, kernels the grid runs (its N = 4096 rows), not look-alikes: with
    # general sizes (no divisibility facts on H, N) none of them would be
    assert res["register_jobs"] == 3 * len(gpu_report.FLASH_HEAD_DIMS) and res["register_missing"] == 0, res
    assert res["register_general_missing"] == res["register_jobs"], res
    # aot_source, written by hand, specialises as Triton specialises real launches (1 as a constant, multiples of
    # 16, general values, a row stride that is not a multiple of 16)
    assert res["launch_cases"] >= 3 and res["launch_mismatches"] == [], res["launch_mismatches"]


@pytest.mark.slow
def test_precompile_coverage_finds_a_length_that_specialises_differently(gpu_report):
    """The check can fail: precompiled at N = 264 (not a multiple of 16, so N_CTX loses its divisibility
    attribute), the grid's kernels are not the precompiled ones."""
    rc, res = _precompile_coverage("--arch", "80", "--precompile-n", "264", "--seq-lens", "1024")
    assert rc == 1 and res["missing"] > 0 and res["grid_rows"] == 8 + len(gpu_report.ch4_lesson21().GQA_GRID["heads"])
    assert any("differs in EVEN_M, N_CTX attributes" in m for m in res["missing_examples"]), res["missing_examples"]


@pytest.mark.slow
def test_flash_part_runs_end_to_end_with_stand_ins(gpu_report, monkeypatch, tmp_path):
    """Part 3's whole ``run_flash_bench`` on the CPU: the precompile workers (tiny jobs, interpreter), the grid
    (rows from lesson 21's real measuring code with a stand-in timer), the TMA step and the register step (compiled
    ahead of time for a faked sm_90); then the report renders. What stays for a GPU: the kernels' speed."""
    import torch

    les = gpu_report.ch4_lesson21()

    def stand_in_timer(fn, grad_to_none=None, warmup=25, rep=100):
        fn()
        return 1.0, 2.0, 3.0

    monkeypatch.setattr(les, "_quantiles_ms", stand_in_timer)
    monkeypatch.setenv("GPU_REPORT_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    seen = {}

    def benchmark_rows(seq_lens, head_dims, dtypes, causal, time_limit_s, device, log, **kw):
        seen["grid"] = (seq_lens, head_dims, dtypes, causal, time_limit_s)
        row = {"dtype": "float32", "D": 16, "N": 40, "B": 1, "H": 1, "causal": True}
        les._measure_pair(row, torch.float32, None, torch.device("cpu"), 1, 1)
        return [{**row, "N": gpu_report.FLASH_TARGET_N, "status": "ok"}]

    def tma_rows(head_dims, causal, device, log, **kw):
        row = {"dtype": "float16", "D": 16, "N": 40, "B": 1, "H": 1, "causal": causal[0]}
        les._measure_tma_pair(row, torch.float16, torch.device("cpu"), 1, 1)
        return [{**row, "status": "ok"}]

    def gqa_rows(heads, device, log, **kw):
        ((name, H, H_kv),) = heads
        row = {"shape": name, "dtype": "float32", "D": 16, "N": 40, "B": 1, "H": 4, "H_kv": 1, "causal": True,
               "split": 4}  # fmt: skip
        les._measure_gqa(row, torch.float32, torch.device("cpu"), 1, 1)
        return [{**row, "status": "ok"}]

    monkeypatch.setattr(les, "benchmark_rows", benchmark_rows)
    monkeypatch.setattr(les, "tma_rows", tma_rows)
    monkeypatch.setattr(les, "gqa_rows", gqa_rows)
    tiny = {"fwd": {"BLOCK_M": 32, "BLOCK_N": 16}, "dkdv": {"BLOCK_M": 16, "BLOCK_N": 32},
            "dq": {"BLOCK_M": 32, "BLOCK_N": 16}}  # fmt: skip
    jobs = [dict(dtype="float16", D=16, H=1, N=32, causal=c, configs=tiny, tma=False) for c in (False, True)]
    monkeypatch.setattr(gpu_report, "flash_precompile_jobs", lambda tf, les, with_tma: jobs)
    (tmp_path / "parts").mkdir()
    ctx = {"report_dir": str(tmp_path), "peaks": {"bf16_tflops": 100.0}, "deadline": time.monotonic() + 300}
    rec = gpu_report.Recorder(tmp_path / "03_flash.json")
    gpu_report.run_flash_bench(rec, ctx)
    data = rec.data
    assert not data.get("failures"), data.get("failures")
    assert data["summary"]["precompile"]["done"] == 2 and data["summary"]["precompile"]["failed"] == 0
    assert seen["grid"][:4] == (gpu_report.FLASH_SEQ_LENS, gpu_report.FLASH_HEAD_DIMS, gpu_report.FLASH_DTYPES,
                                (False, True))  # fmt: skip
    # the grid stops starting rows in time for the TMA and GQA rows and the row margin (precompiled: the short one)
    reserve = gpu_report.TMA_RESERVE_S + gpu_report.GQA_RESERVE_S + gpu_report.FLASH_MARGIN_PRECOMPILED_S
    assert 300 - reserve - 30 < seen["grid"][4] < 300 - reserve
    assert len(data["summary"]["tma_rows"]) == len(gpu_report.TMA_CASES)
    assert [r["status"] for r in data["summary"]["gqa_rows"]] == ["ok"] * len(les.GQA_GRID["heads"])
    assert len(data["summary"]["registers"]) == 3 * len(gpu_report.FLASH_HEAD_DIMS)
    assert [t["met"] for t in data["targets"]] == [True, True]
    md = gpu_report.markdown_report([{"number": 3, "key": "flash", "title": "flash", "status": "ok", **data}],
                                    "2026-12-02 00:00", 1.0)  # fmt: skip
    for text in (
        "TMA vs pointer loads",
        "| fwd ours/SDPA | bwd ours/SDPA |",
        "registers/thread",
        "precompile: 2 of 2",
        "GQA backward",
        "| 1×4/1 | 40 |",
    ):
        assert text in md, text
