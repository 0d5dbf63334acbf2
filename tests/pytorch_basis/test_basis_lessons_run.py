"""Every chapter-1 lesson runs end to end: main() returns a dict and prints, the script entry point works."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted((ROOT / "pytorch_basis").glob("[0-9][0-9]_*.py"))


def test_lessons_are_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == list(range(1, len(LESSONS) + 1)) and len(numbers) >= 7


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_main_runs(path, load_lesson, capsys):
    result = load_lesson("pytorch_basis", int(path.name[:2])).main()
    assert isinstance(result, dict) and result
    assert "==" in capsys.readouterr().out  # it printed its sections


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_script_entry_point(path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(path), "--seed", "1"])
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip()


def test_lesson_runs_as_a_subprocess_from_the_repo_root():
    out = subprocess.run(
        [sys.executable, "pytorch_basis/01_grad_basics.py", "--x", "0.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "a.grad = 0.250000" in out.stdout  # σ'(0) = 1/4
