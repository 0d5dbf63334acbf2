"""What a learner reads and imports is clean: chapters depend only on earlier chapters, and the Markdown pages
speak about the material -- not about how it was produced -- and name no machine's absolute paths."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [
    "pytorch_basis",
    "pytorch_gpt2_from_scratch",
    "pytorch_llama2_from_scratch",
    "triton_flash_attention_scratch",
]
MARKDOWN = sorted(
    p for p in ROOT.rglob("*.md") if not any(part in {"out", ".git", "node_modules", ".venv"} for part in p.parts)
)


def _imported_chapters(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in CHAPTERS:
                found.add(top)
    return found


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapters_import_only_earlier_chapters(chapter):
    allowed = set(CHAPTERS[: CHAPTERS.index(chapter) + 1])
    bad = []
    for path in sorted((ROOT / chapter).rglob("*.py")):
        later = _imported_chapters(path) - allowed
        if later:
            bad.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(later))}")
    assert not bad, "a chapter may import only itself and earlier chapters:\n" + "\n".join(bad)


def test_lessons_do_not_import_the_main_programs():
    """Lessons share code through the chapter modules, not through a training program's entry script."""
    programs = {"train_gpt2"}
    bad = []
    for chapter in CHAPTERS:
        for path in sorted((ROOT / chapter).glob("[0-9][0-9]_*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] in programs:
                    bad.append(f"{path.relative_to(ROOT)} imports {node.module}")
    assert not bad, "\n".join(bad)


# Words about how the work was organised or where it ran, which mean nothing to a learner.
PROCESS_WORDS = [
    r"\bsession\b",
    r"\bissue\b",
    r"\btask\b",
    r"\bhelper agent\b",
    r"\bagent\b(?! itself)",
    r"\b(the|this|quiet|busy|loaded|shared|CI) box\b",
    r"\btargets? for this\b",
    r"\bthe targets? (were|was)\b",
    r"\bwas (not )?lent\b",
    r"\bno GPU was (lent|available)\b",
    r"\b(other|whose) jobs\b",
]
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(work|root|home|tmp|Users|mnt|opt|srv|scratch)/\S*")


GENERATED_FENCE = "```generated"  # a block of a model's sampled text, quoted as it came out


def hygiene_problems(text: str) -> list[str]:
    """Process words and absolute paths, line by line. A model's sampled text (a ```generated block) is quoted
    verbatim, so process words are not looked for there (a Shakespeare sample may say "issue"); paths still are."""
    problems, generated = [], False
    for n, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            generated = line.strip() == GENERATED_FENCE if not generated else False
        elif not generated:
            for pattern in PROCESS_WORDS:
                m = re.search(pattern, line, flags=re.IGNORECASE)
                if m:
                    problems.append(f"line {n}: {m.group(0)!r}: {line.strip()[:100]}")
        m = ABSOLUTE_PATH.search(line)
        if m:
            problems.append(f"line {n}: absolute path {m.group(0)!r}")
    return problems


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_has_no_process_words_or_absolute_paths(path):
    problems = hygiene_problems(path.read_text(encoding="utf-8"))
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_only_generated_blocks_may_hold_process_words():
    assert hygiene_problems("```generated\nAnd thou hast these issue of my lord?\n```\n") == []
    assert hygiene_problems("```generated\nsaved in /tmp/x\n```\n")  # paths: everywhere
    assert hygiene_problems("```\nthis session ran\n```\n")  # a plain code block is prose to this check
    assert hygiene_problems("```generated\nROMEO: I\n```\nthe issue was\n")  # the block ends at its fence


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The patterns above are not vacuous: they fire on the kinds of sentence they exist to keep out."""
    samples = {
        "No GPU was lent to this session, so": True,
        "measured on the quiet box": True,
        "with LLM_SCRATCH_DATA=/work/shared/data set": True,
        "The targets for this box were": True,
        "see `out/train_gpt2/cpu/log.txt`": False,
        "the loss targets y are shifted by one": False,
    }
    for text, bad in samples.items():
        hit = any(re.search(p, text, flags=re.IGNORECASE) for p in PROCESS_WORDS) or bool(ABSOLUTE_PATH.search(text))
        assert hit == bad, text


# A link such as [`GPT`](model.py#L224) leads the learner to a definition: the line must still hold it. The rule
# lives in .ci/fix_anchors.py, which also re-points stale anchors.
def _fix_anchors_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fix_anchors", ROOT / ".ci" / "fix_anchors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


anchor_problems = _fix_anchors_module().anchor_problems


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_line_anchors_point_at_what_they_name(path):
    problems = anchor_problems(path, path.read_text(encoding="utf-8"))
    assert not problems, f"{path.relative_to(ROOT)} (python .ci/fix_anchors.py re-points them):\n" + "\n".join(problems)


def test_the_anchor_check_catches_a_stale_link(tmp_path):
    (tmp_path / "m.py").write_text("import os\n\n\ndef f():\n    pass\n")
    assert anchor_problems(tmp_path / "README.md", "[`f`](m.py#L4)") == []
    assert anchor_problems(tmp_path / "README.md", "[`f`](m.py#L1)")  # moved: line 1 is the import
    assert anchor_problems(tmp_path / "README.md", "[`f`](gone.py#L4)")
