"""Every lesson steps through as cells: ``pytorch_basis/cells.py`` turns each lesson's ``main()`` into notebook
cells, and here every lesson's cells run top to bottom in one namespace (as a Jupyter kernel would) at tiny sizes.

The tiny options below are the same kinds of sizes the chapters' own tests use; a lesson not listed runs with its
defaults (which must then take seconds). The generator itself is checked on a synthetic lesson: the cells hold the
whole body of main(), in order, split at ``section()`` calls and blank lines, without the final ``return``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pytorch_basis.cells import CellError, build_cells, lesson_paths, run_cells, to_ipynb, to_percent

ROOT = Path(__file__).resolve().parents[1]
GPT2_HF = "{hf_gpt2_small_dir}"  # replaced by the chapter-2 fixture's folder (a random GPT-2 saved offline)

TINY: dict[tuple[str, int], dict] = {
    # chapter 1: defaults are tiny already
    ("pytorch_gpt2_from_scratch", 1): dict(model=GPT2_HF, show=3),
    ("pytorch_gpt2_from_scratch", 2): dict(preset="tiny"),
    ("pytorch_gpt2_from_scratch", 3): dict(model=GPT2_HF),
    ("pytorch_gpt2_from_scratch", 4): dict(model=GPT2_HF, device="cpu"),
    ("pytorch_gpt2_from_scratch", 5): dict(model=GPT2_HF, num_return_sequences=2, max_length=12, device="cpu"),
    ("pytorch_gpt2_from_scratch", 6): dict(preset="tiny", device="cpu"),
    ("pytorch_gpt2_from_scratch", 7): dict(preset="tiny", B=2, T=16, steps=3, device="cpu"),
    ("pytorch_gpt2_from_scratch", 8): dict(preset="tiny", B=2, T=16, steps=3, device="cpu"),
    ("pytorch_gpt2_from_scratch", 9): dict(preset="tiny"),
    ("pytorch_gpt2_from_scratch", 10): dict(preset="tiny", B=2, T=32),
    ("pytorch_gpt2_from_scratch", 11): dict(
        preset="tiny", B=2, T=16, steps=1, warmup=0, hf_steps=1, device="cpu", skip=("compile", "malloc"), peak_n=128
    ),
    ("pytorch_gpt2_from_scratch", 12): dict(steps=2, batch_size=2, seq_len=32, device="cpu"),
    ("pytorch_gpt2_from_scratch", 13): dict(max_lr=1.0, warmup_steps=10, max_steps=100),
    ("pytorch_gpt2_from_scratch", 14): dict(model="tiny", bench_model="tiny", repeats=1, device="cpu"),
    ("pytorch_gpt2_from_scratch", 15): dict(total_batch_size=512, batch_size=2, seq_len=64, steps=1, device="cpu"),
    ("pytorch_gpt2_from_scratch", 16): dict(out="ddp_result.pt", nproc=2, B=1, T=8, steps=1, grad_accum=1),
    ("pytorch_gpt2_from_scratch", 17): dict(shard_size=20_000, workers=1),
    ("pytorch_gpt2_from_scratch", 18): dict(
        steps=2, eval_every=1, sample_every=2, batch_size=2, seq_len=32, device="cpu"
    ),
    ("pytorch_gpt2_from_scratch", 19): dict(model="random", device="cpu", limit=0),
    # Section 5's rungs: a 1-layer model for a fraction of a second, one seed (as test_speedrun_harness.py)
    **{
        ("pytorch_gpt2_from_scratch", n): dict(
            time_budget=0.2, seeds=(0,), eval_points=1, val_tokens=256, tiny=True, out="speedrun", progress=False
        )
        for n in range(20, 34)
    },
    ("pytorch_llama2_from_scratch", 3): dict(head_dim=32, n_heads=2, plot=False),
    ("pytorch_llama2_from_scratch", 4): dict(dim=64, repeats=1),
    ("pytorch_llama2_from_scratch", 6): dict(prompt_len=8, new_tokens=6),
    ("pytorch_llama2_from_scratch", 8): dict(dim=64, plot=False),
    ("pytorch_llama2_from_scratch", 10): dict(plot=False),
    ("pytorch_llama2_from_scratch", 11): dict(max_new_tokens=8, device="cpu"),
    ("pytorch_llama2_from_scratch", 12): dict(
        steps=3, batch_size=2, seq_len=16, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, eval_every=3, eval_batches=1
    ),
    ("pytorch_llama2_from_scratch", 13): dict(lengths=(4, 8), repeats=1, prompt_len=4, hidden=32, layers=1, heads=2),
    **{
        ("pytorch_llama2_from_scratch", n): dict(
            hidden=64,
            layers=2,
            heads=4,
            kv_heads=2,
            intermediate=96,
            vocab=512,
            prompt_len=4,
            new_tokens=6,
            repeats=1,
            clock="cpu",
            **extra,
        )
        for n, extra in (
            (19, {}),
            (20, {"compile": False}),
            (21, {"windows": 2, "train_steps": 2, "checkpoint": "tiny_llama"}),
            (22, {"windows": 2, "train_steps": 2, "checkpoint": "tiny_llama"}),
            (23, {"ks": (1, 2)}),
        )
    },
    ("triton_flash_attention_scratch", 1): dict(seq_len=7, n_embd=16, n_head=4, n_kv_head=2, device="cpu"),
    ("triton_flash_attention_scratch", 2): dict(seq_lens=(512, 1024), head_dim=64, device="cpu"),
    ("triton_flash_attention_scratch", 6): dict(
        batch=1, n_head=2, n_kv_head=1, head_dim=16, seq_lens=(1, 17, 100), device="cpu"
    ),
    ("triton_flash_attention_scratch", 7): dict(n=300, threads=128, rows=20, cols=33, device="cpu"),
    ("triton_flash_attention_scratch", 13): dict(n_head=2, n_kv_head=1, head_dim=16, seq_lens=(17, 100), device="cpu"),
    ("triton_flash_attention_scratch", 14): dict(n=300, rows=5, cols=40, m=20, k=33, n_cols=18),
    ("triton_flash_attention_scratch", 16): dict(seq_len=20, head_dim=16),
    ("triton_flash_attention_scratch", 18): dict(batch=1, heads=4, kv_heads=2, seq_len=20, head_dim=16),
    ("triton_flash_attention_scratch", 20): dict(stages=(1, 3), archs=(80,)),
    ("triton_flash_attention_scratch", 22): dict(steps=2, batch=1, seq_len=32),
}

LESSONS = lesson_paths()


def _key(path: Path) -> tuple[str, int]:
    return path.parent.name, int(path.name[:2])


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from pytorch_gpt2_from_scratch.model import save_random_hf_checkpoint

    small = dict(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=50257)
    return str(save_random_hf_checkpoint(tmp_path_factory.mktemp("cells_gpt2"), seed=0, **small))


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def check_figure(fig) -> list[str]:
    """What a learner needs to read a plot: no empty panel, every panel labelled on both axes (a shared axis may
    carry its label on a neighbour or on the figure; categorical tick labels name an axis too)."""
    problems = []
    axes = [ax for ax in fig.get_axes() if ax.get_visible() and ax.get_label() != "<colorbar>"]
    fig_x = bool(fig._supxlabel.get_text()) if getattr(fig, "_supxlabel", None) else False
    fig_y = bool(fig._supylabel.get_text()) if getattr(fig, "_supylabel", None) else False

    def named(ax, which: str) -> bool:
        label = ax.get_xlabel() if which == "x" else ax.get_ylabel()
        ticks = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
        shared = (ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()).get_siblings(ax)
        sibling = any((s.get_xlabel() if which == "x" else s.get_ylabel()) for s in shared if s is not ax)
        categorical = any(t.get_text() and not _numeric(t.get_text()) for t in ticks)
        return bool(label) or sibling or categorical or (fig_x if which == "x" else fig_y)

    for i, ax in enumerate(axes):
        title = ax.get_title() or f"panel {i}"
        if not (ax.lines or ax.patches or ax.images or ax.collections or ax.tables):
            problems.append(f"{title!r} is an empty panel")
            continue
        for which in ("x", "y"):
            if not named(ax, which):
                problems.append(f"{title!r} has no {which}-axis label")
    return problems


def _numeric(text: str) -> bool:
    try:
        float(text.replace("\u2212", "-").replace("$", "").replace("{", "").replace("}", "").replace("^", "e"))
        return True
    except ValueError:
        return any(ch.isdigit() for ch in text) and not any(ch.isalpha() for ch in text.replace("e", ""))


@pytest.fixture
def figures_checked(monkeypatch):
    """Every figure a lesson saves goes through :func:`check_figure` first."""
    from matplotlib.figure import Figure

    problems: list[str] = []
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        problems.extend(f"{Path(str(fname)).name}: {p}" for p in check_figure(self))
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_lesson_runs_as_cells(path, gpt2_dir, one_thread, tmp_path, monkeypatch, capsys, figures_checked):
    options = {k: (gpt2_dir if v == GPT2_HF else v) for k, v in TINY.get(_key(path), {}).items()}
    lc = build_cells(path, options)
    assert len(lc.code_cells) >= 4, "a lesson should give at least: location, imports, options, one step"
    monkeypatch.chdir(tmp_path)
    namespace = run_cells(lc)
    printed = capsys.readouterr().out
    assert printed.strip(), "the cells printed nothing"
    # every option became a variable of the notebook namespace, with the value we set
    for name, value in options.items():
        assert namespace[name] == value
    assert not figures_checked, "plots a learner cannot read:\n" + "\n".join(figures_checked)


def test_the_figure_check_catches_unlabelled_and_empty_panels():
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3)
    a.plot([0, 1], [1, 2])
    b.plot([0, 1], [1, 2])
    b.set_xlabel("step")
    b.set_ylabel("loss (nats/token)")
    problems = check_figure(fig)
    plt.close(fig)
    assert any("panel 0" in p and "x-axis" in p for p in problems)
    assert any("panel 2" in p and "empty" in p for p in problems)
    assert not any("panel 1" in p for p in problems)


# ------------------------------------------------------------------------------------------------ the generator
SYNTHETIC = '''\
"""A synthetic lesson: the docstring."""
import math


def helper(v):
    return v + 1


def section(title):
    print("==", title)


def main(a: int = 2, b=math.pi, name="x"):
    """main's own docstring is not a cell."""
    total = helper(a)
    # a comment that belongs to the next statement

    # this comment starts step 2
    total = total * 10
    section("three")
    out = [total, b, name]
    for i in range(2):

        out.append(i)
    return {"out": out}


