"""Every lesson of part 1 runs (small settings) and shows what it claims, checked against independent values."""

import math
import statistics

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests.numerics import assert_close_to_fp64, to_double

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: see conftest.py

CH = "pytorch_gpt2_from_scratch"
SMALL_HF_CONFIG = dict(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=50257)  # as conftest's fixture


def test_01_explore_checkpoint(load_lesson, hf_gpt2_small_dir):
    out = load_lesson(CH, 1).main(model=str(hf_gpt2_small_dir), show=3)
    hf = GPT2LMHeadModel.from_pretrained(hf_gpt2_small_dir)
    assert out["n_params"] == sum(p.numel() for p in hf.parameters())  # tied lm_head counted once
    assert any(k.endswith("wpe.weight") and s == (64, 64) for k, s in out["shapes"].items())
    assert out["png"].exists()


def test_02_module_matches_hf_parameter_count(load_lesson):
    out = load_lesson(CH, 2).main(preset="tiny")
    hf = GPT2LMHeadModel(GPT2Config(**SMALL_HF_CONFIG))
    assert out["n_params"] == sum(p.numel() for p in hf.parameters())
    assert out["logits_shape"] == (2, 8, 50257)


def test_03_load_hf_weights(load_lesson, hf_gpt2_parity_dir):
    """The lesson's logits against HF recomputed here (fp32 and float64), and its printed error recomputed too."""
    out = load_lesson(CH, 3).main(model=str(hf_gpt2_parity_dir))
    hf = GPT2LMHeadModel.from_pretrained(hf_gpt2_parity_dir).eval()
    with torch.no_grad():
        ref32, ref64 = hf(out["idx"]).logits, to_double(hf)(out["idx"]).logits
    assert_close_to_fp64(out["logits"], ref64, ref32, what="lesson 3 logits")
    assert out["max_diff"] == (out["logits"] - ref32).abs().max().item()
    assert "shape mismatch for transformer.wte.weight" in out["mismatch_error"]


def test_03_offline_hub_name_is_one_clear_error(load_lesson, monkeypatch):
    from pytorch_basis.common import DownloadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="--random-init"):
        load_lesson(CH, 3).main(model="gpt2-not-a-real-repo-name")


def test_04_forward_logits(load_lesson, hf_gpt2_small_dir, gpt2_enc):
    out = load_lesson(CH, 4).main(model=str(hf_gpt2_small_dir), device="cpu")
    assert out["logits_shape"] == (1, 8, 50257)
    assert out["error"] == "sequence length 65 exceeds block_size 64"


def test_05_sampling(load_lesson, hf_gpt2_small_dir, gpt2_enc):
    kw = dict(model=str(hf_gpt2_small_dir), num_return_sequences=2, max_length=12, device="cpu")
    a = load_lesson(CH, 5).main(**kw)["texts"]
    assert a == load_lesson(CH, 5).main(**kw)["texts"]  # seeded
    assert len(a) == 2 and all(t.startswith("Hello, I'm a language model,") for t in a)


def test_06_first_loss(load_lesson, shakespeare_tokens):
    out = load_lesson(CH, 6).main(preset="tiny", device="cpu")
    assert out["expected"] == pytest.approx(math.log(50257))
    assert abs(out["loss"] - out["expected"]) < 0.3


def test_07_overfit_batch(load_lesson, shakespeare_tokens):
    losses = load_lesson(CH, 7).main(preset="tiny", B=2, T=16, steps=12, lr=3e-3, device="cpu")["losses"]
    assert losses[-1] < losses[0] - 2.0  # 10.8 -> ~7 in 12 steps on one memorised batch


def test_08_dataloader_lite(load_lesson, shakespeare_tokens):
    out = load_lesson(CH, 8).main(preset="tiny", B=2, T=16, steps=3, device="cpu")
    assert out["loader_state"]["position"] == 3 * 2 * 16
    assert out["batches_per_epoch"] == shakespeare_tokens.numel() // 32


def test_09_weight_tying(load_lesson):
    out = load_lesson(CH, 9).main(preset="tiny")
    assert out["n_untied"] - out["n_tied"] == 50257 * 64  # V * C, by hand
    assert out["same_storage"]


