"""Malformed input to the flash-attention entry points, as a table: every row ends in one clear error or a correct
result, never a traceback from inside Triton, a segfault or silent garbage.

* ``ERROR_CASES``: inputs the kernels cannot run on. Each must raise the named exception with a message naming
  the problem *before* any kernel launch (a bad launch does not raise: compiled it reads out of bounds, under the
  interpreter it can take the whole process down). A guard makes any launch during these cases a failure.
* ``RESULT_CASES``: awkward but legal inputs (non-contiguous views, stride-0 broadcasts, a storage offset,
  D = 1 and D = 256, odd head counts, a negative scale, NaN/inf values). These launch kernels, so they run in a
  child process: a crash there is a failed test, not a dead test run. Each is compared with ``naive_attention``
  in float64 on the same values; NaN/inf must appear exactly where the reference has them (non-finite values are
  propagated as in ``F.scaled_dot_product_attention``, not checked: that would cost a pass over the inputs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triton_flash_attention_scratch import triton_flash as tf

ROOT = Path(__file__).resolve().parents[2]
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=DEV)


def _qkv(B=1, H=2, H_kv=2, N=8, D=16, dtype=torch.float32):
    return _t(B, H, N, D, dtype=dtype), _t(B, H_kv, N, D, dtype=dtype), _t(B, H_kv, N, D, dtype=dtype)


def _fwd(*qkv, **kw):
    return lambda: tf.attention_forward(*qkv, **kw)


def _fa(*qkv, **kw):
    return lambda: tf.flash_attention(*qkv, **kw)


def _bwd(change: dict, **kw):
    """attention_backward with valid saved tensors except the ones in ``change`` (built lazily, no launch)."""

    def call():
        q, k, v = _qkv()
        args = {"o": torch.empty_like(q), "lse": torch.empty(1, 2, 8), "do": torch.empty_like(q)}
        args.update({name: make(q) for name, make in change.items()})
        return tf.attention_backward(q, k, v, args["o"], args["lse"], args["do"], **kw)

    return call


def _huge_strided(tmp_dir: Path) -> torch.Tensor:
    """A (1, 1, 2, 16) fp16 view whose row stride is 2**31 elements, on a sparse memory-mapped file: 4 GiB of
    address space, no memory touched. Its offsets do not fit the kernels' 32-bit arithmetic."""
    n = 2**31 + 16
    path = tmp_dir / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(2 * n)
    flat = torch.from_file(str(path), shared=True, size=n, dtype=torch.float16)
    return flat.as_strided((1, 1, 2, 16), (2 * 2**31, 2 * 2**31, 2**31, 1))


def _cfg(**c):
    return _fwd(*_qkv(), config=c)


