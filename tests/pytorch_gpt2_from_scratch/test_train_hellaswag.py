"""HellaSwag scoring: our batched acc / acc_norm equal an independent per-ending scoring with GPT2LMHeadModel."""

from __future__ import annotations

import json

import pytest
import torch

from pytorch_gpt2_from_scratch.hellaswag import evaluate, iter_examples, render_example
from pytorch_gpt2_from_scratch.model import GPT
from tests.numerics import assert_close_to_fp64, to_double

# Hand-written examples in the dataset's JSONL format (fields of hellaswag_val.jsonl).
EXAMPLES = [
    {"ind": 1, "activity_label": "Cooking", "ctx_a": "A man cracks two eggs into a bowl.", "ctx_b": "he",
     "ctx": "A man cracks two eggs into a bowl. he", "split": "val", "split_type": "indomain", "label": 2,
     "endings": ["flies the bowl to the moon.", "paints the eggs blue and sings loudly to them for an hour.",
                 "whisks them with a fork.", "is a bowl."], "source_id": "handwritten~1"},
    {"ind": 2, "activity_label": "Running", "ctx_a": "A woman ties her shoes at the start line.", "ctx_b": "she",
     "ctx": "A woman ties her shoes at the start line. she", "split": "val", "split_type": "indomain",
     "label": 0, "endings": ["starts running when the whistle blows.", "eats the shoes.",
                             "turns into a tree", "reads a very long book about the history of laces."],
     "source_id": "handwritten~2"},
    {"ind": 3, "activity_label": "Gardening", "ctx_a": "The gardener kneels by the flower bed.", "ctx_b": "he",
     "ctx": "The gardener kneels by the flower bed. he", "split": "val", "split_type": "zeroshot", "label": 1,
     "endings": ["sells the garden.", "pulls the weeds out of the soil.", "swims.",
                 "calls a helicopter to water each rose individually."], "source_id": "handwritten~3"},
    {"ind": 4, "activity_label": "Music", "ctx_a": "A girl sits down at the piano.", "ctx_b": "she",
     "ctx": "A girl sits down at the piano. she", "split": "val", "split_type": "zeroshot", "label": 3,
     "endings": ["is a piano.", "drives away in it.", "cuts it in half with scissors and glue.",
                 "begins to play a slow song."], "source_id": "handwritten~4"},
    {"ind": 5, "activity_label": "Painting", "ctx_a": "Two people hold rollers next to a wall.", "ctx_b": "they",
     "ctx": "Two people hold rollers next to a wall. they", "split": "val", "split_type": "indomain", "label": 0,
     "endings": ["paint the wall white.", "roll away.", "are the wall and the rollers at the same time.",
                 "eat."], "source_id": "handwritten~5"},
]  # fmt: skip


@pytest.fixture
def enc(gpt2_enc):  # conftest.py: tiktoken's gpt2 encoding, or a skip offline
    return gpt2_enc


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random GPT2LMHeadModel (large init so the endings score differently) and ours loaded from its files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257, initializer_range=0.4)
    hf = GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(folder)
    ours = GPT.from_pretrained(str(folder), attn_impl="manual").eval()
    return hf, ours


def reference_scores(hf, enc, example):
    """Per ending: summed and mean negative log-likelihood of its tokens, one unpadded sequence at a time."""
    ctx = enc.encode(example["ctx"])
    sums, avgs = [], []
    for ending in example["endings"]:
        end = enc.encode(" " + ending)
        ids = torch.tensor([ctx + end])
        with torch.no_grad():
            logits = hf(ids).logits[0]  # (L, V), in the model's own precision
            logp = torch.log_softmax(logits, dim=-1)
        nll = [-logp[len(ctx) + i - 1, tok].item() for i, tok in enumerate(end)]
        sums.append(sum(nll))
        avgs.append(sum(nll) / len(nll))
    return sums, avgs


def test_render_example(enc):
    tokens, mask, label = render_example(EXAMPLES[0], enc)
    ctx = enc.encode(EXAMPLES[0]["ctx"])
    assert tokens.shape == mask.shape and tokens.shape[0] == 4 and label == 2
    for i, ending in enumerate(EXAMPLES[0]["endings"]):
        end = enc.encode(" " + ending)
        assert tokens[i, : len(ctx) + len(end)].tolist() == ctx + end
        assert mask[i].tolist() == [0] * len(ctx) + [1] * len(end) + [0] * (tokens.shape[1] - len(ctx) - len(end))


@pytest.mark.parametrize("batch_examples", [1, 3])
def test_acc_matches_gpt2lmheadmodel(enc, models, tmp_path, batch_examples):
    hf, ours = models
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    ref_pred, ref_pred_norm = [], []
    for ex in EXAMPLES:
        sums, avgs = reference_scores(hf, enc, ex)
        ref_pred.append(min(range(4), key=sums.__getitem__))
        ref_pred_norm.append(min(range(4), key=avgs.__getitem__))
    res = evaluate(ours, iter_examples(path), batch_examples=batch_examples)
    assert res.num_total == len(EXAMPLES)
    assert res.preds == ref_pred and res.preds_norm == ref_pred_norm
    labels = [e["label"] for e in EXAMPLES]
    assert res.acc == sum(p == lab for p, lab in zip(ref_pred, labels)) / len(EXAMPLES)
    assert res.acc_norm == sum(p == lab for p, lab in zip(ref_pred_norm, labels)) / len(EXAMPLES)


