"""Root pytest configuration shared by every chapter's tests.

* ``TRITON_INTERPRET=1`` is set when no CUDA device exists, *before* any Triton kernel module is imported, so
  the chapter-4 kernels run on the CPU under Triton's interpreter.
* Every test starts from the same seed (autouse fixture).
* ``load_lesson(chapter, number)`` imports a numbered lesson file (``NN_name.py``) by path.
* Tests marked ``gpu`` are skipped without CUDA.
* With ``LLM_SCRATCH_FORBID_SKIPS=1`` (set by ``.ci/run``) the run fails if any test *other than* a ``gpu`` one
  was skipped: a test that skips because the offline tokenizer or data cache is missing must not pass silently.
* Floating-point comparisons follow one policy, ``tests/numerics.py`` (explained in ``tests/README.md``).
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests never need the Hugging Face hub: they build reference models from small configs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Lessons write to out_dir() (``<repo>/out`` by default); the tests' lessons write to a folder of their own, so that
# `pytest` never overwrites what a learner's runs left there (lesson 12's trained tiny LLaMA, which lessons 21-22
# read) nor reads it. Subprocesses inherit it. Removed at the end unless it was set from outside.
_OWN_OUT = not os.environ.get("LLM_SCRATCH_OUT")
if _OWN_OUT:
    os.environ["LLM_SCRATCH_OUT"] = tempfile.mkdtemp(prefix="llm_scratch_test_out_")


def pytest_unconfigure(config):
    if _OWN_OUT:
        shutil.rmtree(os.environ["LLM_SCRATCH_OUT"], ignore_errors=True)


SEED = 1337


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    yield


def load_lesson_module(chapter: str, number: int):
    """Import ``<chapter>/<NN>_*.py`` by path (lesson files start with a digit, so ``import`` cannot name them)."""
    matches = sorted((ROOT / chapter).glob(f"{number:02d}_*.py"))
    if len(matches) != 1:
        raise FileNotFoundError(f"expected exactly one lesson {chapter}/{number:02d}_*.py, found {matches}")
    path = matches[0]
    name = f"{chapter}.lesson_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture
def load_lesson():
    """Fixture form: ``def test_x(load_lesson): mod = load_lesson("pytorch_basis", 1)``."""
    return load_lesson_module


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


_SKIPPED_NON_GPU: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and "gpu" not in report.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED_NON_GPU.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("LLM_SCRATCH_FORBID_SKIPS") == "1" and _SKIPPED_NON_GPU and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if os.environ.get("LLM_SCRATCH_FORBID_SKIPS") == "1" and _SKIPPED_NON_GPU:
        terminalreporter.section("skips that are not allowed here (LLM_SCRATCH_FORBID_SKIPS=1)")
        for line in _SKIPPED_NON_GPU:
            terminalreporter.write_line(line)