# (id, thunk, exception type, message pattern). Built lazily so collection allocates nothing.
ERROR_CASES = [
    ("float64", lambda: _fwd(*(t.double() for t in _qkv())), TypeError, "unsupported dtype torch.float64"),
    ("int32", lambda: _fwd(*(t.int() for t in _qkv())), TypeError, "unsupported dtype torch.int32"),
    ("bool", lambda: _fwd(*(t > 0 for t in _qkv())), TypeError, "unsupported dtype torch.bool"),
    (
        "mixed-dtypes",
        lambda: _fwd(_t(1, 2, 8, 16), _t(1, 2, 8, 16).half(), _t(1, 2, 8, 16)),
        TypeError,
        "must share one dtype",
    ),
    ("meta-device", lambda: _fwd(*(t.to("meta") for t in _qkv())), ValueError, "cpu|CUDA tensors"),
    ("q-3d", lambda: _fwd(_t(2, 8, 16), *_qkv()[1:]), ValueError, "q must have 4 dims"),
    ("k-5d", lambda: _fwd(_qkv()[0], _t(1, 1, 2, 8, 16), _qkv()[2]), ValueError, "k must have 4 dims"),
    ("q-0d", lambda: _fwd(torch.tensor(1.0), *_qkv()[1:]), ValueError, "q must have 4 dims"),
    ("seq-len-mismatch", lambda: _fwd(_qkv(N=8)[0], *_qkv(N=9)[1:]), ValueError, "does not match q shape"),
    ("batch-mismatch", lambda: _fwd(_qkv(B=2)[0], *_qkv(B=1)[1:]), ValueError, "does not match q shape"),
    ("head-dim-mismatch", lambda: _fwd(_qkv(D=16)[0], *_qkv(D=32)[1:]), ValueError, "does not match q shape"),
    ("k-v-shapes-differ", lambda: _fwd(*_qkv()[:2], _qkv(N=9)[2]), ValueError, "k and v must have the same shape"),
    ("head-dim-512", lambda: _fwd(*_qkv(D=512)), ValueError, "head_dim 512 is not supported"),
    ("N=0", lambda: _fwd(*_qkv(N=0)), ValueError, "empty input"),
    ("B=0", lambda: _fwd(*_qkv(B=0)), ValueError, "empty input"),
    ("D=0", lambda: _fwd(*_qkv(D=0)), ValueError, "empty input"),
    ("H_kv=0", lambda: _fwd(*_qkv(H_kv=0)), ValueError, "empty input"),
    ("gqa-3-of-2", lambda: _fwd(*_qkv(H=3, H_kv=2)), ValueError, "query heads 3 must be a multiple of .* 2"),
    ("gqa-more-kv-heads", lambda: _fwd(*_qkv(H=2, H_kv=4)), ValueError, "query heads 2 must be a multiple of .* 4"),
    (
        "last-dim-strided",
        lambda: _fwd(_t(1, 2, 16, 8).transpose(-1, -2), *_qkv()[1:]),
        ValueError,
        "q must be contiguous in its last dim",
    ),
    ("k-is-a-list", lambda: _fwd(_qkv()[0], [[1.0]], _qkv()[2]), TypeError, "k must be a torch.Tensor, got list"),
    ("q-is-None", lambda: _fa(None, *_qkv()[1:]), TypeError, "q must be a torch.Tensor, got NoneType"),
    ("causal-string", lambda: _fa(*_qkv(), causal="yes"), TypeError, "causal must be True or False"),
    ("causal-None", lambda: _fwd(*_qkv(), causal=None), TypeError, "causal must be True or False"),
    ("sm_scale-string", lambda: _fa(*_qkv(), sm_scale="0.1"), TypeError, "sm_scale must be a number"),
    ("sm_scale-nan", lambda: _fa(*_qkv(), sm_scale=float("nan")), ValueError, "sm_scale must be finite"),
    ("sm_scale-inf", lambda: _fwd(*_qkv(), sm_scale=float("inf")), ValueError, "sm_scale must be finite"),
    ("sm_scale-0", lambda: _fwd(*_qkv(), sm_scale=0.0), ValueError, "non-zero"),
    ("config-no-BLOCK_N", lambda: _cfg(BLOCK_M=32), ValueError, "is missing BLOCK_N"),
    ("config-no-blocks", lambda: _cfg(num_warps=4), ValueError, "is missing BLOCK_M and BLOCK_N"),
    ("config-unknown-key", lambda: _cfg(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16), ValueError, "unknown keys"),
    ("config-not-pow2", lambda: _cfg(BLOCK_M=48, BLOCK_N=16), ValueError, "BLOCK_M=48 must be a power of two"),
    ("config-tile-8", lambda: _cfg(BLOCK_M=32, BLOCK_N=8), ValueError, "BLOCK_N=8 must be a power of two"),
    ("config-warps-3", lambda: _cfg(BLOCK_M=32, BLOCK_N=16, num_warps=3), ValueError, "num_warps=3"),
    ("config-stages-0", lambda: _cfg(BLOCK_M=32, BLOCK_N=16, num_stages=0), ValueError, "num_stages=0"),
    ("config-string-value", lambda: _cfg(BLOCK_M="64", BLOCK_N=16), TypeError, "BLOCK_M must be an int"),
    ("config-not-a-dict", lambda: _fwd(*_qkv(), config=[64, 32]), TypeError, "must be a dict"),
    ("config-causal-split", lambda: _cfg(BLOCK_M=16, BLOCK_N=32), ValueError, "BLOCK_M % BLOCK_N == 0"),
    ("configs-unknown-kernel", lambda: _fa(*_qkv(), configs={"bwd": {}}), ValueError, "keys among"),
    (
        "configs-dq-bad",
        lambda: _fa(*_qkv(), configs={"dq": {"BLOCK_M": 16, "BLOCK_N": 64}}),
        ValueError,
        "dQ config needs BLOCK_M % BLOCK_N == 0",
    ),
    ("bwd-lse-shape", lambda: _bwd({"lse": lambda q: torch.empty(1, 2, 7)}), ValueError, "lse must be"),
    ("bwd-lse-fp16", lambda: _bwd({"lse": lambda q: torch.empty(1, 2, 8).half()}), ValueError, "float32"),
    ("bwd-lse-strided", lambda: _bwd({"lse": lambda q: torch.empty(1, 2, 16)[..., ::2]}), ValueError, "contiguous"),
    ("bwd-do-shape", lambda: _bwd({"do": lambda q: q[..., :8]}), ValueError, "do must match q"),
    ("bwd-o-dtype", lambda: _bwd({"o": lambda q: q.half()}), ValueError, "o must match q"),
    ("bwd-lse-not-tensor", lambda: _bwd({"lse": lambda q: 1.0}), TypeError, "lse must be a torch.Tensor"),
    (
        "bwd-dkdv-config",
        lambda: _bwd({}, dkdv_config={"BLOCK_M": 64, "BLOCK_N": 16}),
        ValueError,
        "BLOCK_N % BLOCK_M == 0",
    ),
    ("bwd-causal-int", lambda: _bwd({}, causal=1), TypeError, "causal must be True or False"),
    ("dkdv_split-0", lambda: _fa(*_qkv(H=4, H_kv=2), dkdv_split=0), ValueError, "divide the GQA group size 2"),
    ("dkdv_split-3-of-4", lambda: _fa(*_qkv(H=4, H_kv=1), dkdv_split=3), ValueError, r"one of \[1, 2, 4\], got 3"),
    ("dkdv_split-bool", lambda: _fa(*_qkv(H=4, H_kv=2), dkdv_split=True), TypeError, "dkdv_split must be an int"),
    ("dkdv_split-float", lambda: _fa(*_qkv(H=4, H_kv=2), dkdv_split=2.0), TypeError, "dkdv_split must be an int"),
    ("bwd-dkdv_split-no-gqa", lambda: _bwd({}, dkdv_split=2), ValueError, "group size 1 .*got 2"),
]
if tf.INTERPRET:
    ERROR_CASES.append(
        ("bf16-interpreter", lambda: _fwd(*_qkv(dtype=torch.bfloat16)), TypeError, "bfloat16 needs a CUDA GPU")
    )


