"""Shared helpers every chapter uses: device choice, seeding, cached downloads, atomic checkpoint writes.

Nothing here is specific to one model; it is the plumbing that the lessons of all four chapters import::

    from pytorch_basis.common import resolve_device, add_device_argument, seed_everything, download

Downloads go to one cache directory, ``$LLM_SCRATCH_DATA`` (default ``~/.cache/llm-scratch-pytorch``). A file
already in the cache with the right sha256 is never fetched again, so pointing the variable at a folder that
already holds the data (``../shared/data`` on the CI machines) makes every lesson work offline.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import pickle
import platform
import random
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

DATA_ENV = "LLM_SCRATCH_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/llm-scratch-pytorch")
REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


# --------------------------------------------------------------------------------------------- device & seeding
def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|mps`` (or ``cuda:1`` etc.) to a ``torch.device``.

    ``auto`` picks CUDA, then Apple's MPS, then the CPU. Asking for a device that is not there is an error
    naming the device, not a crash later inside a kernel.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.split(":", 1)[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; choose from auto, cpu, cuda, cuda:N, mps")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine (use --device cpu)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} requested but MPS is not available on this machine (use --device cpu)")
    return dev


def _device_name(name: str) -> str:
    """argparse ``type=``: reject a device this machine lacks with a one-line usage error, keep the name."""
    try:
        resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add the ``--device auto|cpu|cuda|mps`` option every lesson shares (validated when parsed)."""
    parser.add_argument(
        "--device",
        default=default,
        type=_device_name,
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: %(default)s)",
    )


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= low``; anything else is refused by argparse with one line, e.g.
    ``error: argument --dim: expected an integer >= 1, got '0'`` (before any work starts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse names in its message for a value that does not parse
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
SEED_MAX = 2**32 - 1  # np.random.seed takes [0, 2**32 - 1]


def seed_int(text: str) -> int:
    """An argparse ``type`` for ``--seed``: an integer in [0, 2**32 - 1], NumPy's range."""
    value = nonnegative_int(text)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32 - 1], got {text!r}")
    return value


