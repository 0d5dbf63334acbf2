"""Lessons 10-13 run at tiny settings and show what they claim; the trained checkpoint works with the CLI."""

import math

import pytest
import torch

from pytorch_basis.common import DownloadError, tiny_shakespeare_path
from tests.numerics import assert_close_to_fp64

from .conftest import hf_from_ours

CHAPTER = "pytorch_llama2_from_scratch"


def _best_finished_sequence(lm, bos: int, eos: int, max_len: int) -> tuple[float, list[int]]:
    """Exhaustive search over the bigram's likely paths (independent of beam search)."""
    lp = lm.table.log_softmax(-1)
    best = (-math.inf, [])
    stack = [([bos], 0.0)]
    while stack:
        seq, score = stack.pop()
        for nxt in range(lp.size(0)):
            s = score + float(lp[seq[-1], nxt])
            if s < -10:  # the 1e-6 "impossible" transitions
                continue
            if nxt == eos:
                best = max(best, (s, seq[1:] + [nxt]))
            elif len(seq) < max_len:
                stack.append((seq + [nxt], s))
    return best


def _reference_distributions(mod) -> dict[str, torch.Tensor]:
    """Each processor of lesson 10, written out independently in float64 on the lesson's logits."""
    z = torch.tensor(mod.LOGITS, dtype=torch.float64)
    p = z.softmax(-1)
    order = p.argsort(descending=True)
    top3 = torch.zeros_like(p)
    top3[order[:3]] = p[order[:3]]
    cum_before = p[order].cumsum(0) - p[order]  # mass of the tokens ranked above each one
    nucleus = torch.zeros_like(p)
    keep = order[cum_before < 0.8]  # keep a token while the mass before it is below p
    nucleus[keep] = p[keep]
    minp = torch.where(p >= 0.2 * p.max(), p, torch.zeros_like(p))
    seen = torch.tensor([w in mod.HISTORY for w in mod.WORDS])
    penalised = torch.where(seen, torch.where(z > 0, z / 1.5, z * 1.5), z)
    return {
        "softmax(z)  (random sampling)": p,
        "temperature 0.5": (z / 0.5).softmax(-1),
        "temperature 2.0": (z / 2.0).softmax(-1),
        "top-k 3": top3 / top3.sum(),
        "top-p 0.8": nucleus / nucleus.sum(),
        "min-p 0.2": minp / minp.sum(),
        "repetition penalty 1.5": penalised.softmax(-1),
    }


def test_lesson10_strategies_and_beam_beats_greedy(load_lesson):
    mod = load_lesson(CHAPTER, 10)
    res = mod.main(plot=False)
    ref = _reference_distributions(mod)
    assert set(res["distributions"]) == set(ref)
    for label, p in res["distributions"].items():
        assert_close_to_fp64(p, ref[label], what=label)
    # 10,000 top-p draws follow the top-p distribution (4.5 standard deviations of a frequency: <= 0.023)
    assert (res["top_p_frequencies"].double() - ref["top-p 0.8"]).abs().max() < 0.023
    lm = res["bigram"]
    bos, eos = lm.ids["<s>"], lm.ids["</s>"]
    best_lp, best_seq = _best_finished_sequence(lm, bos, eos, max_len=6)
    beam0 = res["beams"][(3, 0.0)][0]  # length_penalty 0 ranks by log P alone
    assert beam0.tokens == best_seq and beam0.score == pytest.approx(best_lp, abs=1e-5)
    assert res["greedy"][1] < best_lp - 0.5  # greedy fell into the trap
    assert len(res["beams"][(3, 2.0)][0].tokens) > len(beam0.tokens)  # a large length penalty prefers longer
    assert len(res["errors"]) == 6 and all("ValueError" in e for e in res["errors"])
    # the greedy trap, recomputed from the bigram table: greedy's log-probability is that of its own path
    assert res["greedy"][1] == pytest.approx(float(lm.log_prob([bos, *res["greedy"][0]])))


