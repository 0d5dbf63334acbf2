"""Lessons 14-22 run end to end with small settings; each test recomputes the lesson's reference itself.

The lessons print their own comparisons; a test that only re-read the lesson's error numbers would pass when the
lesson's comparison was broken. So the lessons return the tensors they used, and the references here are rebuilt
independently (float64 naive attention / torch ops, the tolerance policy of ``tests/numerics.py``).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.numerics import assert_close_scaled, assert_close_to_fp64
from triton_flash_attention_scratch.attention_torch import naive_attention

CH = "triton_flash_attention_scratch"
CUDA = torch.cuda.is_available()


def _check(name, got, ref64, ref32=None, ulps=8):
    """fp32: against float64 with the fp32 run's own error; fp16/bf16: ``ulps`` of their dtype x max|ref|."""
    got, ref64 = got.detach().cpu(), ref64.detach().cpu()
    if got.dtype == torch.float32:
        assert_close_to_fp64(got, ref64, None if ref32 is None else ref32.detach().cpu(), what=name)
    else:
        assert_close_scaled(got.double(), ref64, ulps=ulps, dtype=got.dtype, what=name)


def _naive(q, k, v, causal, dtype, do=None):
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    o = naive_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), causal=causal)
    if do is None:
        return [o.detach()]
    return [o.detach(), *torch.autograd.grad(o, (q, k, v), do.to(dtype))]


def test_lesson14_intro_examples(load_lesson, capsys):
    out = load_lesson(CH, 14).main(n=300, rows=5, cols=40, m=20, k=33, n_cols=18, bench=not CUDA)
    t = out["tensors"]
    assert torch.equal(t["c"], t["x"] + t["y"])  # one rounding each side: exact
    _check("softmax", t["p"], torch.softmax(t["a"].double(), -1), torch.softmax(t["a"], -1))
    _check("matmul", t["c2"], t["a2"].double() @ t["b2"].double(), t["a2"] @ t["b2"])
    if not CUDA:
        assert "timing needs a CUDA GPU" in capsys.readouterr().out


def test_lesson15_forward_and_causal_schedule(load_lesson):
    mod = load_lesson(CH, 15)
    out = mod.main(batch=1, heads=1, seq_len=40, head_dim=16)
    assert {(r["dtype"], r["causal"]) for r in out["results"]} >= {("float32", False), ("float16", True)}
    for r in out["results"]:
        t = r["tensors"]
        r64, r32 = _naive(t["q"], t["k"], t["v"], r["causal"], torch.float64), None
        if t["o"].dtype == torch.float32:
            r32 = _naive(t["q"], t["k"], t["v"], r["causal"], torch.float32)[0]
        _check(f"O {r['dtype']} causal={r['causal']}", t["o"], r64[0], r32)
        assert r["out_dtype"] == t["q"].dtype
    # exp(x) = exp2(x log2 e): the constant itself
    assert mod.LOG2E == pytest.approx(1 / math.log(2), rel=1e-15)
    # independent count: key blocks [0, end of the query block) split at the block's first row
    for row in mod.causal_block_schedule(100, 32, 16):
        start, end = row["query_rows"]
        assert row["unmasked"] == start // 16 and row["unmasked"] + row["masked"] == math.ceil(end / 16)
    with pytest.raises(ValueError, match="BLOCK_M % BLOCK_N"):
        mod.causal_block_schedule(100, 16, 32)


def test_lesson16_logsumexp(load_lesson):
    out = load_lesson(CH, 16).main(seq_len=20, head_dim=16)
    t = out["tensors"]
    q, k = t["q"].double(), t["k"].double()
    N, D = q.shape[-2], q.shape[-1]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))  # the lesson's default: causal
    s32 = ((t["q"] @ t["k"].transpose(-2, -1)) / math.sqrt(D)).masked_fill(
        torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf")
    )
    _check("L", t["lse"], torch.logsumexp(s, -1), torch.logsumexp(s32, -1))
    _check("exp(S - L)", t["p_rebuilt"], torch.softmax(s, -1), torch.softmax(s32, -1))


