"""Re-point stale line anchors in the Markdown files: ``[`name`](file.py#L12)`` -> the line that defines ``name``.

``tests/test_repo_hygiene.py`` fails on an anchor whose line no longer holds the name it links; this rewrites each
such anchor to the line of ``def name`` / ``class name`` / ``name =`` / ``name:`` in that file (the first one), and
lists the anchors it cannot place. Run from the repository root: ``python .ci/fix_anchors.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = re.compile(r"\[`([^`\]]+)`\]\(([^)#\s]+\.py)#L(\d+)\)")


def definition_line(lines: list[str], name: str) -> int | None:
    pattern = re.compile(rf"^\s*(def|class)\s+{re.escape(name)}\b|^\s*{re.escape(name)}\s*[:=]")
    return next((i for i, line in enumerate(lines, start=1) if pattern.search(line)), None)


def anchor_problems(md: Path, text: str) -> list[str]:
    """One line per anchor of ``text`` (the Markdown file ``md``) whose file is missing or whose line no longer
    holds the name it links (``tests/test_repo_hygiene.py`` fails on any)."""
    problems = []
    for m in ANCHOR.finditer(text):
        target, line_no, name = _parts(md, m)
        if not target.is_file():
            problems.append(f"{m.group(0)}: no file {m.group(2)}")
            continue
        lines = target.read_text(encoding="utf-8").splitlines()
        if not _holds(lines, line_no, name):
            line = lines[line_no - 1] if line_no <= len(lines) else ""
            problems.append(f"{m.group(0)}: line {line_no} is {line.strip()[:80]!r}, not {name}")
    return problems


def _parts(md: Path, m: re.Match) -> tuple[Path, int, str]:
    return md.parent / m.group(2), int(m.group(3)), m.group(1).split("(")[0].split(".")[-1]


def _holds(lines: list[str], line_no: int, name: str) -> bool:
    return line_no <= len(lines) and re.search(rf"\b{re.escape(name)}\b", lines[line_no - 1]) is not None


def fix(md: Path) -> tuple[int, list[str]]:
    text = md.read_text(encoding="utf-8")
    fixed, unplaced = 0, []

    def repl(m: re.Match) -> str:
        nonlocal fixed
        target, line_no, name = _parts(md, m)
        if not target.is_file():
            unplaced.append(m.group(0))
            return m.group(0)
        lines = target.read_text(encoding="utf-8").splitlines()
        if _holds(lines, line_no, name):
            return m.group(0)
        new = definition_line(lines, name)
        if new is None:
            unplaced.append(m.group(0))
            return m.group(0)
        fixed += 1
        return f"[`{m.group(1)}`]({m.group(2)}#L{new})"

    new_text = ANCHOR.sub(repl, text)
    if new_text != text:
        md.write_text(new_text, encoding="utf-8")
    return fixed, unplaced


def main() -> int:
    bad = 0
    for md in sorted(ROOT.rglob("*.md")):
        if {"out", ".git", "node_modules"} & set(md.relative_to(ROOT).parts):
            continue
        fixed, unplaced = fix(md)
        if fixed:
            print(f"{md.relative_to(ROOT)}: {fixed} anchor(s) re-pointed")
        for u in unplaced:
            print(f"{md.relative_to(ROOT)}: cannot place {u}", file=sys.stderr)
        bad += len(unplaced)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
