"""fineweb.py: local text -> uint16 shards (val first), resumable preparation, and ShardedDataLoader."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from pytorch_gpt2_from_scratch.data import DataLoaderLite
from pytorch_gpt2_from_scratch.fineweb import (
    ShardedDataLoader,
    iter_hf_documents,
    iter_text_documents,
    list_shards,
    prepare_shards,
)

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Shards are cut at a fixed size; a document may straddle two of them.",
    "Ünïcödé survives the round trip: 東京, emoji 🙂, tabs\tand\nnewlines.",
    "Short.",
    "The last document ends the stream, and the final shard is shorter than the others.",
] * 3


@pytest.fixture
def enc(gpt2_enc):  # conftest.py: tiktoken's gpt2 encoding, or a skip offline
    return gpt2_enc


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n\n".join(DOCS), encoding="utf-8")
    return path


def expected_stream(enc) -> np.ndarray:
    # independent of fineweb.py: tiktoken on "<|endoftext|>" + document, special token allowed
    ids = [enc.encode("<|endoftext|>" + d, allowed_special="all") for d in DOCS]
    return np.concatenate([np.asarray(i, dtype=np.int64) for i in ids])


@pytest.mark.parametrize("workers", [1, 2])
def test_text_to_shards(enc, corpus, tmp_path, workers):
    docs = list(iter_text_documents([corpus], doc_separator="\n\n\n"))
    assert docs == DOCS
    res = prepare_shards(
        iter(docs),
        tmp_path / "shards",
        shard_size=64,
        prefix="toy",
        source="toy",
        num_workers=workers,
        chunksize=2,
        progress=False,
    )
    stream = expected_stream(enc)
    n_full, rest = divmod(len(stream), 64)
    assert len(res.shards) == n_full + (rest > 0)
    assert res.shards[0].name == "toy_val_000000.npy"
    assert all("_train_" in p.name for p in res.shards[1:])
    assert list_shards(tmp_path / "shards", "val") == res.shards[:1]
    assert list_shards(tmp_path / "shards", "train") == res.shards[1:]
    arrays = [np.load(p) for p in res.shards]
    assert all(a.dtype == np.uint16 for a in arrays)
    assert [len(a) for a in arrays] == [64] * n_full + ([rest] if rest else [])
    got = np.concatenate(arrays).astype(np.int64)
    np.testing.assert_array_equal(got, stream)
    assert enc.decode(got.tolist()) == "".join("<|endoftext|>" + d for d in DOCS)
    assert res.num_tokens == len(stream) and res.num_documents == len(DOCS)


def test_preparation_resumes_after_interruption(enc, tmp_path):
    full = prepare_shards(iter(DOCS), tmp_path / "a", shard_size=40, source="s", progress=False)
    part = prepare_shards(iter(DOCS), tmp_path / "b", shard_size=40, source="s", stop_after_shards=3, progress=False)
    assert len(part.shards) == 3
    rest = prepare_shards(iter(DOCS), tmp_path / "b", shard_size=40, source="s", progress=False)
    assert rest.resumed_from_shard == 3
    assert [p.name for p in rest.shards] == [p.name for p in full.shards]
    for a, b in zip(full.shards, rest.shards):
        np.testing.assert_array_equal(np.load(a), np.load(b))
    with pytest.raises(ValueError, match="shard_size"):
        prepare_shards(iter(DOCS), tmp_path / "b", shard_size=50, source="s", progress=False)


def test_sharded_loader_equals_loader_over_the_concatenation():
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 50257, size=n).astype(np.uint16) for n in (70, 45, 90)]
    whole = np.concatenate(shards).astype(np.int64)
    B, T, P = 2, 5, 2
    mine = [ShardedDataLoader(B, T, shards, r, P) for r in range(P)]
    ref = [DataLoaderLite(B, T, torch.from_numpy(whole), r, P) for r in range(P)]
    for step in range(40):  # several passes over all shards (ring wrap included)
        if step == 17:  # resume mid-way from a state_dict
            state = mine[0].state_dict()
            mine = [ShardedDataLoader(B, T, shards, r, P) for r in range(P)]
            for m in mine:
                m.load_state_dict(state)
        for m, r in zip(mine, ref):
            (x, y), (rx, ry) = m.next_batch(), r.next_batch()
            assert torch.equal(x, rx) and torch.equal(y, ry)  # token ids: exact


def test_sharded_loader_reads_npy_files(tmp_path):
    a = np.arange(100, dtype=np.uint16)
    np.save(tmp_path / "x_val_000000.npy", a)
    loader = ShardedDataLoader(2, 8, list_shards(tmp_path, "val"))
    x, y = loader.next_batch()
    assert torch.equal(x.flatten(), torch.arange(16)) and torch.equal(y.flatten(), torch.arange(1, 17))
    np.save(tmp_path / "y_val_000001.npy", a.astype(np.int32))
    with pytest.raises(ValueError, match="not a token shard"):
        ShardedDataLoader(2, 8, list_shards(tmp_path, "val")[1:])
    with pytest.raises(FileNotFoundError, match="no 'train' shards"):
        list_shards(tmp_path, "train")


def test_hf_source_without_datasets_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        next(iter_hf_documents())


def test_fineweb_hugging_face_path_with_an_in_memory_dataset(monkeypatch, tmp_path, gpt2_enc):
    """``fineweb.py`` without --input reads rows from ``datasets.load_dataset``. A stand-in ``datasets`` module
    returns rows held in memory and records how it was called, so the Hugging Face path runs offline; the shards
    must hold every row's tokens in order, each after <|endoftext|>."""
    import types

    from pytorch_gpt2_from_scratch.fineweb import load_shard, main

    rows = [{"text": f"Document number {i} is about {'education ' * i}.", "score": 3} for i in range(12)]
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return iter(rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    res = main(dataset="HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train", output=str(tmp_path / "s"),
               shard_size=64, workers=1)  # fmt: skip
    assert calls == [(("HuggingFaceFW/fineweb-edu",), dict(name="sample-10BT", split="train", streaming=False))]
    expected = np.concatenate([[gpt2_enc.eot_token, *gpt2_enc.encode_ordinary(r["text"])] for r in rows])
    got = np.concatenate([load_shard(p) for p in res.shards])
    assert got.tolist() == expected.tolist() and res.num_documents == 12
    assert res.shards[0].name == "edufineweb_val_000000.npy"
    with pytest.raises(ValueError, match="has no field 'body'"):
        main(dataset="x", text_field="body", output=str(tmp_path / "t"), shard_size=64, workers=1)


def test_fineweb_hugging_face_path_with_a_real_datasets_dataset(monkeypatch, tmp_path, gpt2_enc):
    """The same path with a real ``datasets.Dataset`` (built in memory, no download): its rows, iterated as
    ``fineweb.py`` iterates a downloaded FineWeb-Edu split, become shards holding every document in order."""
    import datasets

    from pytorch_gpt2_from_scratch.fineweb import load_shard, main

    texts = [f"Row {i}: {'the quick brown fox ' * (i % 5 + 1)}" for i in range(20)]
    ds = datasets.Dataset.from_dict({"text": texts, "score": [float(i % 4) for i in range(20)]})
    seen = []

    def load_dataset(path, **kwargs):  # fineweb.py calls load_dataset(repo, name=config, split=..., streaming=...)
        seen.append(path)
        return ds

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    res = main(dataset="HuggingFaceFW/fineweb-edu", output=str(tmp_path / "s"), shard_size=100, workers=1)
    assert seen == ["HuggingFaceFW/fineweb-edu"] and res.num_documents == len(texts)
    expected = np.concatenate([[gpt2_enc.eot_token, *gpt2_enc.encode_ordinary(t)] for t in texts])
    got = np.concatenate([load_shard(p) for p in res.shards])
    assert got.tolist() == expected.tolist()