if __name__ == "__main__":
    main()
'''


def test_generator_cells_hold_main_body_in_order(tmp_path):
    path = tmp_path / "01_synthetic.py"
    path.write_text(SYNTHETIC)
    lc = build_cells(path, {"a": 5})
    kinds = [c.kind for c in lc.cells]
    assert kinds[0] == "markdown" and lc.cells[0].source == "A synthetic lesson: the docstring."
    code = [c.source for c in lc.code_cells]
    assert f"__file__ = {str(path)!r}" in code[0]
    assert "def helper" in code[1] and "def main" not in code[1] and "__main__" not in code[1]
    assert code[2] == "a = 5\nb = math.pi\nname = 'x'".replace("'x'", '"x"')
    assert code[3] == "total = helper(a)\n# a comment that belongs to the next statement"
    assert code[4] == "# this comment starts step 2\ntotal = total * 10"
    assert code[5].startswith('section("three")') and "out.append(i)" in code[5]  # a blank line inside a loop
    assert len(code) == 6 and all("return" not in c for c in code[3:])
    ns = run_cells(lc)
    assert ns["out"] == [60, math_pi(), "x", 0, 1]
    assert ns["__doc__"] == "A synthetic lesson: the docstring."  # lessons may use their docstring (--help)


def math_pi() -> float:
    import math

    return math.pi


def test_generator_formats_round_trip(tmp_path):
    path = tmp_path / "02_synthetic.py"
    path.write_text(SYNTHETIC)
    lc = build_cells(path)
    nb = json.loads(to_ipynb(lc))
    assert nb["nbformat"] == 4 and len(nb["cells"]) == len(lc.cells)
    assert ["".join(c["source"]) for c in nb["cells"]] == [c.source for c in lc.cells]
    percent = to_percent(lc)
    assert percent.count("# %%") == len(lc.cells)
    # the percent file is itself a runnable script that does what the lesson does
    script = tmp_path / "cells.py"
    script.write_text(percent + "\nprint('out', out)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "out [30, 3.14159" in done.stdout


@pytest.mark.parametrize(
    "body, message",
    [
        ("def main(a=1):\n    if a:\n        return {}\n    return {}\n", "return"),
        ("def main(*args):\n    return {}\n", "keyword options"),
        ("def main(a):\n    return {}\n", "no default"),
        ("def other():\n    pass\n", "def main"),
        ("def main(:\n", "not valid Python"),
    ],
)
def test_generator_refuses_what_cannot_be_cells(tmp_path, body, message):
    path = tmp_path / "03_bad.py"
    path.write_text(textwrap.dedent(body))
    with pytest.raises(CellError, match=message):
        build_cells(path)


def test_cli_unknown_option_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pytorch_basis.cells", "pytorch_basis/01_grad_basics.py", "--set", "nope=1", "--run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no option nope" in done.stderr and "Traceback" not in done.stderr


def test_cli_writes_both_formats(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pytorch_basis.cells", "pytorch_basis/02_partial_derivatives.py", "--out", tmp_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pytorch_basis" / "02_partial_derivatives.py").read_text().count("# %%") >= 5
    json.loads((tmp_path / "pytorch_basis" / "02_partial_derivatives.ipynb").read_text())


def test_a_final_return_that_does_the_work_becomes_a_cell(tmp_path):
    """``return {...}`` (the tests' dict) is left out, but ``return run(...)`` is the lesson itself: kept."""
    path = tmp_path / "04_thin.py"
    path.write_text("def run(a):\n    print('ran', a)\n    return a * 2\n\n\ndef main(a=3):\n    return run(a)\n")
    lc = build_cells(path)
    assert lc.code_cells[-1].source == "result = run(a)"
    assert run_cells(lc)["result"] == 6
