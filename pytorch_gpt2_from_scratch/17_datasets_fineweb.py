"""Step 17: the data — what GPT-2 and GPT-3 trained on, FineWeb-Edu, and token shards on disk.

**WebText (GPT-2, Radford et al. 2019, section 2.1).** To get text that people had judged worth reading without
paying for labels, OpenAI scraped every outbound link posted on Reddit that received at least 3 karma (45M links,
posts up to December 2017), extracted the text (Dragnet and Newspaper extractors), de-duplicated it and removed
Wikipedia pages (they would overlap with evaluation sets): ~8M documents, 40 GB of text. It was never released.

**GPT-3's mixture (Brown et al. 2020, Table 2.2)** — 300B tokens seen in training, sampled *not* in proportion to
size: the higher-quality sets are repeated, the large Common Crawl is seen less than once:

    dataset                   tokens   weight in the mix   epochs in 300B tokens
    Common Crawl (filtered)    410B          60%                 0.44
    WebText2                    19B          22%                 2.9
    Books1                      12B           8%                 1.9
    Books2                      55B           8%                 0.43
    Wikipedia                    3B           3%                 3.4

(figures as printed in the paper; the Common Crawl part was filtered by a classifier trained to tell WebText-like
pages from raw crawl, and fuzzily de-duplicated.)

**FineWeb and FineWeb-Edu (Penedo et al. 2024, "The FineWeb Datasets").** FineWeb is ~15T GPT-2 tokens from 96
Common Crawl snapshots: URL block-list filtering, text extraction from the WARC HTML with trafilatura, fastText
language identification (English, score >= 0.65), the quality and repetition filters of Gopher, a subset of C4's
filters plus a few of their own, and MinHash de-duplication within each snapshot. FineWeb-Edu keeps the
*educational* pages: Llama-3-70B-Instruct rated ~450k pages on a 0-5 scale of educational value; a small
classifier (a linear regression head on Snowflake-arctic-embed-m embeddings) learned those ratings and scored all
of FineWeb; pages with a rounded score >= 3 form FineWeb-Edu (~1.3T tokens; threshold 2 gives the 5.4T-token
FineWeb-Edu-score-2). Its ``sample-10BT`` subset is ~10B GPT-2 tokens: one epoch of the 124M run.

``fineweb.py`` turns any corpus into the format the training loop reads: documents tokenized with GPT-2's BPE, each
preceded by ``<|endoftext|>``, packed into ``uint16`` ``.npy`` shards of a fixed number of tokens, shard 0 kept for
validation. This step runs it on a local text (tiny Shakespeare, one document per paragraph, so the delimiter
shows up), counts the tokens of every document (``document_token_counts``), draws their length histogram
(``out/17_datasets_fineweb/doc_lengths.png``) and reads the shards back with ``ShardedDataLoader``. The real thing is
the same command without ``--input`` (it needs ``pip install datasets``, ~20 GB of disk and an hour or more of CPU)::

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

from pytorch_basis.common import out_dir, positive_int, run_cli, tiny_shakespeare_path
from pytorch_gpt2_from_scratch.data import gpt2_encoding
from pytorch_gpt2_from_scratch.fineweb import (
    ShardedDataLoader,
    document_token_counts,
    iter_text_documents,
    list_shards,
    prepare_shards,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=None, help="a .txt/.jsonl file (default: tiny Shakespeare)")
    p.add_argument("--doc-separator", default="\n\n", help="split the text into documents here")
    p.add_argument("--shard-size", type=positive_int, default=50_000, help="tokens per shard")
    p.add_argument("--workers", type=positive_int, default=2)
    return p.parse_args(argv)


def plot_document_lengths(counts: np.ndarray, path: Path, name: str) -> Path:
    """Histogram of tokens per document on log-spaced bins, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    bins = np.logspace(0, np.log10(max(int(counts.max()), 2)) + 0.05, 40)
    ax.hist(counts, bins=bins)
    ax.set_xscale("log")
    ax.set_xlabel("document length (GPT-2 tokens, log scale)")
    ax.set_ylabel("documents")
    ax.set_title(f"{name}: {len(counts):,} documents, {int(counts.sum()):,} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


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

    counts = document_token_counts(iter_text_documents([src], doc_separator))
    png = plot_document_lengths(counts, target.parent / "doc_lengths.png", src.name)
    print(
        f"tokens per document (with its <|endoftext|>): mean {counts.mean():.1f}, median {np.median(counts):.0f}, "
        f"max {counts.max()}; sum {counts.sum():,} = the shards' {res.num_tokens:,}; histogram: {png}"
    )

    loader = ShardedDataLoader(2, 16, list_shards(target, "train"))
    x, y = loader.next_batch()
    print(f"first training batch x{tuple(x.shape)}: {enc.decode(x[0].tolist())!r}")
    return {"result": res, "num_eot": n_eot, "first_batch": (x, y), "counts": counts, "png": png}


if __name__ == "__main__":  # fineweb.py's worker processes need this guard
    run_cli(lambda: main(**vars(parse_args())))
