"""The part-2 lessons (12-19) run end to end on tiny settings and show what they claim."""

from __future__ import annotations

import math

import pytest
import torch

from tests.numerics import assert_close_to_fp64, to_double

CH = "pytorch_gpt2_from_scratch"


@pytest.fixture
def enc(gpt2_enc):  # conftest.py: tiktoken's gpt2 encoding, or a skip offline
    return gpt2_enc


def synthetic_tokens(n=20_000):
    return torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(0))


def test_12_clipping_bounds_the_norm(load_lesson):
    res = load_lesson(CH, 12).main(steps=3, batch_size=2, seq_len=32, device="cpu", tokens=synthetic_tokens())
    assert len(res["losses"]) == 3 and all(math.isfinite(x) for x in res["losses"])
    assert res["clipped_norm"] == pytest.approx(min(res["norms"][-1], 1.0), rel=1e-4)


def test_13_schedule_plot(load_lesson):
    res = load_lesson(CH, 13).main(max_lr=1.0, warmup_steps=10, max_steps=100)
    assert res["lrs"][0] == pytest.approx(0.1) and res["lrs"][9] == pytest.approx(1.0)
    assert res["lrs"][100] == pytest.approx(0.1) and res["png"].exists()


def test_14_decay_counts(load_lesson):
    res = load_lesson(CH, 14).main(model="tiny", bench_model="tiny", repeats=1, device="cpu")
    # tiny = 2 blocks. Decayed: wte (= lm_head, tied), wpe, and per block c_attn, attn.c_proj, c_fc, mlp.c_proj.
    assert res["decay_tensors"] == 2 + 4 * 2
    # Not decayed: per block ln_1 (w, b), ln_2 (w, b) and the 4 Linear biases; plus ln_f (w, b).
    assert res["no_decay_tensors"] == 8 * 2 + 2
    C, L = 64, 2
    assert res["no_decay_params"] == L * (4 * C + 3 * C + C + 4 * C + C) + 2 * C
    assert res["ramp"][0] == 2 and res["ramp"][300] == 32


def test_15_accumulation_equals_big_batch(load_lesson):
    res = load_lesson(CH, 15).main(
        total_batch_size=512, batch_size=2, seq_len=64, steps=1, device="cpu", tokens=synthetic_tokens()
    )
    assert res["grad_accum_steps"] == 4
    # Recompute the big-batch gradient here (the lesson's model: tiny, seed 1337), in fp32 and float64.
    from pytorch_basis.common import seed_everything
    from pytorch_gpt2_from_scratch.data import DataLoaderLite
    from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

    seed_everything(1337)
    model = GPT(GPTConfig.preset("tiny", block_size=64))
    x, y = DataLoaderLite(4 * 2, 64, synthetic_tokens()).next_batch()
    refs = []
    for m in (model, to_double(model)):
        m(x, y)[1].backward()
        refs.append({n: p.grad for n, p in m.named_parameters()})
    for n, g in res["grads"].items():
        assert_close_to_fp64(g, refs[1][n], refs[0][n], what=n)
    assert res["unscaled_ratio"] == pytest.approx(4.0, rel=1e-4)


def test_17_shards_of_a_local_text(load_lesson, enc, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: " + "words and more words " * 20 for i in range(30)))
    res = load_lesson(CH, 17).main(input=str(text), shard_size=400, workers=1, out=str(tmp_path / "sh"))
    assert res["num_eot"] == 30 == res["result"].num_documents
    assert res["first_batch"][0].shape == (2, 16)
    # token counts per document recomputed here with tiktoken: BPE of the paragraph + its <|endoftext|>
    paragraphs = [d for d in text.read_text().split("\n\n") if d]
    assert res["counts"].tolist() == [len(enc.encode_ordinary(d)) + 1 for d in paragraphs]
    assert res["counts"].sum() == res["result"].num_tokens and res["png"].exists()


def test_18_validation_and_sampling(load_lesson, enc):
    res = load_lesson(CH, 18).main(
        steps=2, eval_every=1, sample_every=2, batch_size=2, seq_len=32, device="cpu", tokens=synthetic_tokens()
    )
    assert [s for s, _ in res["val_losses"]] == [0, 1, 2]
    assert len(res["samples"][2]) == 2 and all(s.startswith("ROMEO:") for s in res["samples"][2])


def test_19_scores_the_readme_example(load_lesson, enc):
    """The lesson's picks against a scoring written here: each ending alone, unpadded, log-softmax in float64."""
    lesson = load_lesson(CH, 19)
    res = lesson.main(model="random", device="cpu", limit=0)
    from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

    torch.manual_seed(0)
    net = GPT(GPTConfig.preset("tiny")).eval()  # the lesson's "random" model
    ctx = enc.encode(lesson.EXAMPLE["ctx"])
    sums, avgs = [], []
    for ending in lesson.EXAMPLE["endings"]:
        end = enc.encode(" " + ending)
        with torch.no_grad():
            logp = torch.log_softmax(net(torch.tensor([ctx + end]))[0][0].double(), dim=-1)
        nll = -sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(end))
        sums.append(nll)
        avgs.append(nll / len(end))
    assert res["pred"] == min(range(4), key=sums.__getitem__)
    assert res["pred_norm"] == min(range(4), key=avgs.__getitem__)
