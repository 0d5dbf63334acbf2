"""Step 17: the data — what GPT-2 and GPT-3 trained on, FineWeb-Edu, and token shards on disk.

GPT-2's WebText (40 GB of Reddit-linked pages) and GPT-3's mix (filtered Common Crawl, WebText2, books,
Wikipedia; ~300B tokens seen) were never released. FineWeb-Edu (Hugging Face, 2024) is an open stand-in: Common
Crawl pages an LLM-trained classifier judged educational. Its ``sample-10BT`` subset is ~10B GPT-2 tokens, one
epoch of the 124M run.

``fineweb.py`` turns any corpus into the format the training loop reads: documents tokenized with GPT-2's BPE, each
preceded by ``<|endoftext|>``, packed into ``uint16`` ``.npy`` shards of a fixed number of tokens, shard 0 kept for
validation. This step runs it on a local text (tiny Shakespeare, one document per paragraph, so the delimiter
shows up) and reads the result back with ``ShardedDataLoader``. The real thing is the same command without
``--input`` (it needs ``pip install datasets``, ~20 GB of disk and an hour or more of CPU)::

    python pytorch_gpt2_from_scratch/fineweb.py                # -> $LLM_SCRATCH_DATA/edu_fineweb10B, 100 shards

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/17_datasets_fineweb.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import numpy as np

from pytorch_basis.common import out_dir, run_cli, tiny_shakespeare_path
from pytorch_gpt2_from_scratch.data import gpt2_encoding
from pytorch_gpt2_from_scratch.fineweb import ShardedDataLoader, iter_text_documents, list_shards, prepare_shards


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=None, help="a .txt/.jsonl file (default: tiny Shakespeare)")
    p.add_argument("--doc-separator", default="\n\n", help="split the text into documents here")
    p.add_argument("--shard-size", type=int, default=50_000, help="tokens per shard")
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args(argv)


def main(input=None, doc_separator="\n\n", shard_size=50_000, workers=2, out=None) -> dict:  # noqa: A002
    src = Path(input) if input else tiny_shakespeare_path()
    target = Path(out) if out else out_dir("17_datasets_fineweb") / "shards"
    shutil.rmtree(target, ignore_errors=True)  # a fresh preparation each run (fineweb.py itself resumes)
    docs = iter_text_documents([src], doc_separator)
    res = prepare_shards(
        docs, target, shard_size=shard_size, prefix=src.stem, source=str(src), num_workers=workers, progress=False
    )
    print(f"{src.name}: {res.num_documents:,} documents -> {res.num_tokens:,} tokens in {len(res.shards)} shards")
    for p in res.shards:
        arr = np.load(p, mmap_mode="r")
        print(f"  {p.name}: {len(arr):,} tokens, dtype {arr.dtype}, {p.stat().st_size / 1e3:.0f} kB")
    enc = gpt2_encoding()
    head = np.load(res.shards[0])[:40].tolist()
    print(f"first tokens of the validation shard: {head[:12]} ...")
    print(f"decoded: {enc.decode(head)!r}")
    n_eot = int((np.concatenate([np.load(p) for p in res.shards]) == enc.eot_token).sum())
    print(f"<|endoftext|> (id {enc.eot_token}) occurs {n_eot:,} times = once per document")

    loader = ShardedDataLoader(2, 16, list_shards(target, "train"))
    x, y = loader.next_batch()
    print(f"first training batch x{tuple(x.shape)}: {enc.decode(x[0].tolist())!r}")
    return {"result": res, "num_eot": n_eot, "first_batch": (x, y)}


if __name__ == "__main__":  # fineweb.py's worker processes need this guard
    run_cli(lambda: main(**vars(parse_args())))
