"""HellaSwag: a sentence-completion eval that a language model answers by scoring, not by generating.

Each example (Zellers et al. 2019, https://github.com/rowanz/hellaswag) is a context and four endings, one of
them right; the wrong ones were machine-generated to fool models of 2019 ("adversarial filtering"). A small base
model cannot be *asked* a multiple-choice question, so it is evaluated in completion style:

    * every example becomes 4 rows ``context + " " + ending_i`` (padded to the longest), with a mask that is 1
      on the ending's tokens;
    * the model's per-token cross-entropy is summed over the ending: ``sum_i = Σ_t mask_t · CE_t``; and averaged:
      ``avg_i = sum_i / Σ_t mask_t``;
    * **acc** picks ``argmin_i sum_i``, **acc_norm** picks ``argmin_i avg_i`` (length-normalized: long endings
      are not penalized for having more tokens).

Random guessing scores 25%. Reference points (completion style, the 10,042 validation examples): GPT-2 124M
acc_norm 0.2955, GPT-2 XL 1558M 0.4893 (build-nanogpt's ``hellaswag.py``); GPT-3 124M ("Small") 0.337
(GPT-3 paper, Table 3.2/H.1, few-shot 0).

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/hellaswag.py --model gpt2 --limit 200     # a Hugging Face GPT-2 (hub/dir)
    python pytorch_gpt2_from_scratch/hellaswag.py --model out/train_gpt2/cpu/ckpt.pt   # one of our checkpoints
    torchrun --standalone --nproc_per_node=2 pytorch_gpt2_from_scratch/hellaswag.py --model ...   # split over ranks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pytorch_basis.common import add_device_argument, download, run_cli
from pytorch_gpt2_from_scratch.data import gpt2_encoding
from pytorch_gpt2_from_scratch.training import autocast_context

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
HELLASWAG_FALLBACK_URLS = (
    "https://github.com/rowanz/hellaswag/raw/master/data/hellaswag_{split}.jsonl",
    "https://raw.githubusercontent.com/rowanz/hellaswag/refs/heads/master/data/hellaswag_{split}.jsonl",
)
NUM_VAL_EXAMPLES = 10042


def hellaswag_path(split: str = "val") -> Path:
    """The ``hellaswag_{split}.jsonl`` file, downloaded once into ``$LLM_SCRATCH_DATA``.

    Offline it raises ``DownloadError`` with a message naming the file and where to put it.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"HellaSwag split must be train, val or test, got {split!r}")
    urls = [u.format(split=split) for u in HELLASWAG_FALLBACK_URLS]
    return download(HELLASWAG_URL.format(split=split), f"hellaswag_{split}.jsonl", fallback_urls=urls)


