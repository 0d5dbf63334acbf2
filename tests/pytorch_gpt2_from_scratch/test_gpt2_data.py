"""DataLoaderLite on synthetic streams, the GPT-2 tokenizer and tiny Shakespeare tokens."""

import numpy as np
import pytest
import torch

from pytorch_basis.common import DownloadError
from pytorch_gpt2_from_scratch import data
from pytorch_gpt2_from_scratch.data import DataLoaderLite

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: see conftest.py


@pytest.mark.parametrize(("N", "B", "T", "P"), [(103, 2, 5, 1), (100, 2, 5, 1), (257, 3, 4, 3), (50, 1, 7, 2)])
def test_every_token_exactly_once_per_epoch(N, B, T, P):
    stream = torch.arange(N)
    loaders = [DataLoaderLite(B, T, stream, process_rank=r, num_processes=P) for r in range(P)]
    epochs = 3
    steps = -(-epochs * N // (B * T * P))  # enough steps to cover three epochs
    seen = []
    for _ in range(steps):
        for loader in loaders:  # rank order = the order of the ranks' chunks in the stream
            x, y = loader.next_batch()
            assert x.shape == y.shape == (B, T) and x.dtype == torch.int64
            assert torch.equal(y, (x + 1) % N)  # targets: the next token of the stream (the ring wraps to 0)
            seen.append(x.flatten())
    seen = torch.cat(seen)[: epochs * N]
    for e in range(epochs):
        epoch = seen[e * N : (e + 1) * N]
        assert torch.equal(torch.bincount(epoch, minlength=N), torch.ones(N, dtype=torch.long))  # each once
        assert torch.equal(epoch, stream)  # and in stream order: nothing skipped, nothing reordered
    assert loaders[0].epoch == steps * B * T * P // N


def test_state_dict_resumes_exactly():
    stream = torch.randint(0, 50257, (997,))
    a = DataLoaderLite(4, 8, stream)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    b = DataLoaderLite(4, 8, stream)
    b.load_state_dict(state)
    for _ in range(40):  # across several wraps
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.reset()
    assert torch.equal(a.next_batch()[0].flatten(), stream[:32])
    with pytest.raises(ValueError, match="cannot resume.*T=8"):
        DataLoaderLite(4, 4, stream).load_state_dict(state)


def test_loader_validation():
    with pytest.raises(ValueError, match=r"holds 32 tokens but B\*T\*num_processes\+1"):
        DataLoaderLite(4, 8, torch.arange(32))
    DataLoaderLite(4, 8, torch.arange(33))  # exactly B*T+1 is enough
    with pytest.raises(ValueError, match="process_rank"):
        DataLoaderLite(1, 4, torch.arange(100), process_rank=2, num_processes=2)
    with pytest.raises(ValueError, match="1-D"):
        DataLoaderLite(1, 4, torch.zeros(10, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="integer ids"):
        DataLoaderLite(1, 4, torch.zeros(100))
    x, _ = DataLoaderLite(1, 4, np.arange(10, dtype=np.uint16)).next_batch()  # numpy uint16 shards work too
    assert x.dtype == torch.int64 and x.tolist() == [[0, 1, 2, 3]]


def test_tokenizer_round_trip(gpt2_enc):
    text = "Hello, I'm a language model, and I can't wait to see what 2 + 2 = 4 tokens do.\n\tÜnïcödé ✓"
    ids = gpt2_enc.encode(text)
    assert gpt2_enc.decode(ids) == text
    assert gpt2_enc.n_vocab == 50257
    assert gpt2_enc.eot_token == 50256
    assert gpt2_enc.encode("Hello") == [15496]  # GPT-2's id for "Hello" (published vocabulary)


def test_tokenizer_offline_error_names_the_variable(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    data.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(DownloadError, match="set TIKTOKEN_CACHE_DIR"):
            data.gpt2_encoding()
    finally:
        data.gpt2_encoding.cache_clear()


def test_tinyshakespeare_tokens(shakespeare_tokens, gpt2_enc):
    from pytorch_basis.common import tiny_shakespeare_path

    text = tiny_shakespeare_path().read_text(encoding="utf-8")
    assert shakespeare_tokens.dtype == torch.int64 and shakespeare_tokens.dim() == 1
    assert int(shakespeare_tokens.max()) < 50257
    assert (
        gpt2_enc.decode(shakespeare_tokens[:200].tolist())
        == text[: len(gpt2_enc.decode(shakespeare_tokens[:200].tolist()))]
    )
    assert shakespeare_tokens.numel() == len(gpt2_enc.encode_ordinary(text))
