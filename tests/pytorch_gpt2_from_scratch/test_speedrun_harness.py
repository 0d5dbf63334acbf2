"""speedrun.py: the time-based schedule, the budget stop, the verdicts, CLI errors, lessons 20+ at tiny budgets."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pytorch_gpt2_from_scratch import speedrun
from pytorch_gpt2_from_scratch.speedrun import RUNG_KEYS, Recipe, RunResult, shrink, summarise, time_lr

pytestmark = pytest.mark.usefixtures("single_thread")


def test_time_lr_closed_form():
    kw = dict(max_lr=1e-2, warmup_frac=0.2, min_lr_ratio=0.1)
    assert time_lr(0.0, **kw) == 0.0
    assert time_lr(0.1, **kw) == pytest.approx(5e-3)  # half-way through the warmup
    assert time_lr(0.2, **kw) == pytest.approx(1e-2)  # top
    assert time_lr(0.6, **kw) == pytest.approx((1e-2 + 1e-3) / 2)  # cosine half-way: the mean of max and min
    r = (0.8 - 0.2) / 0.8
    assert time_lr(0.8, **kw) == pytest.approx(1e-3 + 0.5 * (1 + math.cos(math.pi * r)) * 9e-3)
    assert time_lr(1.0, **kw) == pytest.approx(1e-3) and time_lr(3.0, **kw) == pytest.approx(1e-3)
    wsd = dict(max_lr=0.05, schedule="wsd", warmup_frac=0.0, cooldown_frac=0.4, min_lr_ratio=0.0)
    assert time_lr(0.0, **wsd) == 0.05 and time_lr(0.59, **wsd) == 0.05  # stable
    assert time_lr(0.8, **wsd) == pytest.approx(0.025)  # linear cooldown, half-way
    assert time_lr(0.999, **wsd) == pytest.approx(0.05 * 0.001 / 0.4)
    with pytest.raises(ValueError, match="schedule"):
        time_lr(0.5, max_lr=1.0, schedule="step")


def test_time_budget_stops_within_one_step(shakespeare_tokens):
    r = shrink(speedrun.recipe("baseline"))
    res = speedrun.run(
        r,
        budget=0.6,
        seed=0,
        tokens=shakespeare_tokens,
        eval_points=1,
        val_tokens=256,
        progress=False,
        log=lambda *_: None,
    )
    assert res.steps >= 1
    assert res.clock >= 0.6  # never stops early
    assert res.clock - res.last_step_s < 0.6  # the last step started before the budget was spent
    assert res.tokens == res.steps * r.tokens_per_step
    assert res.curve[0][0] == 0.0 and res.curve[-1][0] == res.clock
    assert abs(res.curve[0][2] - math.log(50257)) < 0.2  # val loss at init ~ ln V


def _result(name, seed, curve):
    return RunResult(
        name, seed, 10.0, curve, steps=10, tokens=curve[-1][1], clock=curve[-1][0], last_step_s=1.0, precision="fp32"
    )


def test_summary_time_to_target_and_verdicts():
    base = [_result("a", 0, [(0, 0, 10.0), (10, 100, 6.0)]), _result("a", 1, [(0, 0, 10.0), (10, 100, 6.2)])]
    # b reaches 6.1 (a's mean) between 2 s (8.0) and 4 s (5.0): 2 + 2 * (8 - 6.1) / 3
    better = [
        _result("b", 0, [(0, 0, 10.0), (2, 20, 8.0), (4, 40, 5.0), (10, 100, 4.0)]),
        _result("b", 1, [(0, 0, 10.0), (2, 20, 8.0), (4, 40, 5.0), (10, 100, 4.2)]),
    ]
    same = [_result("c", 0, [(0, 0, 10.0), (10, 100, 4.05)]), _result("c", 1, [(0, 0, 10.0), (10, 100, 4.3)])]
    rows = summarise(base + better + same)
    assert [r.verdict for r in rows] == ["reference", "kept", "within noise"]
    assert rows[0].mean == pytest.approx(6.1) and rows[0].spread == pytest.approx(0.1)
    assert rows[1].time_to_baseline == pytest.approx(2 + 2 * 1.9 / 3)
    assert rows[0].time_to_baseline is None and rows[0].reached == 1  # seed 1 ends above the mean (6.2 > 6.1)
    assert rows[1].tokens_per_s == pytest.approx(10.0)
    worse = [_result("d", 0, [(0, 0, 10.0), (10, 100, 7.0)])]
    assert summarise(base + worse)[1].verdict == "worse"
    assert summarise(base + [_result("e", 0, [(0, 0, 10.0), (10, 100, 9.0)])])[1].time_to_baseline is None


def test_ladder_is_cumulative():
    rungs = speedrun.ladder()
    assert [r.name for r in rungs] == list(RUNG_KEYS)
    batch, lean = rungs[-2], rungs[-1]
    assert batch.arch == "modern" and batch.optimizer == "muon" and batch.precision == "auto"
    assert batch.modern["rope"] and batch.modern["x0_skip"] and batch.modern["softcap"] == 15.0
    # the last rung takes three changes back and keeps every other one
    assert lean.modern["softcap"] is None and not lean.modern["value_embed"] and not lean.modern["zero_init"]
    assert {k: v for k, v in lean.modern.items() if k not in ("softcap", "value_embed", "zero_init")} == {
        k: v for k, v in batch.modern.items() if k not in ("softcap", "value_embed", "zero_init")
    }
    assert (lean.optimizer, lean.batch_size, lean.grad_accum) == (batch.optimizer, batch.batch_size, batch.grad_accum)
    assert rungs[0] == Recipe(name="baseline")
    with pytest.raises(ValueError, match="unknown rung"):
        speedrun.ladder("nope")


def test_cli_bad_budget_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        speedrun.cli(["--time-budget", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --time-budget must be > 0 seconds, got 0.0"]


def test_recipe_diff_names_what_differs():
    base = Recipe()
    changed = replace(base, name="other", lr=1e-3, modern={"rope": True, "norm": "layernorm"})
    # the name is not a change; a ModernConfig switch set to its default (norm="layernorm") is not one either
    assert speedrun.recipe_diff(base, changed) == {"lr": (2e-3, 1e-3), "modern.rope": (False, True)}
    assert speedrun.recipe_diff(changed, base) == {"lr": (1e-3, 2e-3), "modern.rope": (True, False)}
    assert speedrun.recipe_diff(base, replace(base, name="same")) == {}


@pytest.mark.parametrize("key", RUNG_KEYS[1:])
def test_every_rung_changes_the_recipe(key, capsys):
    before, after = speedrun.ladder(key)[-2:]
    diff = speedrun.recipe_diff(before, after)
    assert diff, f"rung {key!r} changes nothing"
    speedrun.show_change(before, after)
    printed = capsys.readouterr().out
    assert f"{key!r}" in printed and all(name in printed for name in diff)


def test_show_schedule_prints_the_warmup_and_the_floor(capsys):
    speedrun.show_schedule(Recipe(lr=2e-3, warmup_frac=0.1, min_lr_ratio=0.1), 100.0)
    lines = capsys.readouterr().out.splitlines()
    assert any("5.0 s" in line and "lr 1.00e-03" in line for line in lines)  # half-way through a 10 s warmup
    assert any("100.0 s" in line and "lr 2.00e-04" in line for line in lines)  # min_lr = lr / 10 at the budget
    with pytest.raises(ValueError, match="--time-budget must be > 0"):
        speedrun.show_schedule(Recipe(), 0)


def test_rung_lesson_bad_options_are_one_line(load_lesson, capsys):
    lesson = load_lesson("pytorch_gpt2_from_scratch", 22)
    for argv, expected in (
        (["--time-budget", "0"], "error: --time-budget must be > 0 seconds, got 0.0"),
        (["--time-budget", "-5", "--seeds", "0"], "error: --time-budget must be > 0 seconds, got -5.0"),
        (["--val-tokens", "100"], "error: need --eval-points >= 0 and --val-tokens >= 128, got 8, 100"),
    ):
        with pytest.raises(SystemExit) as e:
            speedrun.lesson_cli(lesson.main, lesson.__doc__, argv)
        assert e.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [expected]
    for seeds in ((), [0.5], "0 1"):
        with pytest.raises(ValueError, match="--seeds needs one or more whole numbers"):
            lesson.main(seeds=seeds, tiny=True, progress=False)


def test_rung_lesson_command_line_runs_the_guard():
    """The README's command lines reach lesson_cli: a zero budget from the shell is one line and exit status 2."""
    path = Path(__file__).resolve().parents[2] / "pytorch_gpt2_from_scratch" / "22_rotary_embeddings.py"
    done = subprocess.run(
        [sys.executable, str(path), "--time-budget", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --time-budget must be > 0 seconds, got 0.0"]


@pytest.mark.parametrize("number", range(20, 20 + len(RUNG_KEYS)))
def test_rung_lessons_run_at_a_tiny_budget(load_lesson, number, tmp_path, shakespeare_tokens):
    lesson = load_lesson("pytorch_gpt2_from_scratch", number)
    out = lesson.main(
        tiny=True, time_budget=0.2, seeds=(0,), eval_points=1, val_tokens=256, progress=False, out=str(tmp_path)
    )
    names = [r.name for r in out["rows"]]
    assert names[-1] == RUNG_KEYS[number - 20]
    assert len(names) == (1 if number == 20 else 2)
    assert all(math.isfinite(r.mean) for r in out["rows"])
    assert out["plot"].is_file() and out["plot"].stat().st_size > 0
    assert out["plot"].name == f"{number}_{RUNG_KEYS[number - 20]}.png"
    assert isinstance(out["results"][0].curve[-1][2], float)
    assert torch.get_num_threads() == 1


def test_cpu_clock_ignores_time_the_thread_did_not_run(shakespeare_tokens, monkeypatch):
    """--clock cpu: a step costs this thread's CPU time, so time spent off the CPU (here: sleeping) is not counted."""
    import time

    assert speedrun.clock_fn("wall") is time.perf_counter and speedrun.clock_fn("cpu") is time.thread_time
    r = shrink(speedrun.recipe("baseline"))
    real_step = torch.optim.AdamW.step

    def sleepy_step(self, *a, **kw):  # every optimizer step also waits 0.5 s off the CPU
        time.sleep(0.5)
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", sleepy_step)
    kw = dict(seed=0, tokens=shakespeare_tokens, eval_points=0, val_tokens=256, progress=False, log=lambda *_: None)
    wall = speedrun.run(r, budget=1.0, clock="wall", **kw)
    cpu = speedrun.run(r, budget=1.0, clock="cpu", **kw)
    # a step's compute is the same in both runs; only the wall clock also charges the 0.5 s sleep
    assert wall.clock / wall.steps >= 0.5
    assert wall.clock / wall.steps - cpu.clock / cpu.steps > 0.4
    assert cpu.clock >= 1.0 and cpu.clock - cpu.last_step_s < 1.0  # the budget stop holds on the cpu clock too


def test_cpu_clock_needs_one_thread(capsys):
    with pytest.raises(SystemExit) as e:
        speedrun.cli(["--time-budget", "1", "--clock", "cpu", "--threads", "2", "--tiny", "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --clock cpu needs --threads 1 (got --threads 2)"]
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="needs --threads 1"):
            speedrun.clock_fn("cpu")
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ValueError, match="clock must be one of"):
        speedrun.clock_fn("gpu")


def test_rung_lesson_cli_passes_the_cpu_clock(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "pytorch_gpt2_from_scratch/22_rotary_embeddings.py", "--tiny", "--time-budget", "0.2"]
    cmd += ["--seeds", "0", "--eval-points", "0", "--val-tokens", "256", "--threads", "1", "--clock", "cpu"]
    cmd += ["--no-progress", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cpu clock, 1 threads" in (tmp_path / "22_rope.md").read_text()


def test_merge_seeds_run_as_separate_processes(tmp_path, capsys):
    """--merge: seeds run by two processes give one table whose mean and spread are those of the runs."""
    import json

    files = []
    for seed in (0, 1):
        speedrun.main(["--tiny", "--rungs", "baseline", "muon", "--time-budget", "0.3", "--seeds", str(seed)]
                      + ["--eval-points", "0", "--val-tokens", "256", "--samples", "0", "--no-progress"]
                      + ["--out", str(tmp_path / f"s{seed}")])  # fmt: skip
        files.append(tmp_path / f"s{seed}" / "ladder.json")
    merged = speedrun.main(["--merge", *map(str, files), "--out", str(tmp_path / "all")])
    finals = {}
    for f in files:
        for r in json.loads(f.read_text())["runs"]:
            finals.setdefault(r["name"], []).append(r["curve"][-1][2])
    assert [r.name for r in merged["rows"]] == ["baseline", "muon"]
    for row in merged["rows"]:
        v = finals[row.name]
        assert row.seeds == 2
        assert row.mean == pytest.approx(sum(v) / 2) and row.spread == pytest.approx(abs(v[0] - v[1]) / 2)
    assert (tmp_path / "all" / "ladder.png").is_file()
    assert "merged from 2 files" in (tmp_path / "all" / "ladder.md").read_text()
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        speedrun.cli(["--merge", str(tmp_path / "junk.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a speedrun.py result file" in err[0]


class _TimedModel(torch.nn.Module):
    """Sleeps for a time that depends on the precision and on the batch size: a stand-in for a real CPU's speeds."""

    def __init__(self, seconds):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seconds, self.calls = seconds, []

    def forward(self, x, y):
        import time

        bf16 = torch.is_autocast_enabled("cpu")
        key = ("bf16" if bf16 else "fp32", "slice" if x.numel() <= 64 else "full")
        self.calls.append(key)
        time.sleep(self.seconds[key])
        return None, self.w * 1.0


def test_precision_auto_decides_on_the_full_batch_unless_bf16_is_emulated():
    x = y = torch.zeros(4, 128, dtype=torch.long)
    dev = torch.device("cpu")
    # bf16 no faster on a 1 x 64 slice, 3x faster on the micro-batch (AMX-like): the micro-batch decides
    amx = _TimedModel(
        {("fp32", "slice"): 0.01, ("bf16", "slice"): 0.011, ("fp32", "full"): 0.1, ("bf16", "full"): 0.03}
    )
    dtype, line = speedrun.choose_precision("auto", amx, x, y, dev)
    assert dtype == torch.bfloat16 and "-> bf16" in line
    assert ("bf16", "full") in amx.calls
    # bf16 emulated (AVX2-like): 20x slower on the slice; the check stops there, the micro-batch never runs
    avx2 = _TimedModel({("fp32", "slice"): 0.005, ("bf16", "slice"): 0.1, ("fp32", "full"): 1.0, ("bf16", "full"): 1.0})
    dtype, line = speedrun.choose_precision("auto", avx2, x, y, dev)
    assert dtype is None and "-> fp32" in line
    assert all(size == "slice" for _, size in avx2.calls) and len(avx2.calls) == 4  # warm-up + one timed round