def iter_examples(path: str | os.PathLike) -> Iterator[dict]:
    """The examples of a HellaSwag JSONL file (fields used: ``ctx``, ``endings``, ``label``)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            ok = isinstance(ex, dict) and {"ctx", "endings", "label"} <= ex.keys()
            if not ok or not isinstance(ex["endings"], list) or len(ex["endings"]) != 4 or ex["label"] not in range(4):
                raise ValueError(f"{path}:{lineno}: not a HellaSwag example (needs ctx, 4 endings and a label 0-3)")
            yield ex


def render_example(example: dict, enc=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``tokens`` (4, L) and ``mask`` (4, L) int64, and the ``label``.

    Row ``i`` is ``BPE(ctx) + BPE(" " + ending_i)`` right-padded with 0; ``mask`` is 1 on the ending's tokens. The
    space goes in front of the ending because GPT-2's BPE attaches a leading space to the word after it.
    """
    enc = enc or gpt2_encoding()
    ctx = enc.encode(example["ctx"])
    rows, masks = [], []
    for ending in example["endings"]:
        end = enc.encode(" " + ending)
        rows.append(ctx + end)
        masks.append([0] * len(ctx) + [1] * len(end))
    L = max(len(r) for r in rows)
    tokens = torch.zeros((4, L), dtype=torch.long)
    mask = torch.zeros((4, L), dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        tokens[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    return tokens, mask, int(example["label"])


def completion_losses(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
    """Summed and average cross-entropy of the masked (completion) tokens, per row.

    ``logits`` (R, L, V) predicts ``tokens[:, 1:]`` from positions ``0..L-2``; returns ``(sum_loss, avg_loss)``,
    each (R,).
    """
    R, L, V = logits.shape
    shift_logits = logits[:, :-1, :].float()  # (R, L-1, V): position t predicts token t+1
    shift_tokens = tokens[:, 1:]  # (R, L-1)
    losses = F.cross_entropy(shift_logits.reshape(-1, V), shift_tokens.reshape(-1), reduction="none").view(R, L - 1)
    shift_mask = mask[:, 1:].to(losses.dtype)  # (R, L-1): 1 where the *predicted* token is in the ending
    sum_loss = (losses * shift_mask).sum(dim=1)
    avg_loss = sum_loss / shift_mask.sum(dim=1)
    return sum_loss, avg_loss


def crop_row(tokens: torch.Tensor, mask: torch.Tensor, block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One rendered row without its right padding, cropped from the left to at most ``block_size`` tokens.

    ``tokens``, ``mask`` (L,): the row's real length ends at its last masked (ending) token. Cropping from the left
    drops context, never the ending (unless the ending alone is longer than ``block_size``).
    """
    ending = mask.nonzero()
    if ending.numel() == 0:
        raise ValueError("a HellaSwag row has an empty ending (mask is all zero)")
    n = int(ending[-1]) + 1  # the real length: the row ends with its ending
    start = 0 if block_size is None else max(0, n - block_size)
    return tokens[start:n], mask[start:n]


@dataclass
class HellaSwagResult:
    num_total: int
    num_correct: int  # argmin of the summed loss
    num_correct_norm: int  # argmin of the length-normalized loss
    preds: list[int] = field(default_factory=list)  # this rank's predictions, in the order it saw its examples
    preds_norm: list[int] = field(default_factory=list)

    @property
    def acc(self) -> float:
        return self.num_correct / max(self.num_total, 1)

    @property
    def acc_norm(self) -> float:
        return self.num_correct_norm / max(self.num_total, 1)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    examples: Iterable[dict],
    *,
    device: torch.device | str = "cpu",
    batch_examples: int = 8,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> HellaSwagResult:
    """acc / acc_norm of ``model`` (``forward(idx) -> (logits, _)``) on ``examples``.

    ``batch_examples`` examples (4 rows each) go through the model together, right-padded to the longest row
    (causal attention: padding after a token never changes its logits). Example ``i`` is scored by rank
    ``i % world_size``; with an initialised process group the counts are summed over ranks. A row longer than
    the model's ``block_size`` is cropped on its own (:func:`crop_row`: it keeps its last ``block_size`` tokens,
    so the ending stays), so a prediction never depends on which examples share its batch.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    enc = gpt2_encoding()
    model_was_training = model.training
    model.eval()
    total = correct = correct_norm = 0
    preds: list[int] = []
    preds_norm: list[int] = []
    batch: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def flush() -> None:
        nonlocal total, correct, correct_norm
        rows = [crop_row(t[i], m[i], block_size) for t, m, _ in batch for i in range(4)]  # 4 * E rows
        L = max(r.numel() for r, _ in rows)
        tokens = torch.zeros((len(rows), L), dtype=torch.long)  # (4E, L), right-padded with 0
        mask = torch.zeros_like(tokens)
        for j, (r, m) in enumerate(rows):
            tokens[j, : r.numel()] = r
            mask[j, : m.numel()] = m
        tokens, mask = tokens.to(device), mask.to(device)
        with autocast_context(device, autocast_dtype):
            logits, _ = model(tokens)
        sum_loss, avg_loss = completion_losses(logits, tokens, mask)
        sum_loss, avg_loss = sum_loss.view(-1, 4), avg_loss.view(-1, 4)  # (E*4,) -> (E, 4)
        for j, (_, _, label) in enumerate(batch):
            p, pn = int(sum_loss[j].argmin()), int(avg_loss[j].argmin())
            preds.append(p)
            preds_norm.append(pn)
            total += 1
            correct += int(p == label)
            correct_norm += int(pn == label)
        batch.clear()

    for i, ex in enumerate(tqdm(examples, total=limit, desc="hellaswag", disable=not progress, leave=False)):
        if limit is not None and i >= limit:
            break
        if i % world_size != rank:
            continue
        batch.append(render_example(ex, enc))
        if len(batch) == batch_examples:
            flush()
    if batch:
        flush()
    model.train(model_was_training)

    if world_size > 1 and dist.is_available() and dist.is_initialized():
        counts = torch.tensor([total, correct, correct_norm], dtype=torch.long, device=device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        total, correct, correct_norm = (int(c) for c in counts.tolist())
    return HellaSwagResult(total, correct, correct_norm, preds, preds_norm)


# --------------------------------------------------------------------------------------------- CLI
def load_model(name: str, device: torch.device) -> torch.nn.Module:
    """A ``.pt`` checkpoint of ``train_gpt2.py``, or a Hugging Face GPT-2 (hub name or ``save_pretrained`` dir)."""
    from pytorch_gpt2_from_scratch.model import GPT
    from pytorch_gpt2_from_scratch.training import build_model_from_checkpoint, load_checkpoint

    if name.endswith(".pt"):
        return build_model_from_checkpoint(load_checkpoint(name), device)
    return GPT.from_pretrained(name).to(device)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default="gpt2",
        help="train_gpt2.py checkpoint (.pt), HF hub name or HF directory (default: %(default)s)",
    )
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="split (default: %(default)s)")
    p.add_argument("--data", default=None, help="a local HellaSwag .jsonl file (default: download the split)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples (default: all)")
    p.add_argument(
        "--batch-examples", type=int, default=8, help="examples per forward pass, 4 rows each (default: %(default)s)"
    )
    add_device_argument(p)
    return p.parse_args(argv)


def main(
    model: str = "gpt2",
    split: str = "val",
    data: str | None = None,
    limit: int | None = None,
    batch_examples: int = 8,
    device: str = "auto",
) -> HellaSwagResult:
    from pytorch_gpt2_from_scratch.training import cleanup_distributed, setup_distributed

    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    if batch_examples <= 0:
        raise ValueError(f"--batch-examples must be positive, got {batch_examples}")
    if data is not None and not Path(data).is_file():
        raise FileNotFoundError(f"--data {data} is not a file")
    env = setup_distributed(device)
    try:
        net = load_model(model, env.device)
        path = Path(data) if data else hellaswag_path(split)
        dtype = torch.bfloat16 if env.device.type == "cuda" else None
        res = evaluate(
            net,
            iter_examples(path),
            device=env.device,
            batch_examples=batch_examples,
            limit=limit,
            rank=env.rank,
            world_size=env.world_size,
            autocast_dtype=dtype,
            progress=env.master,
        )
        if env.master:
            print(f"{model}: {res.num_total} examples  acc {res.acc:.4f}  acc_norm {res.acc_norm:.4f}")
        return res
    finally:
        cleanup_distributed(env)


def cli() -> None:
    main(**vars(parse_args()))


if __name__ == "__main__":
    run_cli(cli)
