"""Step 19: evaluating with HellaSwag — multiple choice answered by the language-model loss.

A small base model cannot read "which ending is right? answer A-D". Instead each of the four endings is appended
to the context and the model's loss on the ending's tokens is compared (``hellaswag.py``):

    tokens (4, L): ctx + ending_i, right-padded       mask (4, L): 1 on the ending's tokens
    sum_i = Σ_t mask · CE(logits_t, token_{t+1})      avg_i = sum_i / (number of ending tokens)
    acc: argmin sum_i                                 acc_norm: argmin avg_i

This step renders one example and shows the four scores, then — when the validation set can be downloaded —
evaluates ``--limit`` examples. GPT-2 124M reaches acc_norm 0.2955 on all 10,042 (chance: 0.25).

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/19_hellaswag_eval.py                          # our cpu-preset checkpoint
    python pytorch_gpt2_from_scratch/19_hellaswag_eval.py --model gpt2 --limit 500 # OpenAI's GPT-2 (network)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import DownloadError, add_device_argument, out_root, positive_int, resolve_device, run_cli
from pytorch_gpt2_from_scratch.data import gpt2_encoding
from pytorch_gpt2_from_scratch.hellaswag import (
    completion_losses,
    evaluate,
    hellaswag_path,
    iter_examples,
    load_model,
    render_example,
)
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig

# The example quoted in the HellaSwag README (validation set, ind 24).
EXAMPLE = {
    "ind": 24,
    "activity_label": "Roof shingle removal",
    "ctx": "A man is sitting on a roof. he",
    "label": 3,
    "endings": [
        "is using wrap to wrap a pair of skis.",
        "is ripping level tiles off.",
        "is holding a rubik's cube.",
        "starts pulling up roofing on a roof.",
    ],
}
DEFAULT_CKPT = ("train_gpt2", "cpu", "ckpt.pt")  # train_gpt2.py's cpu preset, under out/ (out_root())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default=None,
        help="a train_gpt2.py checkpoint (.pt), HF hub name or save_pretrained dir, or 'random' "
        "(default: out/train_gpt2/cpu/ckpt.pt if it exists, else 'random')",
    )
    p.add_argument(
        "--limit", type=positive_int, default=200, help="validation examples to score when the data is available"
    )
    add_device_argument(p)
    return p.parse_args(argv)


def main(model=None, limit=200, device="auto") -> dict:
    dev = resolve_device(device)
    if model is None:
        ckpt = out_root().joinpath(*DEFAULT_CKPT)
        model = str(ckpt) if ckpt.exists() else "random"
    if model == "random":
        torch.manual_seed(0)
        net = GPT(GPTConfig.preset("tiny")).to(dev)
    else:
        net = load_model(model, dev)
    net.eval()
    print(f"model: {model} ({net.num_params():,} parameters)")

    enc = gpt2_encoding()
    tokens, mask, label = render_example(EXAMPLE, enc)
    print(f"context: {EXAMPLE['ctx']!r}   rows {tuple(tokens.shape)}, label {label}")
    with torch.no_grad():
        logits, _ = net(tokens.to(dev))
    sum_loss, avg_loss = completion_losses(logits, tokens.to(dev), mask.to(dev))
    for i, ending in enumerate(EXAMPLE["endings"]):
        n = int(mask[i].sum())
        mark = "<- label" if i == label else ""
        print(f"  {i}: sum {sum_loss[i]:7.3f}  avg {avg_loss[i]:6.3f}  ({n:2d} tokens) {ending!r} {mark}")
    pred, pred_norm = int(sum_loss.argmin()), int(avg_loss.argmin())
    print(f"acc picks {pred}, acc_norm picks {pred_norm}, the answer is {label}")

    res = None  # the full evaluation, when the validation set is on disk or can be downloaded
    try:
        path = hellaswag_path("val")
    except DownloadError as e:
        print(f"HellaSwag validation set not available, skipping the full evaluation: {str(e).splitlines()[0]}")
    else:
        res = evaluate(net, iter_examples(path), device=dev, limit=limit, progress=True)
        print(f"{res.num_total} examples: acc {res.acc:.4f}, acc_norm {res.acc_norm:.4f}")
    return {"pred": pred, "pred_norm": pred_norm, "eval": res}


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
