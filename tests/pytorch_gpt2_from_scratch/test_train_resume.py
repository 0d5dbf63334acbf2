"""train_gpt2.py: N steps straight == k steps + checkpoint + resume + N-k steps, bit for bit on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytorch_gpt2_from_scratch.train_gpt2 import main
from pytorch_gpt2_from_scratch.training import load_checkpoint, restore_model


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """Synthetic token shards (no tokenizer needed): 1 val shard, 3 train shards the loader crosses."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    np.save(d / "toy_val_000000.npy", rng.integers(0, 50257, 200).astype(np.uint16))
    for i in (1, 2, 3):
        np.save(d / f"toy_train_{i:06d}.npy", rng.integers(0, 50257, 150).astype(np.uint16))
    return d


@pytest.fixture
def run(shard_dir, tiny_train_options):
    """``run(out, **overrides)``: train_gpt2's ``main`` on the synthetic shards (conftest's tiny options)."""

    def run(out, **kw):
        return main("cpu", **tiny_train_options(out, shard_dir, **kw))

    return run


def test_resume_is_bit_identical(tmp_path, run):
    # fp32 in both runs by construction: --precision auto times fp32 against bf16, and on a loaded machine the
    # straight run and the interrupted one could choose differently
    straight = run(tmp_path / "a", dtype="fp32")
    first = run(tmp_path / "b", stop_after=3, dtype="fp32")
    assert first.interrupted and first.steps_done == 3 and (tmp_path / "b" / "ckpt.pt").exists()
    resumed = run(tmp_path / "b", resume="auto", dtype="fp32")
    assert resumed.steps_done == 6 and not resumed.interrupted

    def losses(h, key):
        return [(e["step"], e[key]) for e in h if key in e]

    assert losses(resumed.history, "train_loss") == losses(straight.history, "train_loss")  # exact floats
    assert losses(resumed.history, "val_loss") == losses(straight.history, "val_loss")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for path in ("loss.png", "log.txt", "log.jsonl", "ckpt.pt"):
        assert (tmp_path / "b" / path).exists()
    ck = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert ck["step"] == 6 and ck["loader"]["shard_index"] in (0, 1, 2)


def test_wrong_config_checkpoint_is_a_clear_error(tmp_path, run):
    run(tmp_path / "c", max_steps=1, warmup_steps=1, eval_every=100)
    with pytest.raises(ValueError, match="pad_vocab_to=None in the checkpoint vs 64"):
        run(tmp_path / "c", resume="auto", pad_vocab_to=64, max_steps=1, warmup_steps=1)
    ckpt = load_checkpoint(tmp_path / "c" / "ckpt.pt")
    ckpt["model"]["transformer.wpe.weight"] = torch.zeros(8, 64)
    with pytest.raises(ValueError, match=r"'transformer.wpe.weight' has shape \(8, 64\)"):
        restore_model(_tiny(), ckpt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def _tiny():
    from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

    return GPT(GPTConfig.preset("tiny"))


def test_batch_ramp_grows_the_batch_in_micro_batches(tmp_path, run):
    res = run(
        tmp_path / "r",
        max_steps=3,
        warmup_steps=1,
        total_batch_size=128,
        batch_ramp_steps=2,
        eval_every=100,
        checkpoint_every=100,
    )
    # micro-batch = 2 x 16 = 32 tokens, full batch = 4 micro-batches; linear ramp from 1 over 2 steps
    assert [h["batch_tokens"] for h in res.history if "train_loss" in h] == [32, 64, 128]
