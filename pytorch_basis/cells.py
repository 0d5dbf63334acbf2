"""Step through any lesson cell by cell, in Jupyter, VS Code or a terminal.

Every lesson of every chapter is a script with the same shape: helper functions at module level, then

    def main(option_a=default_a, option_b=default_b, ...):
        ...the lesson, top to bottom...
        return {...values the tests check...}

    if __name__ == "__main__":
        main(**vars(parse_args()))

so ``python chapter/NN_topic.py`` runs it and the tests call ``main(...)`` with tiny sizes. This module turns the
*body* of ``main()`` into cells, so that the same code can be run one step at a time with every intermediate
variable left in the namespace to inspect:

1. a Markdown cell with the lesson's docstring;
2. a cell that points ``__file__`` at the lesson (its imports find the chapter modules from there);
3. the module's own code without ``main()`` and the ``__main__`` guard (imports, helpers, constants);
4. one cell of options, ``name = default`` per line, the defaults of ``main()`` (= the command line's): edit and
   re-run to change the lesson;
5. ``main()``'s body, split into cells at each ``section(...)`` call and at each blank line between top-level
   statements, with the final ``return {...}`` (the dict the tests read) left out.

The lesson file stays the one source of truth; the cells are generated from it and never edited by hand::

    python -m pytorch_basis.cells             # every lesson -> out/cells/<chapter>/NN_x.py and NN_x.ipynb
    python -m pytorch_basis.cells pytorch_basis/04_forward_backward_by_hand.py
    python -m pytorch_basis.cells pytorch_basis/01_grad_basics.py --run --set x=1.5   # step through in the terminal

The ``.py`` files use the "percent" cell format (``# %%``) that VS Code, PyCharm, Spyder and Jupytext open as
notebooks; the ``.ipynb`` files open in Jupyter. ``tests/test_lesson_cells.py`` runs every lesson's cells top to
bottom at tiny sizes, so the cell form cannot rot.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = (
    "pytorch_basis",
    "pytorch_gpt2_from_scratch",
    "pytorch_llama2_from_scratch",
    "triton_flash_attention_scratch",
)


class CellError(ValueError):
    """A lesson whose ``main()`` cannot be turned into cells (the message says why)."""


@dataclass
class Cell:
    kind: str  # "markdown" | "code"
    source: str
    title: str = ""


@dataclass
class LessonCells:
    path: Path
    cells: list[Cell] = field(default_factory=list)

    @property
    def code_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.kind == "code"]


def lesson_paths(chapters: tuple[str, ...] = CHAPTERS) -> list[Path]:
    """Every numbered lesson ``<chapter>/NN_topic.py``, in reading order."""
    return [p for ch in chapters for p in sorted((ROOT / ch).glob("[0-9][0-9]_*.py"))]


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _is_section_call(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "section"
    )


def _first_line(node: ast.AST) -> int:
    """First source line of a statement, decorators included (1-based)."""
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])


def _check_body(main: ast.FunctionDef) -> None:
    """Reject what cannot run at module level: an early ``return`` or ``yield``/``nonlocal`` in main's own body."""

    class Finder(ast.NodeVisitor):
        def __init__(self):
            self.problems: list[str] = []

        def visit_FunctionDef(self, node):  # nested functions may return / yield as they like
            pass

        visit_AsyncFunctionDef = visit_FunctionDef
        visit_Lambda = visit_FunctionDef

        def visit_ClassDef(self, node):
            pass

        def visit_Return(self, node):
            self.problems.append(f"a `return` on line {node.lineno} that is not main()'s last statement")

        def visit_Yield(self, node):
            self.problems.append(f"a `yield` on line {node.lineno}")

        visit_YieldFrom = visit_Yield

        def visit_Nonlocal(self, node):
            self.problems.append(f"a `nonlocal` on line {node.lineno}")

    finder = Finder()
    body = main.body[:-1] if main.body and isinstance(main.body[-1], ast.Return) else main.body
    for stmt in body:
        finder.visit(stmt)
    if finder.problems:
        raise CellError("main() has " + "; ".join(finder.problems))


def _grad_decorator(main: ast.FunctionDef, source: str) -> str | None:
    """``@torch.no_grad()`` / ``@torch.inference_mode()`` on main(): the cells switch gradients off instead."""
    names = [ast.get_source_segment(source, d) for d in main.decorator_list]
    for name in names:
        if name not in ("torch.no_grad()", "torch.inference_mode()", "torch.no_grad"):
            raise CellError(f"main() has a decorator the cells cannot reproduce: @{name}")
    return names[0] if names else None