def _number(text: str, expected: str) -> float:
    """``float(text)``, or argparse's one-line refusal ``expected <expected>, got '<text>'``."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def finite_float(text: str) -> float:
    """An argparse ``type``: any finite number (refuses nan and inf, which would only print nan further on)."""
    value = _number(text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number ``> 0`` (refuses 0, negatives, nan and inf with one line)."""
    value = _number(text, "a number > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """An argparse ``type``: a finite number ``>= 0`` (0 often means "off", e.g. no gradient clipping)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a CPU ``torch.Generator`` seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels so wall-clock timings are honest (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def cpu_model_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows: for benchmark tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------- cached downloads
class DownloadError(RuntimeError):
    """A file could not be fetched; the message names the file, the URLs tried and the variable to set."""


def data_dir() -> Path:
    """The download cache: ``$LLM_SCRATCH_DATA`` if set, else ``~/.cache/llm-scratch-pytorch``."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, desc: str, timeout: float) -> None:
    """Stream ``url`` into ``dest`` with a tqdm progress bar."""
    from tqdm.auto import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "llm-scratch-pytorch"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False) as bar:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                out.write(chunk)
                bar.update(len(chunk))


def download(
    url: str,
    filename: str | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    fallback_urls: Iterable[str] = (),
    timeout: float = 30.0,
) -> Path:
    """Return the local path of ``filename``, downloading it once into the cache if it is not there yet.

    * The cache is ``cache_dir`` or :func:`data_dir` (``$LLM_SCRATCH_DATA``).
    * A cached file whose sha256 does not match ``sha256`` is fetched again.
    * ``fallback_urls`` are tried in order when ``url`` fails.
    * Without network the result is one :class:`DownloadError` whose message names the file, every URL tried
      and the environment variable that points the cache at a folder that already holds the file.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else data_dir()
    filename = filename or url.rstrip("/").rsplit("/", 1)[-1]
    path = cache / filename
    if path.exists():
        if sha256 is None or sha256_of(path) == sha256:
            return path
        print(f"{path} has the wrong sha256; downloading it again", file=sys.stderr)

    urls = [url, *fallback_urls]
    problems: list[str] = []
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the download cache {cache} ({e.strerror}); set {DATA_ENV} to a writable folder"
        ) from None
    for u in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", dir=cache)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(u, tmp, desc=filename, timeout=timeout)
            if sha256 is not None and (got := sha256_of(tmp)) != sha256:
                problems.append(f"{u}: sha256 {got} does not match the expected {sha256}")
                continue
            os.replace(tmp, path)  # atomic: a half-downloaded file never has the final name
            return path
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            problems.append(f"{u}: {reason}")
        finally:
            tmp.unlink(missing_ok=True)
    tried = "\n  ".join(problems)
    raise DownloadError(
        f"could not download {filename!r} into {cache}.\n  {tried}\n"
        f"If this machine is offline, put the file at {path} yourself, or set {DATA_ENV} to a folder that "
        f"already contains {filename!r}."
    )


def tiny_shakespeare_path() -> Path:
    """The tiny Shakespeare corpus (1,115,394 bytes), downloaded once and verified."""
    return download(TINY_SHAKESPEARE_URL, "tinyshakespeare.txt", sha256=TINY_SHAKESPEARE_SHA256)


DEBUG_ENV = "LLM_SCRATCH_DEBUG"

# What a command line expects to go wrong with bad input: bad values (ValueError), missing/unreadable files
# (OSError, FileNotFoundError), missing optional packages (ImportError), a config without a key (KeyError), a
# failed download (DownloadError), a file that is not a pickle/zip (pickle.UnpicklingError).
EXPECTED_CLI_ERRORS: tuple[type[BaseException], ...] = (
    DownloadError,
    ValueError,
    OSError,
    ImportError,
    KeyError,
    pickle.UnpicklingError,
)


def cli_error_message(e: BaseException, join_lines: bool = False) -> str:
    """The line a CLI prints for an expected error: ``error: <message>`` (a ``KeyError`` says which key).

    A message of several lines keeps its first line, or with ``join_lines`` all of its lines joined into one.
    """
    if isinstance(e, KeyError):
        return f"error: missing key {e.args[0]!r}" if e.args else "error: missing key"
    text = str(e).strip() or type(e).__name__
    if not isinstance(e, DownloadError):  # a download error explains where to put the file: keep all of it
        text = " ".join(text.split()) if join_lines else text.splitlines()[0]
    return f"error: {text}"


def run_cli(
    main: Callable[[], object],
    expected: tuple[type[BaseException], ...] = EXPECTED_CLI_ERRORS,
    join_lines: bool = False,
) -> None:
    """Run a script's ``main``; an expected failure prints one line (``error: ...``) and exits with status 1.

    Ctrl-C prints ``interrupted`` and exits 130. With ``LLM_SCRATCH_DEBUG=1`` the error is re-raised instead, with
    its full traceback. Errors outside ``expected`` (bugs) always keep their traceback. ``join_lines``: a message
    of several lines is printed with all of its lines joined into one instead of only its first line.
    """
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        main()
    except expected as e:
        if debug:
            raise
        print(cli_error_message(e, join_lines), file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


# --------------------------------------------------------------------------------------------- files
OUT_ENV = "LLM_SCRATCH_OUT"  # where lessons write; the test suite points it at a temporary folder


def out_root() -> Path:
    """``$LLM_SCRATCH_OUT`` when set, else ``<repo>/out``."""
    return Path(os.environ.get(OUT_ENV) or REPO_ROOT / "out")


def out_dir(*parts: str) -> Path:
    """``out_root()/<parts...>`` (``<repo>/out/...`` by default), created on demand: where lessons write plots, logs
    and checkpoints."""
    path = out_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_torch_save(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write text atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp_name, path)
    return path
