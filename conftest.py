"""Root pytest configuration shared by every chapter's tests.

* ``TRITON_INTERPRET=1`` is set when no CUDA device exists, *before* any Triton kernel module is imported, so
  the chapter-4 kernels run on the CPU under Triton's interpreter.
* Every test starts from the same seed (autouse fixture).
* ``load_lesson(chapter, number)`` imports a numbered lesson file (``NN_name.py``) by path.
* Tests marked ``gpu`` are skipped without CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
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
