"""Datasets for pretraining: tokenize FineWeb-Edu (or any local text) into ``uint16`` ``.npy`` shards, and read them.

Which data?
    * GPT-2 (2019) was trained on WebText: ~8M documents / 40 GB from outbound Reddit links. It was never released.
    * GPT-3 (2020) used a filtered Common Crawl (410B tokens) + WebText2 + two book corpora + Wikipedia, ~300B
      tokens seen in training. Not released either.
    * FineWeb (HuggingFace, 2024) is 15T tokens of filtered Common Crawl; **FineWeb-Edu** keeps the pages an
      LLM-trained classifier rates as educational. Its ``sample-10BT`` subset (~10B GPT-2 tokens) is what the
      124M reproduction trains on: one epoch of 10B tokens = 19,073 steps of 524,288 tokens.

The shard format (the same as in the "Let's reproduce GPT-2" video):
    * every document is tokenized with the GPT-2 BPE and **preceded** by ``<|endoftext|>`` (id 50256), so the
      model learns that a new, unrelated document starts after that token;
    * the token stream is cut into shards of exactly ``shard_size`` tokens (a document may straddle two
      shards; the last shard may be shorter), stored as ``uint16`` (the vocabulary, 50,257, fits in 16 bits:
      half the disk and RAM of int32);
    * shard 0 is the **validation** shard (``<prefix>_val_000000.npy``), the rest are training shards
      (``<prefix>_train_000001.npy`` ...).

Preparation runs tokenization in worker processes, shows a progress bar, writes every shard atomically and
records its progress in ``<prefix>_progress.json``; running the same command again after an interruption
continues after the last complete shard (documents already written are skipped without being tokenized).

Run (from the repo root)::

    python pytorch_gpt2_from_scratch/fineweb.py --input my_corpus.txt --shard-size 100000   # a local text
    python pytorch_gpt2_from_scratch/fineweb.py            # FineWeb-Edu sample-10BT (needs `pip install datasets`,
                                                           # ~10B tokens = 100 shards of 1e8 tokens, ~20 GB)

``datasets`` (Hugging Face) is imported only when a Hugging Face dataset is requested; local files do not need it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import numpy as np
import torch

from pytorch_basis.common import atomic_write_text, data_dir, out_dir, run_cli
from pytorch_gpt2_from_scratch.data import DataLoaderLite, gpt2_encoding

DEFAULT_DATASET = "HuggingFaceFW/fineweb-edu"
DEFAULT_DATASET_CONFIG = "sample-10BT"
DEFAULT_SHARD_SIZE = 100_000_000  # tokens per shard (200 MB as uint16)
DEFAULT_PREFIX = "edufineweb"
EOT_TEXT = "<|endoftext|>"


# --------------------------------------------------------------------------------------------- documents
def iter_text_documents(paths: Iterable[str | os.PathLike], doc_separator: str | None = None) -> Iterator[str]:
    """Documents of local files, in order.

    * ``*.jsonl``: one JSON object per line, its ``"text"`` field is a document (the format of most HF dumps);
    * any other file: the whole file is one document, or it is split on ``doc_separator`` when given
      (e.g. ``"\\n\\n"`` to treat every paragraph as a document);
    * a directory: its ``*.txt`` and ``*.jsonl`` files, sorted by name.
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in (".txt", ".jsonl"))
            if not files:
                raise ValueError(f"directory {p} holds no .txt or .jsonl file")
            yield from iter_text_documents(files, doc_separator)
            continue
        if not p.exists():
            raise FileNotFoundError(f"input file {p} does not exist")
        if p.suffix == ".jsonl":
            with open(p, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
                    if not isinstance(obj, dict) or "text" not in obj:
                        raise ValueError(f"{p}:{lineno}: JSON object has no 'text' field")
                    if not isinstance(obj["text"], str):
                        raise ValueError(f"{p}:{lineno}: 'text' is a {type(obj['text']).__name__}, not a string")
                    yield obj["text"]
        else:
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{p} is not UTF-8 text (byte {e.start}): pass a .txt or .jsonl file") from None
            if doc_separator:
                yield from (d for d in text.split(doc_separator) if d)
            else:
                yield text


def iter_hf_documents(
    name: str = DEFAULT_DATASET,
    config: str | None = DEFAULT_DATASET_CONFIG,
    split: str = "train",
    streaming: bool = False,
    text_field: str = "text",
) -> Iterator[str]:
    """Documents of a Hugging Face dataset (downloaded once into the HF cache, or streamed with ``streaming``)."""
    try:
        import datasets  # noqa: PLC0415 - optional dependency, only for Hugging Face sources
    except ImportError:
        raise ImportError(
            f"reading {name!r} needs the Hugging Face `datasets` package, which is not installed: "
            "run `pip install datasets`, or pass a local text/jsonl file with --input"
        ) from None
    ds = datasets.load_dataset(name, name=config, split=split, streaming=streaming)
    yield from iter_dataset_texts(ds, text_field)


def iter_dataset_texts(ds: Iterable[dict], text_field: str = "text") -> Iterator[str]:
    """The ``text_field`` of every row of a (Hugging Face) dataset; a missing field is a ``ValueError``."""
    for i, row in enumerate(ds):
        if text_field not in row:
            raise ValueError(f"dataset row {i} has no field {text_field!r} (fields: {sorted(row)}); use --text-field")
        yield row[text_field]


# --------------------------------------------------------------------------------------------- tokenization
def tokenize_document(text: str) -> np.ndarray:
    """``[<|endoftext|>] + BPE(text)`` as ``uint16`` (the delimiter goes *before* each document)."""
    enc = gpt2_encoding()
    tokens = np.asarray([enc.eot_token, *enc.encode_ordinary(text)], dtype=np.int64)
    if tokens.max(initial=0) >= 2**16:
        raise ValueError("token id does not fit in uint16; this shard format is for the GPT-2 vocabulary")
    return tokens.astype(np.uint16)


def document_token_counts(documents: Iterable[str]) -> np.ndarray:
    """Tokens per document as the shards store it (``<|endoftext|>`` + BPE), as an ``int64`` array."""
    return np.asarray([len(tokenize_document(d)) for d in documents], dtype=np.int64)


# --------------------------------------------------------------------------------------------- shard files
def shard_path(directory: str | os.PathLike, prefix: str, index: int) -> Path:
    """Shard 0 is the validation shard, the others are training shards."""
    split = "val" if index == 0 else "train"
    return Path(directory) / f"{prefix}_{split}_{index:06d}.npy"


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """``np.save`` to a temporary file then rename: a shard file is either complete or absent."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, tokens.astype(np.uint16, copy=False))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_shard(path: str | os.PathLike) -> np.ndarray:
    """A shard as ``int64`` (ready for ``torch.from_numpy``); rejects files that are not uint16 token shards."""
    arr = np.load(path)
    if arr.dtype != np.uint16 or arr.ndim != 1:
        raise ValueError(f"{path} is not a token shard (expected a 1-D uint16 array, got {arr.dtype} {arr.shape})")
    return arr.astype(np.int64)


def list_shards(directory: str | os.PathLike, split: str) -> list[Path]:
    """The sorted ``*_{split}_*.npy`` shards of a prepared directory (clear error when there are none)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"shard directory {directory} does not exist; prepare it with fineweb.py")
    shards = sorted(directory.glob(f"*_{split}_*.npy"))
    if not shards:
        raise FileNotFoundError(f"no '{split}' shards (*_{split}_*.npy) in {directory}; prepare them with fineweb.py")
    return shards


