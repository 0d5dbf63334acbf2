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


# The deterministic numbers the chapter README promises in its "what you should see" column, as
# (how the README row writes it, how the lesson prints it), so the README cannot drift from the code.
README_CLAIMS = {
    1: [("0.235004", "a.grad = 0.235004"), ("0.470007", "a2.grad = 0.470007")],
    2: [(v, f"autograd {v if v[0] == '-' else '+' + v}") for v in ("4.436563", "-0.582294", "1.775288")],
    3: [("3 tensors packed and 3 unpacked", "3 tensors packed in forward, 3 unpacked in backward")],
    4: [("0.72445 → 0.15308", "loss (by hand) 0.72445"), ("0.72445 → 0.15308", "loss (by hand) 0.15308")]
    + [("0.1657 = 2 × 0.0828", "|grad| = 0.1657 = 2 x 0.0828")],
    5: [("0, 1, 2, 3, 3", "[0, 1, 2, 3, 3]"), ("[0.19661, 0.235, 0.10499]", "[0.19661, 0.235, 0.10499]")],
    7: [("f' = 6.75, f'' = 9, f''' = 6", "f' = 6.7500 (3x² = 6.7500)   f'' = 9.0000 (6x = 9.0000)   f''' = 6.0000")],
    10: [("x.grad = 20", "[20.0, 20.0, 20.0]"), ("`pre`, `forward`, `backward`", "['pre', 'forward', 'backward']")],
    11: [("3.000 ×", "|dW1| / |dW1 full batch| = 3.000"), ("9, 9, 6", "micro-batch sizes [9, 9, 6]")],
}


def readme_row(number: int) -> str:
    rows = [r for r in (ROOT / "pytorch_basis" / "README.md").read_text().splitlines() if r.startswith(f"| {number} |")]
    assert len(rows) == 1, f"README has {len(rows)} rows for step {number}"
    return rows[0]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_main_runs_and_prints_what_the_readme_says(path, load_lesson, capsys):
    number = int(path.name[:2])
    result = load_lesson("pytorch_basis", number).main()
    assert isinstance(result, dict)
    out = capsys.readouterr().out
    printed = headings(out)
    assert len(printed) == section_calls(path) >= 2, printed  # it got through every section
    row = readme_row(number)
    assert f"`python pytorch_basis/{path.name}`" in row and f"[`{path.name}`]({path.name})" in row
    for in_readme, in_output in README_CLAIMS.get(number, []):
        assert in_readme in row, f"README step {number} no longer says {in_readme!r}"
        assert in_output in out, f"lesson {path.name} no longer prints {in_output!r} (the README says {in_readme!r})"


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