def test_lesson11_padding_cache_and_eos(load_lesson):
    res = load_lesson(CHAPTER, 11).main(max_new_tokens=8, device="cpu")
    assert res["padded_equals_alone"] and res["cache_equals_no_cache"]
    # the padded batch's greedy tokens, recomputed by transformers one prompt at a time
    hf = hf_from_ours(res["model"])
    for prompt, out, stopped in zip(res["prompts"], res["outputs"], res["stopped"]):
        ids = torch.tensor([prompt])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert out == ref[0, len(prompt) :].tolist()
        eos = res["eos_id"]
        assert stopped == (out[: out.index(eos) + 1] if eos in out else out)  # each row stops at its own EOS
    assert res["stopped"][0] == res["outputs"][0][:3]
    assert len(res["stream_steps"]) <= 8


@pytest.fixture(scope="module")
def shakespeare():
    try:
        return tiny_shakespeare_path()
    except DownloadError as e:
        pytest.skip(f"tiny Shakespeare not available offline (set LLM_SCRATCH_DATA): {e}")


def test_lesson12_trains_saves_and_the_cli_loads_it(load_lesson, shakespeare, tmp_path, capsys):
    from pytorch_llama2_from_scratch.generate import main as cli_main

    mod = load_lesson(CHAPTER, 12)
    ck = tmp_path / "ck"
    res = mod.main(
        out=str(ck),
        steps=30,
        batch_size=8,
        seq_len=32,
        dim=32,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        vocab_size=128,
        lr=1e-2,
        warmup=5,
        eval_every=1000,
        eval_batches=2,
        max_minutes=None,
        max_chars=50_000,
        sample_tokens=6,
        device="cpu",
    )
    losses = res["losses"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # it learns
    assert res["val_after"] < res["val_before"]
    assert {"params.json", "consolidated.00.pth", "tokenizer.json", "loss.png"} <= {p.name for p in ck.iterdir()}
    assert set(res["samples"]) == {label for label, _, _ in mod.SAMPLE_STRATEGIES}
    assert all(s.startswith("ROMEO:") for s in res["samples"].values())
    # the command-line tool loads the checkpoint and reproduces the lesson's greedy sample
    out = cli_main(checkpoint=str(ck), prompt=["ROMEO:"], strategy="greedy", max_new_tokens=6, device="cpu")
    assert "ROMEO:" + out["completions"][0] == res["samples"]["greedy"]
    out = cli_main(checkpoint=str(ck), prompt=["ROMEO:", "KING"], strategy="min_p", max_new_tokens=4, device="cpu")
    assert len(out["completions"]) == 2
    beam = cli_main(checkpoint=str(ck), prompt=["ROMEO:"], strategy="beam", num_beams=4, max_new_tokens=6)
    assert "ROMEO:" + beam["completions"][0] == res["samples"]["beam search (4 beams)"]
    assert "ROMEO:" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from pytorch_llama2_from_scratch.generate import cli

    with pytest.raises(SystemExit):
        cli(["--checkpoint", str(tmp_path / "missing"), "--prompt", "x"])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_lesson13_benchmark_table(load_lesson, tmp_path):
    res = load_lesson(CHAPTER, 13).main(
        lengths=(4, 8),
        repeats=1,
        prompt_len=4,
        hidden=32,
        layers=1,
        heads=2,
        kv_heads=1,
        intermediate=64,
        vocab=64,
        clock="cpu",
        out=str(tmp_path / "bench.md"),
    )
    hf, prompt = res["hf_model"], torch.tensor([res["prompt"]])
    for row in res["rows"]:
        # same weights -> same greedy tokens; recomputed here with transformers' generate
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=row["n"], do_sample=False)
        ref = ref[0, prompt.shape[1] :].tolist()
        assert row["tokens"]["ours + KV cache"] == ref == row["tokens"]["ours, no cache"]
        assert row["match_hf"] == 1.0 and row["cache_equals_no_cache"]
        for method, tps in row["tokens_per_s"].items():  # the table shows each rate computed from its time
            assert tps == pytest.approx(row["n"] / row["seconds"][method])
            assert f"{tps:.0f}" in res["table"]
    assert (tmp_path / "bench.md").read_text().count("\n| ") == 3  # header + 2 rows