# --------------------------------------------------------------------------------------------- reading shards
class ShardedDataLoader(DataLoaderLite):
    """``DataLoaderLite`` over a list of shards: the stream is the concatenation of all shards, read as a ring.

    Same batches, same rank sharding and the same wrap rule as :class:`DataLoaderLite`, whose cursor logic it
    reuses; the only difference is that a batch running past the end of a shard continues in the *next* shard
    (and the last shard continues in the first), so no token is skipped. Only the current shard and the one
    after it are in memory. ``shards`` are ``.npy`` paths or in-memory 1-D token arrays; with one shard this is
    exactly ``DataLoaderLite``.
    """

    def __init__(self, B: int, T: int, shards, process_rank: int = 0, num_processes: int = 1):
        self.shards = list(shards)
        if not self.shards:
            raise ValueError("ShardedDataLoader needs at least one shard")
        self.shard_index = 0
        self._next_tokens: torch.Tensor | None = None
        super().__init__(B, T, self._load(0), process_rank, num_processes)

    def _load(self, index: int) -> torch.Tensor:
        shard = self.shards[index % len(self.shards)]
        arr = load_shard(shard) if isinstance(shard, (str, os.PathLike)) else np.asarray(shard, dtype=np.int64)
        need = getattr(self, "tokens_per_step", 0) + 1
        if arr.size < need:
            raise ValueError(f"shard {index} holds {arr.size} tokens, fewer than the {need} one step needs")
        return torch.from_numpy(arr)

    def _following(self) -> torch.Tensor:
        if self._next_tokens is None:
            self._next_tokens = self._load(self.shard_index + 1)
        return self._next_tokens

    def reset(self) -> None:
        if getattr(self, "shard_index", 0) != 0:
            self.shard_index = 0
            self.tokens = self._load(0)
            self._next_tokens = None
        super().reset()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, N = self.B, self.T, self.num_tokens
        start = self.position + self.process_rank * B * T  # may lie past this shard: then it is in the next one
        end = start + B * T + 1
        if end <= N:
            buf = self.tokens[start:end]
        else:  # the tail of this shard, then the head of the next one
            nxt = self._following()
            buf = torch.cat([self.tokens[min(start, N) :], nxt[max(start - N, 0) : end - N]])
        x = buf[:-1].view(B, T)  # (B*T,) -> (B, T)
        y = buf[1:].view(B, T)
        self.position += self.tokens_per_step
        self.consumed += self.tokens_per_step
        if self.position >= N:  # every rank has moved past this shard: advance
            self.position -= N
            self.tokens = self._following()
            self.shard_index = (self.shard_index + 1) % len(self.shards)
            self._next_tokens = None
        return x, y

    def state_dict(self) -> dict:
        return {**super().state_dict(), "shard_index": self.shard_index, "num_shards": len(self.shards)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_shards", len(self.shards)) != len(self.shards):
            raise ValueError(
                f"cannot resume: the saved loader had {state['num_shards']} shards, this one has {len(self.shards)}"
            )
        self.shard_index = int(state.get("shard_index", 0))
        self.tokens = self._load(self.shard_index)
        self._next_tokens = None
        super().load_state_dict(state)


# --------------------------------------------------------------------------------------------- preparation
@dataclass
class PrepareResult:
    out_dir: Path
    shards: list[Path]
    num_tokens: int
    num_documents: int
    resumed_from_shard: int


def prepare_shards(
    documents: Iterable[str],
    out: str | os.PathLike,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    prefix: str = DEFAULT_PREFIX,
    source: str = "",
    num_workers: int = 1,
    chunksize: int = 16,
    stop_after_shards: int | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Tokenize ``documents`` into shards of ``shard_size`` tokens under ``out``; resumable.

    ``source`` names the input (recorded in the progress file: resuming with another source or shard size is an
    error instead of a silently mixed dataset). ``stop_after_shards`` stops early, as an interruption would.
    """
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress_file = out / f"{prefix}_progress.json"
    state = {"source": source, "shard_size": shard_size, "shards": 0, "resume_doc": 0, "resume_offset": 0}
    state.update(tokens=0, documents=0, done=False)
    if progress_file.exists():
        old = json.loads(progress_file.read_text())
        if old["source"] != source or old["shard_size"] != shard_size:
            raise ValueError(
                f"{out} holds a preparation of {old['source']!r} with shard_size {old['shard_size']}, not "
                f"{source!r} with {shard_size}; use another --out-dir or delete {progress_file}"
            )
        state = old
    resumed_from = state["shards"]
    if state["done"]:
        return PrepareResult(
            out,
            [shard_path(out, prefix, i) for i in range(state["shards"])],
            state["tokens"],
            state["documents"],
            resumed_from,
        )
    if resumed_from:
        print(f"resuming: {resumed_from} shards already written, skipping {state['resume_doc']} documents")

    shard_index = state["shards"]
    doc_index = state["resume_doc"]
    skip_tokens = state["resume_offset"]  # tokens of document `doc_index` already in earlier shards
    total_tokens = state["tokens"]
    buf = np.empty(shard_size, dtype=np.uint16)
    fill = 0

    def flush() -> None:
        nonlocal shard_index, fill, total_tokens
        write_shard(shard_path(out, prefix, shard_index), buf[:fill])
        shard_index += 1
        total_tokens += fill
        fill = 0

    def save_state(resume_doc: int, resume_offset: int, done: bool = False) -> None:
        state.update(shards=shard_index, resume_doc=resume_doc, resume_offset=resume_offset)
        state.update(tokens=total_tokens, documents=resume_doc + (1 if resume_offset else 0), done=done)
        atomic_write_text(json.dumps(state, indent=1), progress_file)

    remaining = itertools.islice(documents, doc_index, None)  # documents already written are never tokenized
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"  # no fork on Windows
    pool = mp.get_context(method).Pool(num_workers) if num_workers > 1 else None
    token_iter = (
        pool.imap(tokenize_document, remaining, chunksize=chunksize) if pool else map(tokenize_document, remaining)
    )
    bar = tqdm(total=shard_size, unit="tok", unit_scale=True, desc=f"shard {shard_index}", disable=not progress)
    stopped = False
    try:
        for tokens in token_iter:
            pos = skip_tokens  # position inside the current document
            skip_tokens = 0
            while pos < len(tokens):
                take = min(shard_size - fill, len(tokens) - pos)
                buf[fill : fill + take] = tokens[pos : pos + take]
                fill += take
                pos += take
                bar.update(take)
                if fill == shard_size:
                    flush()
                    # the next shard starts inside this document, or at the next one
                    save_state(doc_index, pos) if pos < len(tokens) else save_state(doc_index + 1, 0)
                    bar.reset()
                    bar.set_description(f"shard {shard_index}")
                    if stop_after_shards is not None and shard_index - resumed_from >= stop_after_shards:
                        stopped = True
                        break
            if stopped:
                break
            doc_index += 1
        if not stopped:
            if fill:
                flush()
            save_state(doc_index, 0, done=True)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    shards = [shard_path(out, prefix, i) for i in range(shard_index)]
    return PrepareResult(out, shards, total_tokens, doc_index, resumed_from)


# --------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--input",
        nargs="*",
        default=None,
        help="local .txt/.jsonl files or directories (default: the Hugging Face dataset below)",
    )
    p.add_argument(
        "--doc-separator",
        default=None,
        help="split text files into documents on this string (default: one document per file)",
    )
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="Hugging Face dataset (default: %(default)s)")
    p.add_argument("--name", default=DEFAULT_DATASET_CONFIG, help="dataset config (default: %(default)s)")
    p.add_argument("--split", default="train", help="dataset split (default: %(default)s)")
    p.add_argument("--text-field", default="text", help="field holding the document text (default: %(default)s)")
    p.add_argument(
        "--streaming",
        action="store_true",
        help="stream the HF dataset instead of downloading it first (default: download)",
    )
    p.add_argument(
        "--out-dir",
        dest="output",
        default=None,
        help="default: $LLM_SCRATCH_DATA/edu_fineweb10B (FineWeb-Edu) or out/data/<name> (local input)",
    )
    p.add_argument("--prefix", default=None, help="shard file prefix (default: edufineweb, or the input's name)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="tokens per shard (default: 1e8)")
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="tokenizer processes (default: %(default)s)",
    )
    return p.parse_args(argv)


def main(
    input: list[str] | None = None,  # noqa: A002 - the CLI flag name
    doc_separator: str | None = None,
    dataset: str = DEFAULT_DATASET,
    name: str | None = DEFAULT_DATASET_CONFIG,
    split: str = "train",
    text_field: str = "text",
    streaming: bool = False,
    output: str | None = None,
    prefix: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
) -> PrepareResult:
    """Prepare shards from local files (``input``) or a Hugging Face dataset; see the module docstring."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if workers < 1:
        raise ValueError(f"--workers must be positive, got {workers}")
    target = output
    if input:
        stem = Path(input[0]).stem
        docs = iter_text_documents(input, doc_separator)
        source = "local:" + ",".join(str(Path(p).resolve()) for p in input) + f"|sep={doc_separator!r}"
        prefix = prefix or stem
        target = Path(target) if target else out_dir("data", stem)
    else:
        docs = iter_hf_documents(dataset, name, split, streaming, text_field)
        source = f"hf:{dataset}/{name}/{split}"
        prefix = prefix or DEFAULT_PREFIX
        target = Path(target) if target else data_dir() / "edu_fineweb10B"
    res = prepare_shards(docs, target, shard_size=shard_size, prefix=prefix, source=source, num_workers=workers)
    print(f"{len(res.shards)} shards ({res.num_tokens:,} tokens, {res.num_documents:,} documents) in {res.out_dir}")
    if res.shards:
        print(f"validation shard: {res.shards[0].name}")
    return res


def cli() -> None:
    main(**vars(parse_args()))


if __name__ == "__main__":  # the guard matters: worker processes re-import this module on some platforms
    run_cli(cli)
