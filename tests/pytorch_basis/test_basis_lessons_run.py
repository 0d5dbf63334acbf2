"""Every chapter-1 lesson runs end to end: main() returns a dict and prints every section, the script entry
point works."""

import re
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


def headings(out: str) -> list[str]:
    return re.findall(r"^== (.+) ==$", out, flags=re.M)


def section_calls(path: Path) -> int:
    """How many ``section(...)`` headings the lesson's source prints (none of them sits in a loop)."""
    return len(re.findall(r"^\s+section\(", path.read_text(), flags=re.M))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_main_runs(path, load_lesson, capsys):
    result = load_lesson("pytorch_basis", int(path.name[:2])).main()
    assert isinstance(result, dict)
    printed = headings(capsys.readouterr().out)
    assert len(printed) == section_calls(path) >= 2, printed  # it got through every section


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_script_entry_point(path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(path), "--seed", "1"])
    runpy.run_path(str(path), run_name="__main__")
    assert len(headings(capsys.readouterr().out)) == section_calls(path)


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