@pytest.mark.parity
def test_losses_match_reference(enc, models):
    """Summed / mean ending losses against the per-ending HF scoring, run in float64 and in fp32."""
    from pytorch_gpt2_from_scratch.hellaswag import completion_losses

    hf, ours = models
    hf64 = to_double(hf)
    for ex in EXAMPLES[:2]:
        tokens, mask, _ = render_example(ex, enc)
        with torch.no_grad():
            logits, _ = ours(tokens)
        sum_loss, avg_loss = completion_losses(logits, tokens, mask)
        (s32, a32), (s64, a64) = (reference_scores(m, enc, ex) for m in (hf, hf64))
        t = torch.tensor
        assert_close_to_fp64(sum_loss, t(s64, dtype=torch.float64), t(s32), what="summed ending loss")
        assert_close_to_fp64(avg_loss, t(a64, dtype=torch.float64), t(a32), what="mean ending loss")


def test_rank_split_covers_every_example(enc, models, tmp_path):
    _, ours = models
    path = tmp_path / "hs.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    full = evaluate(ours, iter_examples(path))
    parts = [evaluate(ours, iter_examples(path), rank=r, world_size=2) for r in range(2)]
    assert sum(p.num_total for p in parts) == full.num_total
    assert sum(p.num_correct_norm for p in parts) == full.num_correct_norm
    assert parts[0].preds_norm == full.preds_norm[0::2] and parts[1].preds_norm == full.preds_norm[1::2]


def test_bad_file_is_rejected(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 0}) + "\n")
    with pytest.raises(ValueError, match="not a HellaSwag example"):
        list(iter_examples(path))


LONG_EXAMPLE = {
    "ctx": "The committee met on a grey Tuesday morning to discuss, at considerable length and with many digressions "
    "about the weather, the budget of the village fete, the tombola, and the",
    "endings": ["cake stall.", "moon landing of nineteen sixty nine.", "colour of the sea.", "end."],
    "label": 0,
}  # context + ending is far longer than block_size 20 below


@pytest.fixture(scope="module")
def short_models(tmp_path_factory):
    """The same kind of model with only 20 positions, so rows longer than block_size must be cropped."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=20, vocab_size=50257, initializer_range=0.4)
    hf = GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hf_gpt2_short")
    hf.save_pretrained(folder)
    return hf, GPT.from_pretrained(str(folder), attn_impl="manual").eval()


def cropped_reference_preds(hf, enc, example, block_size):
    """Independent scoring: each row ``ctx + ending`` on its own, keeping its last ``block_size`` tokens."""
    ctx = enc.encode(example["ctx"])
    sums, avgs = [], []
    for ending in example["endings"]:
        end = enc.encode(" " + ending)
        ids = (ctx + end)[-block_size:]
        n_end = min(len(end), len(ids) - 1)  # the first kept token has no prediction
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), dim=-1)
        nll = [-logp[len(ids) - n_end + i - 1, ids[len(ids) - n_end + i]].item() for i in range(n_end)]
        sums.append(sum(nll))
        avgs.append(sum(nll) / n_end)
    return min(range(4), key=sums.__getitem__), min(range(4), key=avgs.__getitem__)


@pytest.mark.parametrize("batch_examples", [1, 8])
def test_over_long_row_is_cropped_on_its_own(enc, short_models, tmp_path, batch_examples):
    """A row longer than block_size shares a batch with short ones: every prediction equals the per-row reference,
    for batch sizes 1 and 8 (before the fix the batch was cropped as a whole and short rows lost their endings)."""
    hf, ours = short_models
    short = [dict(ex, ctx=ex["ctx_b"]) for ex in EXAMPLES]  # short contexts: rows of 4..12 tokens
    examples = [short[0], LONG_EXAMPLE, *short[1:], LONG_EXAMPLE, short[0]]  # 8 examples, two over-long
    assert len(enc.encode(LONG_EXAMPLE["ctx"])) > 20
    path = tmp_path / "hs.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    ref = [cropped_reference_preds(hf, enc, ex, 20) for ex in examples]
    res = evaluate(ours, iter_examples(path), batch_examples=batch_examples)
    assert res.preds == [r[0] for r in ref]
    assert res.preds_norm == [r[1] for r in ref]


def test_crop_row_keeps_the_ending():
    from pytorch_gpt2_from_scratch.hellaswag import crop_row

    tokens = torch.tensor([5, 6, 7, 8, 9, 0, 0])  # 3 context, 2 ending, 2 padding
    mask = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    t, m = crop_row(tokens, mask, 3)
    assert t.tolist() == [7, 8, 9] and m.tolist() == [0, 1, 1]
    t, m = crop_row(tokens, mask, None)
    assert t.tolist() == [5, 6, 7, 8, 9] and m.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="empty ending"):
        crop_row(tokens, torch.zeros_like(mask), 3)