@pytest.fixture
def no_launch(monkeypatch):
    """Any kernel launch during an error case fails the test: validation must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was launched before the input was validated")

    monkeypatch.setattr(tf, "_launch", refuse)
    monkeypatch.setattr(tf, "_attn_bwd_preprocess", None)  # subscripting None fails loudly too


@pytest.mark.parametrize("make,exc,match", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_input_is_one_clear_error_before_any_launch(no_launch, make, exc, match):
    call = make()
    with pytest.raises(exc, match=match) as info:
        call()
    assert "\n" not in str(info.value), "one line"


def test_32_bit_offset_overflow_is_refused(no_launch, tmp_path):
    """A view spanning >= 2**31 elements would wrap the kernels' int32 pointer offsets: refused with the reason."""
    big = _huge_strided(tmp_path)
    small = _t(1, 1, 2, 16, dtype=torch.float16)
    for args, name in (((big, small, small), "q"), ((small, big, big), "k")):
        # the last element sits at offset (2 - 1) * 2**31 + (16 - 1) = 2147483663 >= 2**31
        with pytest.raises(ValueError, match=f"{name} spans 2147483663 elements; the kernels use 32-bit offsets"):
            tf.attention_forward(*args)


# ------------------------------------------------------------------------------------------ legal but awkward
def _case_inputs(name: str):
    """q, k, v, kwargs of one result case (seeded per case, so parent and child agree on nothing but the name)."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))

    def r(*shape):
        return torch.randn(*shape, generator=g).to(DEV)

    q, k, v = r(1, 2, 20, 16), r(1, 2, 20, 16), r(1, 2, 20, 16)
    kw = {"causal": True}
    if name == "q-last-dim-strided":
        q = r(1, 2, 16, 20).transpose(-1, -2)  # stride(-1) = 20: copied by flash_attention
    elif name == "heads-transposed-view":
        q = r(1, 20, 2, 16).transpose(1, 2)  # (B, N, H, D) -> (B, H, N, D)
    elif name == "kv-broadcast-stride-0":
        k, v = r(1, 1, 20, 16).expand(1, 2, 20, 16), r(1, 1, 20, 16).expand(1, 2, 20, 16)
    elif name == "storage-offset":
        q = r(1, 2, 21, 16)[:, :, 1:]
    elif name == "N=1-D=1":
        q, k, v = r(1, 1, 1, 1), r(1, 1, 1, 1), r(1, 1, 1, 1)
    elif name == "D=3":
        q, k, v = r(1, 2, 20, 3), r(1, 2, 20, 3), r(1, 2, 20, 3)
    elif name == "D=256":
        q, k, v = r(1, 1, 8, 256), r(1, 1, 8, 256), r(1, 1, 8, 256)
    elif name == "gqa-6-of-3":
        q, k, v = r(1, 6, 20, 16), r(1, 3, 20, 16), r(1, 3, 20, 16)
    elif name == "mqa-batch-3":
        q, k, v = r(3, 4, 9, 16), r(3, 1, 9, 16), r(3, 1, 9, 16)
    elif name == "negative-scale":
        kw["sm_scale"] = -0.5
    elif name == "int-scale":
        kw = {"causal": False, "sm_scale": 1}
    elif name.startswith(("nan-", "inf-", "neg-inf-")):
        kind, target = name.rsplit("-", 1)
        t = {"q": q, "k": k, "v": v}[target]
        t[0, 0, 5, 3] = {"nan": float("nan"), "inf": float("inf"), "neg-inf": float("-inf")}[kind]
    elif name == "fp16-near-max":
        q, k, v = (t.half() * 4000 for t in (q, k, v))  # |q·k| ~ 1e8: beyond fp16 (6.5e4), fine in fp32 sums
    return q, k, v, kw


RESULT_CASES = [
    "q-last-dim-strided", "heads-transposed-view", "kv-broadcast-stride-0", "storage-offset", "N=1-D=1", "D=3",
    "D=256", "gqa-6-of-3", "mqa-batch-3", "negative-scale", "int-scale", "nan-q", "nan-k", "nan-v", "inf-v",
    "inf-k", "neg-inf-k", "fp16-near-max",
]  # fmt: skip


def _check_result(name: str) -> str:
    """'' if flash_attention matches float64 naive attention on this case, else what is wrong."""
    from tests.numerics import assert_close_scaled, assert_close_to_fp64
    from triton_flash_attention_scratch.attention_torch import naive_attention

    q, k, v, kw = _case_inputs(name)
    out = tf.flash_attention(q, k, v, **kw)
    ref = naive_attention(q.double(), k.double(), v.double(), kw["causal"], kw.get("sm_scale"))
    if out.shape != ref.shape or out.dtype != q.dtype:
        return f"shape/dtype {tuple(out.shape)} {out.dtype}, want {tuple(ref.shape)} {q.dtype}"
    if not torch.equal(out.isnan().cpu(), ref.isnan().cpu()) or not torch.equal(out.isinf().cpu(), ref.isinf().cpu()):
        return "NaN/inf pattern differs from the reference"
    fin = ref.isfinite()
    got, want = out[fin].cpu(), ref[fin].cpu()
    try:
        if q.dtype == torch.float32:
            ref32 = naive_attention(q.float(), k.float(), v.float(), kw["causal"], kw.get("sm_scale"))[fin].cpu()
            assert_close_to_fp64(got, want, ref32, what=name)
        else:
            assert_close_scaled(got.double(), want, ulps=8, dtype=q.dtype, what=name)
    except AssertionError as e:
        return str(e)
    return ""


def run_result_cases(names=RESULT_CASES) -> None:
    """Child-process entry point: one JSON line per case."""
    import warnings

    warnings.simplefilter("ignore")  # NumPy warns about the NaN arithmetic the NaN cases are about
    for name in names:
        try:
            problem = _check_result(name)
        except Exception as e:  # noqa: BLE001 - reported to the parent as this case's failure
            problem = f"{type(e).__name__}: {e}"
        print(json.dumps({"name": name, "problem": problem}), flush=True)


@pytest.fixture(scope="module")
def child_results():
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from tests.triton_flash_attention_scratch.test_triton_flash_bad_inputs import run_result_cases; "
        "run_result_cases()"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row["name"]] = row["problem"]
    return proc.returncode, results, proc.stderr[-2000:]


@pytest.mark.parametrize("name", RESULT_CASES)
def test_awkward_but_legal_input_gives_the_reference_result(child_results, name):
    rc, results, stderr = child_results
    assert name in results, f"the child process died before this case (exit code {rc}):\n{stderr}"
    assert results[name] == "", results[name]
    assert rc == 0, f"child exit code {rc}: {stderr}"