@pytest.mark.parity
def test_09_tied_gradient_is_the_sum_of_both_uses():
    """The reference is built here: an untied copy with the same values, run in float64 and in fp32; the tied
    matrix's gradient must equal its ``wte`` gradient + its ``lm_head`` gradient (rule 1 of tests/numerics.py)."""
    from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

    tied = GPT(GPTConfig.preset("tiny"))
    assert tied.transformer.wte.weight is tied.lm_head.weight
    idx = torch.randint(0, 50257, (2, 16))
    targets = torch.randint(0, 50257, (2, 16))
    tied(idx, targets)[1].backward()

    def untied_grads(dtype):
        untied = GPT(GPTConfig.preset("tiny", tie_weights=False))
        untied.load_state_dict(tied.state_dict())  # both wte and lm_head get the shared matrix's values
        untied.to(dtype)
        assert untied.transformer.wte.weight is not untied.lm_head.weight
        untied(idx, targets)[1].backward()
        return untied.transformer.wte.weight.grad, untied.lm_head.weight.grad

    (wte64, head64), (wte32, head32) = untied_grads(torch.float64), untied_grads(torch.float32)
    assert_close_to_fp64(tied.lm_head.weight.grad, wte64 + head64, wte32 + head32, what="tied gradient")
    for one_use64, one_use32 in ((wte64, wte32), (head64, head32)):  # the check tells the sum from either use alone
        with pytest.raises(AssertionError, match="bound"):
            assert_close_to_fp64(tied.lm_head.weight.grad, one_use64, one_use32)


def test_10_init(load_lesson):
    out = load_lesson(CH, 10).main(preset="tiny", B=2, T=32)
    assert out["gpt2"]["c_proj_std"] == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.05)
    assert out["gpt2-unscaled"]["c_proj_std"] == pytest.approx(0.02, rel=0.05)
    assert out["gpt2"]["c_fc_std"] == pytest.approx(0.02, rel=0.05)


def test_11_make_it_fast_writes_the_table(load_lesson, tmp_path):
    path = tmp_path / "ladder.md"
    out = load_lesson(CH, 11).main(
        preset="tiny",
        B=2,
        T=16,
        steps=1,
        warmup=0,
        hf_steps=1,
        device="cpu",
        skip=("compile", "malloc"),
        peak_n=128,
        out=str(path),
    )
    names = [r.name for r in out["results"]]
    assert names[0].startswith("fp32 baseline") and "+ torch.compile" not in names
    for r in out["results"]:  # each row is the median of its own timed steps, tokens/s = B*T / that median
        assert r.ms == statistics.median(r.all_ms) and r.tokens_per_s == pytest.approx(2 * 16 / r.ms * 1e3)
        assert r.verdict in ("kept", "within noise", "slower") and r.kept == (r.verdict == "kept")
    text = path.read_text()
    assert "| fp32 baseline (manual attention) |" in text and "GPT2LMHeadModel, dropout 0" in text
    with pytest.raises(ValueError, match="--skip accepts"):
        load_lesson(CH, 11).main(preset="tiny", skip=("nope",))
    torch.set_float32_matmul_precision("highest")


def test_bench_stats_keeps_a_rung_only_beyond_the_spread():
    from pytorch_gpt2_from_scratch.bench_stats import rung_verdict, spread

    assert spread([10.0]) == 0 and spread([10.0, 12.0, 11.0]) == 2.0
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0  # q75 4 - q25 2 (inclusive quartiles, by hand)
    best = [100.0, 101.0, 99.0, 100.5, 99.5]  # spread 1.0
    assert rung_verdict([90.0, 90.5, 89.5, 90.2, 89.8], best) == "kept"  # 10 ms faster, far beyond the spread
    assert rung_verdict([99.6, 99.4, 99.9, 99.0, 100.0], best) == "within noise"  # 0.4 ms faster: noise
    assert rung_verdict([100.3, 100.9, 99.8, 100.5, 100.1], best) == "within noise"  # 0.3 ms slower: noise
    assert rung_verdict([110.0, 111.0, 109.0, 110.0, 110.0], best) == "slower"
    assert rung_verdict([50.0], None) == "kept"  # the first rung is the baseline
