"""Shared fixtures for the GPT-2 chapter's tests (generic: any test of the chapter may use them).

* ``hf_gpt2_small_dir``: a *randomly initialised* ``GPT2LMHeadModel`` (2 layers, 64 wide, full 50257 vocab,
  64 positions) written with ``save_pretrained`` into a temporary folder — the exact layout of the published
  checkpoints, built offline.
* ``hf_gpt2_parity_dir``: the same shape with a *large* init (``initializer_range=0.5``) for the parity tests:
  with GPT-2's 0.02 the MLP's pre-activations are so small that exact GELU and the tanh approximation give the
  same logits to fp32 precision, and a swapped activation would pass; at 0.5 they reach |x| ~ 3.
* ``gpt2_enc``: tiktoken's ``gpt2`` encoding, or a skip with the reason when it cannot be loaded offline.
* ``shakespeare_tokens``: tiny Shakespeare as GPT-2 tokens, or a skip when the data is not available.
* ``single_thread``: run a test with ``torch.set_num_threads(1)`` (restored afterwards). The models in these
  tests are tiny; on a busy 2-core machine two OpenMP threads spin-wait on each other and the same tests take
  ~5x longer (measured: 82 s vs 17 s for ``test_gpt2_*.py``). Opt in with
  ``pytestmark = pytest.mark.usefixtures("single_thread")``.
* ``tiny_train_options``: ``tiny_train_options(out, data, **overrides)`` -> the options of a ``train_gpt2.py`` run
  of a few steps on the CPU (:data:`TINY_TRAIN_OPTIONS`: 2 layers, 64 wide, B=2, T=16, 6 steps, no samples, no
  HellaSwag), reading token shards from ``data`` and writing to ``out``; ``overrides`` replace any of them.
"""

from __future__ import annotations

import pytest
import torch

from pytorch_basis.common import DownloadError

SMALL_HF_CONFIG = dict(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=50257)
TINY_TRAIN_OPTIONS = dict(
    model="tiny",
    n_layer=2,
    n_head=2,
    n_embd=64,
    block_size=64,
    batch_size=2,
    seq_len=16,
    total_batch_size=64,
    max_steps=6,
    warmup_steps=2,
    eval_every=3,
    val_steps=1,
    checkpoint_every=100,
    num_samples=0,
    hellaswag=False,
    progress=False,
    device="cpu",
)


@pytest.fixture(scope="session")
def hf_gpt2_small_dir(tmp_path_factory):
    from pytorch_gpt2_from_scratch.model import save_random_hf_checkpoint

    return save_random_hf_checkpoint(tmp_path_factory.mktemp("hf_gpt2_small"), seed=0, **SMALL_HF_CONFIG)


@pytest.fixture(scope="session")
def hf_gpt2_parity_dir(tmp_path_factory):
    from pytorch_gpt2_from_scratch.model import save_random_hf_checkpoint

    folder = tmp_path_factory.mktemp("hf_gpt2_parity")
    return save_random_hf_checkpoint(folder, seed=0, initializer_range=0.5, **SMALL_HF_CONFIG)


@pytest.fixture(scope="session")
def gpt2_enc():
    from pytorch_gpt2_from_scratch.data import gpt2_encoding

    try:
        return gpt2_encoding()
    except DownloadError as e:
        pytest.skip(f"GPT-2 BPE not available offline (set TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache): {e}")


@pytest.fixture(scope="session")
def shakespeare_tokens(gpt2_enc):
    from pytorch_gpt2_from_scratch.data import load_tinyshakespeare_tokens

    try:
        return load_tinyshakespeare_tokens()
    except DownloadError as e:
        pytest.skip(f"tiny Shakespeare not available offline (set LLM_SCRATCH_DATA=../shared/data): {e}")


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_train_options():
    def options(out, data, **overrides) -> dict:
        return {**TINY_TRAIN_OPTIONS, "data": str(data), "out": str(out), **overrides}

    return options
