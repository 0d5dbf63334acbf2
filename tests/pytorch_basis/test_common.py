"""Tests of the shared plumbing in pytorch_basis/common.py (downloads, devices, atomic writes)."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import socket
import threading
from functools import partial

import pytest
import torch

from pytorch_basis import common


@pytest.fixture
def http_dir(tmp_path):
    """Serve a folder on 127.0.0.1 (loopback only) and yield (folder, base_url)."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def test_download_fetches_once_and_verifies_sha(http_dir, tmp_path, monkeypatch):
    root, base = http_dir
    payload = b"to be, or not to be\n" * 1000
    (root / "a.txt").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path / "cache"))

    path = common.download(f"{base}/a.txt", sha256=digest)
    assert path == tmp_path / "cache" / "a.txt"
    assert path.read_bytes() == payload

    # Second call is served from the cache: remove the file on the server and it still works.
    (root / "a.txt").unlink()
    assert common.download(f"{base}/a.txt", sha256=digest).read_bytes() == payload


def test_download_rejects_wrong_sha_and_uses_fallback(http_dir, tmp_path):
    root, base = http_dir
    (root / "bad.txt").write_bytes(b"corrupted")
    (root / "good.txt").write_bytes(b"the real thing")
    digest = hashlib.sha256(b"the real thing").hexdigest()
    path = common.download(
        f"{base}/bad.txt", filename="x.txt", sha256=digest, cache_dir=tmp_path / "c", fallback_urls=[f"{base}/good.txt"]
    )
    assert path.read_bytes() == b"the real thing"
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["x.txt"]  # no temporary files left behind


def test_download_offline_message_names_file_url_and_variable(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/data/input.txt"
    with pytest.raises(common.DownloadError) as info:
        common.download(url, cache_dir=tmp_path, timeout=2)
    msg = str(info.value)
    assert "input.txt" in msg and url in msg and common.DATA_ENV in msg
    assert list(tmp_path.iterdir()) == []


def test_run_cli_prints_one_line_instead_of_traceback(tmp_path, capsys):
    def main():
        common.download(f"http://127.0.0.1:{_closed_port()}/f.bin", cache_dir=tmp_path, timeout=2)

    with pytest.raises(SystemExit) as info:
        common.run_cli(main)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download 'f.bin'") and "Traceback" not in err


def test_run_cli_message_of_several_lines(capsys):
    def main():
        raise ValueError("checkpoint x does not fit the model:\n  missing keys (1): w\n  unexpected keys (1): v")

    first = "error: checkpoint x does not fit the model:"
    for join_lines, want in ((False, first), (True, first + " missing keys (1): w unexpected keys (1): v")):
        with pytest.raises(SystemExit) as info:
            common.run_cli(main, join_lines=join_lines)
        assert info.value.code == 1
        assert capsys.readouterr().err == want + "\n"


def test_resolve_device():
    assert common.resolve_device("cpu") == torch.device("cpu")
    assert common.resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            common.resolve_device("cuda")


def test_seed_everything_reproducible():
    g = common.seed_everything(3)
    a = torch.randn(4), torch.randn(4, generator=g)
    g = common.seed_everything(3)
    b = torch.randn(4), torch.randn(4, generator=g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_atomic_torch_save_roundtrip(tmp_path):
    path = common.atomic_torch_save({"w": torch.arange(5)}, tmp_path / "ck" / "model.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_tiny_shakespeare_from_cache_when_available():
    try:
        path = common.tiny_shakespeare_path()
    except common.DownloadError as e:
        pytest.skip(f"tiny Shakespeare not cached and no network ({common.DATA_ENV} unset?): {e}")
    assert path.stat().st_size == 1_115_394
    assert common.sha256_of(path) == common.TINY_SHAKESPEARE_SHA256


def test_device_argument_rejects_missing_device_with_usage_error(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    common.add_device_argument(parser)
    assert parser.parse_args([]).device == "auto"
    assert parser.parse_args(["--device", "cpu"]).device == "cpu"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--device", "tpu"])
    assert info.value.code == 2
    assert "unsupported device 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kind, text, expected",
    [
        (common.positive_int, "1", 1),
        (common.positive_int, "  12 ", 12),
        (common.nonnegative_int, "0", 0),
        (common.seed_int, "0", 0),
        (common.seed_int, str(2**32 - 1), 2**32 - 1),
        (common.int_at_least(2), "2", 2),
        (common.positive_float, "1e-5", 1e-5),
        (common.finite_float, "-0.5", -0.5),
        (common.finite_float, "0", 0.0),
    ],
)
def test_cli_value_types_accept(kind, text, expected):
    assert kind(text) == expected


@pytest.mark.parametrize(
    "kind, text, says",
    [
        (common.positive_int, "0", "integer >= 1"),
        (common.positive_int, "-3", "integer >= 1"),
        (common.positive_int, "2.5", "integer >= 1"),
        (common.positive_int, "ten", "integer >= 1"),
        (common.nonnegative_int, "-1", "integer >= 0"),
        (common.seed_int, "-1", "integer >= 0"),
        (common.seed_int, str(2**32), "[0, 2**32 - 1]"),
        (common.int_at_least(2), "1", "integer >= 2"),
        (common.positive_float, "0", "number > 0"),
        (common.positive_float, "-1e-3", "number > 0"),
        (common.positive_float, "nan", "number > 0"),
        (common.positive_float, "inf", "number > 0"),
        (common.finite_float, "nan", "finite number"),
        (common.finite_float, "-inf", "finite number"),
        (common.finite_float, "x", "expected a number"),
    ],
)
def test_cli_value_types_refuse_with_one_line_from_argparse(kind, text, says, capsys):
    parser = argparse.ArgumentParser(prog="lesson")
    parser.add_argument("--v", type=kind)
    with pytest.raises(SystemExit) as e:
        parser.parse_args([f"--v={text}"])  # the = form: argparse reads "-1e-3" alone as an option
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lesson: error: argument --v: ") and says in err[-1] and repr(text) in err[-1]
    assert len(err) == 2  # argparse's usage line, then the error


def test_out_dir_follows_llm_scratch_out_and_the_tests_never_write_to_the_repos_out(monkeypatch, tmp_path):
    # the suite's own folder (conftest.py): a learner's out/ (lesson 12's checkpoint...) is neither read nor overwritten
    assert not common.out_dir().resolve().is_relative_to((common.REPO_ROOT / "out").resolve())
    monkeypatch.setenv(common.OUT_ENV, str(tmp_path / "elsewhere"))
    assert common.out_dir("llama2", "tiny") == tmp_path / "elsewhere" / "llama2" / "tiny"
    assert (tmp_path / "elsewhere" / "llama2" / "tiny").is_dir()
    monkeypatch.delenv(common.OUT_ENV)
    assert common.out_root() == common.REPO_ROOT / "out"  # the default, for a learner's runs
