"""train_gpt2.py's Section 5 options: --preset speedrun (Muon resume bit-exact), --time-budget, --precision."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pytorch_gpt2_from_scratch.modern import ModernGPT
from pytorch_gpt2_from_scratch.muon import Muon
from pytorch_gpt2_from_scratch.train_gpt2 import make_config, parse_args, train
from pytorch_gpt2_from_scratch.training import load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    np.save(d / "toy_val_000000.npy", rng.integers(0, 50257, 200).astype(np.uint16))
    for i in (1, 2):
        np.save(d / f"toy_train_{i:06d}.npy", rng.integers(0, 50257, 300).astype(np.uint16))
    return d


@pytest.fixture
def config(shard_dir, tiny_train_options):
    """``config(preset, out, **overrides)``: train_gpt2's ``make_config`` on the synthetic shards, 1 layer, 32 wide."""

    def config(preset, out, **kw):
        smaller = dict(n_layer=1, n_embd=32, total_batch_size=32)
        return make_config(preset, **tiny_train_options(out, shard_dir, **{**smaller, **kw}))

    return config


def test_speedrun_preset_resumes_bit_exactly_with_muon(tmp_path, config):
    def run(out, **kw):  # a step schedule (no time budget) so that both runs see the same learning rates, and
        # fp32 (--precision auto times fp32 against bf16: on a loaded machine two runs could choose differently)
        return train(dataclasses.replace(config("speedrun", out, dtype="fp32", **kw), time_budget=None))

    straight = run(tmp_path / "a")
    assert isinstance(straight.model, ModernGPT)
    first = run(tmp_path / "b", stop_after=3)
    assert first.interrupted and first.steps_done == 3
    ckpt = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert any("momentum_buffer" in s for s in ckpt["optimizer"]["state"].values())  # Muon's state is saved
    resumed = run(tmp_path / "b", resume="auto")
    assert resumed.steps_done == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("preset", ["cpu", "speedrun"])
def test_time_budget_stops_within_one_step(tmp_path, config, preset):
    res = train(config(preset, tmp_path, time_budget=0.5, eval_every=1000))
    steps = [h for h in res.history if "train_loss" in h]
    assert steps, "no step ran"
    end, last = steps[-1]["clock_s"], steps[-1]["dt_ms"] / 1000
    assert end >= 0.5 and end - last < 0.5  # the last step started before the budget, and none after it
    assert len(steps) == res.steps_done
    if preset == "speedrun":
        assert isinstance(res.model, ModernGPT)
        # wsd with no warmup: full lr at once, then decaying with the elapsed fraction
        assert steps[0]["lr"] == pytest.approx(4e-3)


def test_precision_flag_and_bad_options():
    assert parse_args(["--precision", "fp32"]).dtype == "fp32"
    assert parse_args(["--time-budget", "30"]).time_budget == 30.0
    with pytest.raises(ValueError, match="--time-budget must be > 0"):
        make_config("cpu", time_budget=0.0)
    with pytest.raises(ValueError, match="unknown speedrun recipe 'nope'"):
        make_config("cpu", recipe="nope")
    assert make_config("speedrun").recipe == "lean" and Muon is not None