def test_lesson17_backward(load_lesson):
    mod = load_lesson(CH, 17)
    out = mod.main(seq_len=24, head_dim=16)
    assert out["d_identity"] < 1e-12  # float64 identity rowsum(P∘dP) = rowsum(dO∘O), computed in the lesson
    for r in out["results"]:
        t = r["tensors"]
        r64 = _naive(t["q"], t["k"], t["v"], r["causal"], torch.float64, t["do"])
        r32 = _naive(t["q"], t["k"], t["v"], r["causal"], torch.float32, t["do"])
        for name, got, a, b in zip(("dQ", "dK", "dV"), t["grads"], r64[1:], r32[1:]):
            _check(f"{name} {r['dtype']} causal={r['causal']}", got, a, b if got.dtype == torch.float32 else None)
    # causal tiles visited, counted by brute force over the tile grid (a tile is visited if any q >= any k)
    visited, total = mod.causal_tiles_visited(4096, 64, 128)
    brute = sum(1 for i in range(4096 // 64) for j in range(4096 // 128) if (i + 1) * 64 - 1 >= j * 128)
    assert (visited, total) == (brute, 64 * 32)


def test_lesson18_validation_and_gqa(load_lesson):
    mod = load_lesson(CH, 18)
    out = mod.main(batch=1, heads=4, kv_heads=2, seq_len=20, head_dim=16)
    assert set(out["validation"]) == set(mod.bad_inputs(torch.device("cpu")))  # every bad input was refused
    for r in out["gqa"]:
        t = r["tensors"]
        r64 = _naive(t["q"], t["k"], t["v"], r["causal"], torch.float64, t["do"])
        r32 = _naive(t["q"], t["k"], t["v"], r["causal"], torch.float32, t["do"])
        for name, got, a, b in zip(("O", "dQ", "dK", "dV"), (t["o"], *t["grads"]), r64, r32):
            _check(f"{name} causal={r['causal']}", got, a, b)
    assert [r["split"] for r in out["split"]] == [1, 2]  # every divisor of the group of 2
    for r in out["split"]:
        t = r["tensors"]
        r64 = _naive(t["q"], t["k"], t["v"], True, torch.float64, t["do"])
        r32 = _naive(t["q"], t["k"], t["v"], True, torch.float32, t["do"])
        for name, got, a, b in zip(("dQ", "dK", "dV"), t["grads"], r64[1:], r32[1:]):
            _check(f"{name} dkdv_split={r['split']}", got, a, b)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,H_kv,N,split", [(1, 8, 1, 1000, 1), (1, 8, 1, 1000, 8), (2, 6, 2, 256, 3)])
def test_lesson18_dkdv_work_counts_the_tiles(load_lesson, B, H, H_kv, N, split, causal):
    """dkdv_work against a count of every (program, query head, query block, key block) the kernel visits, with
    the visibility rule written out: a query block is visited if it is not wholly before the key block."""
    mod = load_lesson(CH, 18)
    bm, bn, sms = 32, 64, 132
    got = mod.dkdv_work(B, H, H_kv, N, bm, bn, split, causal, sms)
    work = {}
    for b in range(B):
        for part in range(H_kv * split):
            for j in range(-(-N // bn)):
                heads = range(H // H_kv // split)
                visits = sum(1 for _ in heads for i in range(-(-N // bm)) if not causal or (i + 1) * bm > j * bn)
                work[(b, part, j)] = visits
    assert got["programs"] == len(work)
    assert got["total"] == sum(work.values()) and got["longest"] == max(work.values())
    assert got["bound"] == max(sum(work.values()) / sms, max(work.values()))


def test_lesson19_autotuning_counts(load_lesson):
    """The pruned counts equal a count of the space done here with the pruning rules written out."""
    mod = load_lesson(CH, 19)
    out = mod.main()
    from triton_flash_attention_scratch import triton_flash as tf

    for kernel, counts in out["counts"].items():
        for (n, d), kept in counts.items():
            manual = 0
            for c in tf.config_space(kernel, "full"):
                m, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
                resident, streamed = (bn, m) if kernel == "dkdv" else (m, bn)
                dp = max(16, 1 << (d - 1).bit_length())
                ok = resident % streamed == 0 and c.num_stages * 2 * streamed * dp * 2 <= tf.SMEM_LIMIT_BYTES_DEFAULT
                ok = ok and not (dp >= 256 and (resident > 64 or c.num_stages > 2))
                ok = ok and not (resident >= 128 and c.num_warps < 8)
                ok = ok and max(m, bn) <= max(max(16, 1 << (n - 1).bit_length()), 64)
                manual += ok
            assert kept == manual, (kernel, n, d)
    assert out["counts"]["fwd"][(128, 32)] < len(tf.config_space("fwd", "full"))  # pruning removes something


@pytest.mark.slow
def test_lesson20_pipelining_in_the_compiled_code(load_lesson):
    """Compiled for sm_80: no async copies without pipelining; from 2 stages on, each extra stage adds exactly one
    more K tile + V tile of shared memory (2 x BLOCK_N x D x 2 bytes, by hand) and more cp.async instructions,
    and the kernel holds at least the Q tile (BLOCK_M x D x 2 bytes) and one K+V buffer besides."""
    out = load_lesson(CH, 20).main(head_dim=64, block_m=64, block_n=64, num_warps=4, stages=(1, 2, 3), archs=(80,))
    assert out["tma"] == {}  # the TMA table is compiled for sm_90 only
    c = {s: out["compiled"][(80, s)] for s in (1, 2, 3)}
    one_stage, q_tile = 2 * 64 * 64 * 2, 64 * 64 * 2
    assert out["smem"] == {1: one_stage, 2: 2 * one_stage, 3: 3 * one_stage}
    assert c[1]["cp_async"] == 0 and 0 < c[2]["cp_async"] < c[3]["cp_async"]
    assert c[3]["shared_bytes"] - c[2]["shared_bytes"] == one_stage
    assert c[2]["shared_bytes"] >= q_tile + one_stage
    assert all(f["tma"] == 0 and f["mma_sync"] > 0 and f["wgmma"] == 0 for f in c.values())
    assert all(0 < f["registers"] <= 255 and f["spill_stores"] >= 0 for f in c.values())  # ptxas' report, parsed


@pytest.mark.slow
def test_lesson20_tma_table(load_lesson, capsys):
    """sm_90, D = 32: with tma=True every kernel's streamed tiles come by TMA copies awaited on mbarriers, the
    forward and dQ kernels have no cp.async left (the dK/dV kernel keeps it for its L and D vectors, so fewer), each
    program's two descriptors take 2 x 128 bytes of global scratch; the pointer builds have none of that."""
    out = load_lesson(CH, 20).main(head_dim=32, stages=(2,), archs=(90,))
    t = out["tma"]
    assert set(t) == {(k, tma) for k in ("fwd", "dkdv", "dq") for tma in (False, True)}
    for kernel in ("fwd", "dkdv", "dq"):
        ptr, tma = t[(kernel, False)], t[(kernel, True)]
        assert ptr["tma"] == ptr["mbarrier_waits"] == ptr["global_scratch_bytes"] == 0 and ptr["cp_async"] > 0
        assert tma["tma"] > 0 and tma["mbarrier_waits"] > 0 and tma["global_scratch_bytes"] == 2 * 128
        assert tma["cp_async"] < ptr["cp_async"] and (kernel == "dkdv" or tma["cp_async"] == 0)
    assert "pointer loads vs TMA (tensor descriptors), sm_90, D=32" in capsys.readouterr().out


def test_lesson21_correctness_and_cpu_message(load_lesson, capsys):
    mod = load_lesson(CH, 21)
    out = mod.main(bench=not CUDA)
    for r in out["checks"]:
        t = r["tensors"]
        causal = r["causal"]
        q, k, v, do = t["q"], t["k"], t["v"], t["do"]
        r64 = [F.scaled_dot_product_attention(*(x.detach().double() for x in (q, k, v)), is_causal=causal)]
        q6, k6, v6 = (x.detach().double().requires_grad_() for x in (q, k, v))
        ref = F.scaled_dot_product_attention(q6, k6, v6, is_causal=causal)
        r64 = [ref.detach(), *torch.autograd.grad(ref, (q6, k6, v6), do.double())]
        for name, got, want in zip(("O", "dQ", "dK", "dV"), (t["o"], *t["grads"]), r64):
            _check(f"{name} {r['dtype']} causal={causal}", got, want, ulps=16 if got.dtype != torch.float32 else 8)
        assert r["ok"]
    if not CUDA:
        assert "timing needs a CUDA GPU" in capsys.readouterr().out
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            mod.benchmark_rows()
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            mod.tma_rows()
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            mod.gqa_rows()
    assert mod.peak_tflops("NVIDIA H100 PCIe") == 756.0 and mod.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert mod.peak_tflops("NVIDIA H200") == 989.4 and mod.peak_tflops("Some Other GPU") is None


def test_lesson21_comparison_table_reports_ratios_and_failures(load_lesson):
    mod = load_lesson(CH, 21)
    ok = {"dtype": "float16", "D": 64, "N": 4096, "B": 4, "H": 32, "causal": True, "status": "ok",
          "ours_fwd_tflops": 300.0, "sdpa_fwd_tflops": 400.0, "ours_bwd_tflops": 100.0, "sdpa_bwd_tflops": 200.0,
          "fwd_vs_sdpa": 0.75, "bwd_vs_sdpa": 0.5, "ours_fwd_ms_q20": 1.0, "ours_fwd_ms_q80": 1.1}  # fmt: skip
    late = {"dtype": "bfloat16", "D": 128, "N": 16384, "B": 1, "H": 16, "causal": False, "status": "time limit"}
    table = mod.comparison_table([ok, late], peak=1000.0)
    lines = table.strip().splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 300.0 | 400.0 | 0.75 | 100.0 | 200.0 | 0.50 | 30% |" in lines[2]
    assert "time limit" in lines[3]
    assert mod.TRIMMED_GRID == {"seq_lens": (1024, 4096, 16384), "head_dims": (64, 128),
                                "dtypes": ("float16", "bfloat16"), "causal": (False, True)}  # fmt: skip


def test_lesson21_tma_table_reports_ratios_and_failures(load_lesson):
    mod = load_lesson(CH, 21)
    ok = {"dtype": "bfloat16", "D": 128, "N": 4096, "B": 4, "H": 16, "causal": True, "status": "ok",
          "ptr_fwd_tflops": 300.0, "tma_fwd_tflops": 330.0, "ptr_bwd_tflops": 200.0, "tma_bwd_tflops": 190.0,
          "fwd_tma_vs_ptr": 1.1, "bwd_tma_vs_ptr": 0.95}  # fmt: skip
    bad = {"dtype": "bfloat16", "D": 64, "N": 4096, "B": 4, "H": 32, "causal": False, "status": "RuntimeError: x"}
    lines = mod.tma_table([ok, bad]).strip().splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 300.0 | 330.0 | 1.10 | 200.0 | 190.0 | 0.95 |" in lines[2] and "RuntimeError: x" in lines[3]
    assert "x1.10" in mod.format_tma_row(ok) and "RuntimeError: x" in mod.format_tma_row(bad)


def test_lesson21_gqa_table_reports_ratios_and_failures(load_lesson):
    mod = load_lesson(CH, 21)
    ok = {"shape": "Llama-3-70B over 8 GPUs", "B": 1, "H": 8, "H_kv": 1, "N": 4096, "split": 8, "status": "ok",
          "s1_bwd_tflops": 100.0, "sg_bwd_tflops": 250.0, "sdpa_bwd_tflops": 400.0, "bwd_split_vs_1": 2.5,
          "bwd_best_vs_sdpa": 0.625, "sdpa_gqa": "enable_gqa"}  # fmt: skip
    bad = {"shape": "Llama-3-8B", "B": 1, "H": 32, "H_kv": 8, "N": 4096, "split": 4, "status": "time limit"}
    lines = mod.gqa_table([ok, bad]).strip().splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 1×8/1 | 4096 | 100.0 | 250.0 (s=8) | 2.50 | 400.0 | 0.62 | enable_gqa |" in lines[2]
    assert "time limit" in lines[3]
    assert "(x2.50)" in mod.format_gqa_row(ok) and "time limit" in mod.format_gqa_row(bad)
    # the rows lesson 18 singles out: one K/V head (split to 8) and Llama-3-8B's 32/8 heads
    assert [(h, kv) for _, h, kv in mod.GQA_GRID["heads"]] == [(8, 1), (32, 8)]


def test_lesson21_gqa_measurement_runs_on_the_cpu(load_lesson, monkeypatch):
    """``_measure_gqa``'s plumbing (the checks against SDPA, the side-by-side timing, the ratios) with a stand-in
    timer that runs each function once: timing needs a GPU, the code around it does not."""
    mod = load_lesson(CH, 21)
    calls = []

    def once(fn, grad_to_none=None, warmup=0, rep=0):
        calls.append(fn())
        return 1.0, 2.0, 3.0

    monkeypatch.setattr(mod, "_quantiles_ms", once)
    row = {"shape": "test", "dtype": "float32", "D": 16, "N": 70, "B": 1, "H": 4, "H_kv": 1, "causal": True,
           "split": 4}  # fmt: skip
    mod._measure_gqa(row, torch.float32, torch.device("cpu"), warmup=0, rep=0)
    assert len(calls) == 6  # forward and backward of split 1, split 4 and SDPA
    assert row["s1_max_err"] < 1e-4 and row["sg_max_err"] < 1e-4, row
    assert row["sdpa_gqa"] in ("enable_gqa", "repeat_interleave")
    flops = 2.5 * 4 * 1 * 4 * 70**2 * 16 * 0.5  # backward: 2.5 x the causal forward, 4 B H N^2 D / 2
    assert row["sg_bwd_tflops"] == pytest.approx(flops / 2.0 * 1e-9) and row["bwd_split_vs_1"] == 1.0
    assert row["sdpa_bwd_ms_q20"] == 1.0 and row["bwd_best_vs_sdpa"] == 1.0


@pytest.mark.gpu
def test_lesson21_gqa_rows_on_gpu(load_lesson):
    # the shape of the first GQA row of `.ci/gpu` part 3 (D = 128, bf16, causal, one K/V head), shorter: the
    # same compiled kernels, so that part finds them in Triton's cache
    rows = load_lesson(CH, 21).gqa_rows(seq_len=1024, heads=(("test", 8, 1),), rep=20)
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    r = rows[0]
    assert r["sg_max_err"] <= 2 * r["s1_max_err"] + 1e-3 and r["sdpa_gqa"] in ("enable_gqa", "repeat_interleave")
    assert r["bwd_split_vs_1"] == pytest.approx(r["sg_bwd_tflops"] / r["s1_bwd_tflops"])


@pytest.mark.gpu
def test_lesson21_tma_rows_on_gpu(load_lesson):
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("TMA needs compute capability 9.0 or newer")
    rows = load_lesson(CH, 21).tma_rows(seq_len=1024, head_dims=(64,), causal=(True,), rep=20)
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    r = rows[0]
    assert r["tma_max_err"] <= 2 * r["ptr_max_err"] + 1e-3
    for mode in ("fwd", "bwd"):
        assert r[f"{mode}_tma_vs_ptr"] == pytest.approx(r[f"tma_{mode}_tflops"] / r[f"ptr_{mode}_tflops"])


@pytest.mark.gpu
def test_lesson21_benchmark_rows_on_gpu(load_lesson):
    rows = load_lesson(CH, 21).benchmark_rows(
        seq_lens=(1024,), head_dims=(64,), dtypes=("float16",), causal=(True,), configs="default", rep=20
    )
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    r = rows[0]
    for mode in ("fwd", "bwd"):
        assert r[f"{mode}_vs_sdpa"] == pytest.approx(r[f"ours_{mode}_tflops"] / r[f"sdpa_{mode}_tflops"])
        assert r[f"ours_{mode}_ms_q20"] <= r[f"ours_{mode}_ms"] <= r[f"ours_{mode}_ms_q80"]


def test_lesson22_gpt2_losses_match_sdpa(load_lesson, capsys):
    out = load_lesson(CH, 22).main(steps=2, batch=1, seq_len=32)
    a, b = out["losses"]["sdpa"], out["losses"]["triton"]
    assert len(a) == len(b) == 2 and a[1] < a[0]  # it trains
    # same model, same batches: the losses agree to fp32 rounding of a loss of size ~ln(vocab)
    for x, y in zip(a, b):
        assert abs(x - y) <= 64 * torch.finfo(torch.float32).eps * max(abs(x), 1.0) * 10
    if not CUDA:
        assert "Triton's CPU interpreter" in capsys.readouterr().out


@pytest.mark.parametrize(
    "lesson,args,code,message",
    [
        # argparse refuses a size below 1 before any tensor exists
        ("15_flash_forward_triton.py", ["--seq-len", "0"], 2, "error: argument --seq-len: expected an integer >= 1"),
        # a value argparse accepts that the kernels' validation refuses, before any launch
        (
            "18_autograd_function_and_gqa.py",
            ["--heads", "8", "--kv-heads", "3"],
            1,
            "error: number of query heads 8 must be a multiple of the number of key/value heads 3",
        ),
    ],
)
def test_lesson_cli_bad_option_is_one_line(lesson, args, code, message):
    """A lesson run from the command line with a bad value: one line naming it and exit 1 or 2, no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LLM_SCRATCH_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, str(root / CH / lesson), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    if code == 1:
        assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_lesson21_measuring_code_fills_every_key(load_lesson, monkeypatch):
    """Lesson 21's per-row measuring code on this CPU, with the real kernels (interpreter) and SDPA, and a stand-in
    for the CUDA timer (``_quantiles_ms`` returns 1, 2, 3 ms): every key the GPU report reads gets filled, and the
    throughput follows from the FLOP formula. What only a GPU can tell is the time."""
    mod = load_lesson(CH, 21)
    calls = []

    def fake_quantiles(fn, grad_to_none=None, warmup=25, rep=100):
        calls.append(fn())
        return 1.0, 2.0, 3.0

    monkeypatch.setattr(mod, "_quantiles_ms", fake_quantiles)
    row = {"dtype": "float32", "D": 16, "N": 40, "B": 1, "H": 2, "causal": True}
    mod._measure_pair(row, torch.float32, None, torch.device("cpu"), 1, 1)
    fwd_flops = 4 * 1 * 2 * 40 * 40 * 16 * 0.5
    for name in ("ours", "sdpa"):
        assert (row[f"{name}_fwd_ms_q20"], row[f"{name}_fwd_ms"], row[f"{name}_bwd_ms_q80"]) == (1.0, 2.0, 3.0)
        assert row[f"{name}_fwd_tflops"] == pytest.approx(fwd_flops / 2.0 * 1e-9)
        assert row[f"{name}_bwd_tflops"] == pytest.approx(2.5 * fwd_flops / 2.0 * 1e-9)
    assert row["fwd_vs_sdpa"] == row["bwd_vs_sdpa"] == 1.0 and len(calls) == 4  # 2 impls x fwd, bwd
    assert "x1.00" in mod.format_row({**row, "status": "ok"})
    tma = {"dtype": "float16", "D": 16, "N": 40, "B": 1, "H": 2, "causal": False}
    mod._measure_tma_pair(tma, torch.float16, torch.device("cpu"), 1, 1)
    assert tma["tma_max_err"] <= 2 * tma["ptr_max_err"] + 1e-3 and tma["ptr_max_err"] < 1e-2
    assert tma["fwd_tma_vs_ptr"] == tma["bwd_tma_vs_ptr"] == 1.0 and tma["tma_fwd_ms"] == 2.0
    assert "| 1.00 |" in mod.tma_table([{**tma, "status": "ok"}])