def _option_lines(main: ast.FunctionDef, source: str, overrides: dict[str, object]) -> list[str]:
    args = main.args
    if args.vararg or args.kwarg or args.posonlyargs:
        raise CellError("main() must take plain keyword options (no *args/**kwargs)")
    positional = args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    names = [a.arg for a, _ in pairs]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise CellError(f"main() has no option {', '.join(unknown)} (it has: {', '.join(names) or 'none'})")
    lines = []
    for arg, default in pairs:
        if arg.arg in overrides:
            lines.append(f"{arg.arg} = {overrides[arg.arg]!r}")
        elif default is None:
            raise CellError(f"main() option {arg.arg!r} has no default; give one with --set {arg.arg}=VALUE")
        else:
            lines.append(f"{arg.arg} = {ast.get_source_segment(source, default)}")
    return lines


def build_cells(path: str | Path, overrides: dict[str, object] | None = None) -> LessonCells:
    """Cells of one lesson (see the module docstring). ``overrides`` replace ``main()``'s defaults."""
    path = Path(path).resolve()
    if not path.is_file():
        raise CellError(f"{path.name}: no such lesson file")
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise CellError(f"{path.name}: not valid Python ({e.msg}, line {e.lineno})") from None
    lines = source.splitlines()
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    if len(mains) != 1:
        raise CellError(f"{path.name}: expected one module-level def main(...), found {len(mains)}")
    main = mains[0]
    _check_body(main)
    grad_off = _grad_decorator(main, source)
    out = LessonCells(path)

    doc = ast.get_docstring(tree)
    if doc:
        out.cells.append(Cell("markdown", doc, "the lesson"))
    out.cells.append(
        Cell(
            "code",
            "# The lesson this was made from: its imports resolve the chapter modules from this path, and its\n"
            "# docstring (the text of --help, which some lessons also use) is read from it.\n"
            "import ast as _ast\n\n"
            f"__file__ = {str(path)!r}\n"
            "__doc__ = _ast.get_docstring(_ast.parse(open(__file__, encoding='utf-8').read()), clean=False)",
            "where the lesson lives",
        )
    )

    # 3. module code without the docstring, main() and the __main__ guard (blank-line runs squeezed)
    drop: set[int] = set()
    for node in tree.body:
        is_doc = (
            node is tree.body[0]
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        if node is main or _is_main_guard(node) or is_doc:
            drop.update(range(_first_line(node), node.end_lineno + 1))
    kept = [line for i, line in enumerate(lines, start=1) if i not in drop]
    module_code = "\n".join(kept).strip("\n")
    while "\n\n\n\n" in module_code:
        module_code = module_code.replace("\n\n\n\n", "\n\n\n")
    out.cells.append(Cell("code", module_code, "imports and helpers"))

    # 4. options
    out.cells.append(Cell("code", "\n".join(_option_lines(main, source, overrides or {})), "options (edit me)"))

    # 5. main's body, split into steps
    body = list(main.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # main()'s own docstring
    final = None
    if body and isinstance(body[-1], ast.Return):
        ret = body[-1]
        body = body[:-1]
        # the dict for the tests is left out; a return that does the work (a call) becomes `result = ...`
        is_dict = isinstance(ret.value, (ast.Dict, ast.Name, type(None))) or (
            isinstance(ret.value, ast.Call) and isinstance(ret.value.func, ast.Name) and ret.value.func.id == "dict"
        )
        if not is_dict:
            final = "result = " + ast.get_source_segment(source, ret.value)
    if not body:
        if final:
            out.cells.append(Cell("code", final, "run the lesson"))
        return out
    first = _first_line(body[0])
    # comment lines directly above the first statement belong to it
    while first - 1 > main.lineno and lines[first - 2].strip().startswith("#"):
        first -= 1
    last = max(s.end_lineno for s in body)
    # a new cell starts at a top-level statement that is a section() call or follows a blank line; comment lines
    # directly above such a statement travel with it
    cuts = []
    for stmt in body[1:]:
        start = _first_line(stmt)
        while lines[start - 2].strip().startswith("#"):
            start -= 1
        if _is_section_call(stmt) or not lines[start - 2].strip():
            cuts.append(start)
    chunks, begin = [], first
    for cut in cuts + [last + 1]:
        chunks.append(lines[begin - 1 : cut - 1])
        begin = cut
    for i, c in enumerate(x for x in chunks if any(line.strip() for line in x)):
        code = textwrap.dedent("\n".join(c)).strip("\n")
        title = f"step {i + 1}"
        parsed = ast.parse(code).body
        head = parsed[0] if parsed else None
        if head is not None and _is_section_call(head) and head.value.args:
            arg = head.value.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                title = f"step {i + 1}: {arg.value}"
        if grad_off and i == 0:
            code = f"torch.set_grad_enabled(False)  # main() runs under @{grad_off}\n{code}"
        out.cells.append(Cell("code", code, title))
    if final:
        out.cells.append(Cell("code", final, "the lesson's result"))
    if grad_off:
        out.cells.append(Cell("code", "torch.set_grad_enabled(True)  # back to the default", "gradients back on"))
    return out


def to_percent(lc: LessonCells) -> str:
    """The percent cell format: ``# %%`` code cells and ``# %% [markdown]`` cells."""
    origin = f"{lc.path.parent.name}/{lc.path.name}"
    parts = [f"# Generated from {origin} by `python -m pytorch_basis.cells`: edit the lesson, not this file"]
    for cell in lc.cells:
        if cell.kind == "markdown":
            parts.append("# %% [markdown]\n" + "\n".join(("# " + line).rstrip() for line in cell.source.splitlines()))
        else:
            parts.append(f"# %% {cell.title}\n{cell.source}")
    return "\n\n".join(parts) + "\n"


def to_ipynb(lc: LessonCells) -> str:
    """An nbformat-4 notebook (JSON) with the same cells."""

    def src(text: str) -> list[str]:
        lines = text.splitlines(keepends=True)
        return lines

    cells = []
    for cell in lc.cells:
        if cell.kind == "markdown":
            cells.append({"cell_type": "markdown", "metadata": {}, "source": src(cell.source)})
        else:
            cells.append(
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "metadata": {},
                    "outputs": [],
                    "source": src(cell.source),
                }
            )
    nb = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def run_cells(lc: LessonCells, *, echo: bool = False) -> dict:
    """Execute the code cells top to bottom in one fresh namespace (as a notebook kernel would); returns it."""
    import torch  # only to restore the global grad mode a cell may switch off

    # a real module object, so that dataclasses, pickling and typing can look the namespace up by name
    name = "__lesson_cells__"
    module = types.ModuleType(name)
    sys.modules[name] = module
    grad_mode = torch.is_grad_enabled()
    try:
        for i, cell in enumerate(lc.code_cells):
            if echo:
                print(f"\n# %% [{i + 1}/{len(lc.code_cells)}] {cell.title}")
            code = compile(cell.source, f"<{lc.path.name}: cell {i + 1} ({cell.title})>", "exec")
            exec(code, module.__dict__)
    finally:
        torch.set_grad_enabled(grad_mode)
        sys.modules.pop(name, None)
    return module.__dict__


def _parse_set(items: list[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise CellError(f"--set expects NAME=VALUE, got {item!r}")
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text  # a bare word is a string: --set device=cpu
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lessons", nargs="*", help="lesson files (default: every lesson of every chapter)")
    p.add_argument("--out", default=str(ROOT / "out" / "cells"), help="output folder (default: out/cells)")
    p.add_argument("--run", action="store_true", help="run the cells top to bottom here instead of writing files")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override an option of main()")
    args = p.parse_args(argv)
    failed = 0
    try:
        overrides = _parse_set(args.set)
        paths = [Path(x) for x in args.lessons] or lesson_paths()
        if args.run and len(paths) != 1:
            raise CellError("--run takes exactly one lesson file")
        for path in paths:
            try:
                lc = build_cells(path, overrides)
            except CellError as e:
                if args.run:
                    raise
                print(f"error: {path}: {e}", file=sys.stderr)
                failed += 1
                continue
            if args.run:
                run_cells(lc, echo=True)
                continue
            folder = Path(args.out) / lc.path.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / lc.path.name).write_text(to_percent(lc), encoding="utf-8")
            (folder / f"{lc.path.stem}.ipynb").write_text(to_ipynb(lc), encoding="utf-8")
            name = f"{lc.path.parent.name}/{lc.path.name}"
            print(f"{name}: {len(lc.code_cells)} cells -> {folder / lc.path.stem}.py and .ipynb")
    except CellError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
