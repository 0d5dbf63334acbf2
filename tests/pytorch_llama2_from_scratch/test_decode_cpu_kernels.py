"""The small-M CPU decode kernel (cpu_kernels.py / .cpp) against float64 matmuls, in eager and compiled code.

Both layouts (rows for fp32/int8 weights, panels for fp32/int8), every row count 1..8 (each is its own template
instance) plus chunked larger counts, shapes whose K is not a multiple of the vector width and whose N is not a
multiple of the 16-wide panels; PanelLinear inside a model; the fallback without the kernel; bad input.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pytorch_llama2_from_scratch import cpu_kernels
from pytorch_llama2_from_scratch.fast_decode import FastDecoder
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer
from pytorch_llama2_from_scratch.speculative import speculative_generate, truncated_draft
from tests.numerics import assert_close_to_fp64, to_double

ROOT = Path(__file__).resolve().parents[2]


def test_the_kernel_builds_here():
    # CI and the documented setup have a C++ compiler and ninja (requirements.txt): the kernel must be there
    assert cpu_kernels.available(), cpu_kernels.unavailable_reason()


def _operands(m, n, k, wdtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    if wdtype == torch.int8:
        w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        s = torch.rand(n, generator=g) * 0.02 + 1e-3
    else:
        w, s = torch.randn(n, k, generator=g), None
    return x, w, s


def _refs(x, w, s):
    """float64 and float32 references: (x @ W^T) * s with the same int8/fp32 values."""
    w64 = w.double() if s is None else w.double() * s.double()[:, None]
    w32 = w.float() if s is None else w.float() * s[:, None]
    return x.double() @ w64.T, x @ w32.T


@pytest.mark.parity
@pytest.mark.parametrize("layout", ["rows", "panels"])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.int8], ids=["fp32", "int8"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 11, 19])
def test_small_m_linear_equals_float64_matmul(layout, wdtype, m):
    n, k = 37, 83  # N not a multiple of 16 (panel padding), K not a multiple of 16 or 64 (vector tails)
    x, w, s = _operands(m, n, k, wdtype, seed=m)
    if layout == "rows":
        y = cpu_kernels.linear(x, w, s)
    else:
        y = cpu_kernels.linear_panels(x, cpu_kernels.pack_panels(w), n, s)
    assert y.shape == (m, n) and y.dtype == torch.float32
    ref64, ref32 = _refs(x, w, s)
    assert_close_to_fp64(y, ref64, ref32, what=f"{layout} {wdtype} M={m}")


@pytest.mark.parity
def test_model_shapes_and_leading_dims_and_bias():
    g = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(768, 256, bias=True)
    x = torch.randn(1, 7, 768, generator=g)  # (B, T, D): leading dims are flattened and restored
    y = cpu_kernels.linear(x, lin.weight.detach(), bias=lin.bias.detach())
    yp = cpu_kernels.linear_panels(x, cpu_kernels.pack_panels(lin.weight), 256, bias=lin.bias.detach())
    w64, b64 = lin.weight.double(), lin.bias.double()
    ref64 = x.double() @ w64.T + b64
    ref32 = F.linear(x, lin.weight, lin.bias)
    assert y.shape == yp.shape == (1, 7, 256)
    assert_close_to_fp64(y.detach(), ref64.detach(), ref32.detach(), what="rows with bias")
    assert_close_to_fp64(yp.detach(), ref64.detach(), ref32.detach(), what="panels with bias")


def test_pack_panels_layout():
    w = torch.arange(20 * 3, dtype=torch.float32).view(20, 3)
    wp = cpu_kernels.pack_panels(w)
    assert wp.shape == (2, 3, 16)
    for o in range(32):
        for k in range(3):
            expect = w[o, k] if o < 20 else 0.0  # zero rows pad N up to a multiple of 16
            assert wp[o // 16, k, o % 16] == expect


def test_compiled_calls_the_kernel_and_matches_eager():
    x, w, _ = _operands(4, 40, 64, torch.float32, seed=5)
    wp = cpu_kernels.pack_panels(w)

    def f(x):
        return torch.relu(cpu_kernels.linear_panels(x, wp, 40)) + cpu_kernels.linear(x, w)

    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    assert torch.allclose(compiled(x), f(x), rtol=0, atol=1e-5 * float(f(x).abs().max()))


def _tiny(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelArgs.preset("tiny", max_seq_len=64, max_batch_size=1)).eval()


def test_panel_linear_switches_in_place_and_keeps_outputs():
    model = _tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[3, 9, 27, 5, 7]])
    with torch.inference_mode():
        ref = model(ids, use_cache=False)
        ref64 = to_double(model)(ids, use_cache=False).double()  # (the forward returns fp32 logits: one rounding)
        n = cpu_kernels.use_panel_kernel_(model)
        assert n == 2 * 7 + 1 and isinstance(model.layers[0].attention.wq, cpu_kernels.PanelLinear)
        assert model.state_dict().keys() == state.keys()  # the panels are not in the state_dict
        out = model(ids, use_cache=False)  # 5 rows: the panel kernel
        assert_close_to_fp64(out, ref64, ref, what="PanelLinear model")
        assert cpu_kernels.use_panel_kernel_(model, enable=False) == n
        assert type(model.layers[0].attention.wq) is torch.nn.Linear and not hasattr(model.output, "panel_weight")
        assert torch.equal(model(ids, use_cache=False), ref)


def test_panel_linear_one_row_goes_through_the_kernel():
    """A decode step's single row uses the panels too (they stream faster than MKL's GEMV on some CPUs): equal to
    a float64 product, and it really reads the panels (zeroed panels give zeros, the weight is untouched)."""
    torch.manual_seed(4)
    lin = torch.nn.Linear(96, 40, bias=True)
    x = torch.randn(1, 1, 96)
    ref64 = x.double() @ lin.weight.double().T + lin.bias.double()
    with torch.inference_mode():
        ref32 = lin(x)
        assert cpu_kernels.use_panel_kernel_(lin) == 1
        assert_close_to_fp64(lin(x), ref64, ref32, what="PanelLinear, one row")
        lin.panel_weight.zero_()
        assert torch.equal(lin(x), lin.bias.expand(1, 1, 40)) and lin.weight.abs().sum() > 0
        assert torch.equal(lin(torch.randn(16, 96)), lin.bias.expand(16, 40))  # 16 rows: two chunks of panels
        assert not torch.equal(lin(torch.randn(17, 96))[:, :1], lin.bias[:1].expand(17, 1))  # 17 rows: F.linear


def test_model_gemv_probe_takes_the_faster_gemv():
    from pytorch_llama2_from_scratch.fast_decode import model_gemv_probe

    model = _tiny()
    probe = model_gemv_probe(model, repeats=2)
    bw = probe()
    assert set(probe.last) == {"F.linear", "panel kernel"} and bw == max(probe.last.values()) > 0
    cpu_kernels.use_panel_kernel_(model)  # the modules' own panels are used, not a new copy
    probe = model_gemv_probe(model, repeats=2)
    probe()
    assert set(probe.last) == {"F.linear", "panel kernel"}
    torch_only = model_gemv_probe(model, repeats=2, kernels="torch")
    torch_only()
    assert set(torch_only.last) == {"F.linear"}
    with pytest.raises(ValueError, match="kernels must be 'best' or 'torch'"):
        model_gemv_probe(model, kernels="mkl")


def test_speculative_greedy_with_panel_verification_equals_plain_greedy():
    target = _tiny(1)
    with torch.no_grad():
        target.output.weight.mul_(20)  # peaked distributions: a 1-layer early exit agrees often
    draft = truncated_draft(target, 1)
    cpu_kernels.use_panel_kernel_(target)  # the verification forward (k+1 rows) goes through the kernel
    plain = FastDecoder(target, max_seq_len=64)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        prompt = torch.randint(0, target.args.vocab_size, (5,), generator=g).tolist()
        for k in (3, 7):
            out, stats = speculative_generate(target, draft, prompt, 24, k=k)
            assert out == plain.generate(prompt, 24)
            assert stats.target_forwards < 24


def test_bad_input_gives_one_clear_line():
    x, w, s = _operands(2, 16, 32, torch.int8)
    with pytest.raises(ValueError, match="needs float32 x"):
        cpu_kernels.linear(x.double(), w, s)
    with pytest.raises(ValueError, match="does not match w"):
        cpu_kernels.linear(x[:, :31], w, s)
    with pytest.raises(ValueError, match="scale must be float32 of shape"):
        cpu_kernels.linear(x, w, s[:3])
    with pytest.raises(ValueError, match="needs a 2-D weight"):
        cpu_kernels.pack_panels(torch.zeros(3))
    with pytest.raises(RuntimeError, match="x must have 1..8 rows"):  # the operator itself checks too
        torch.ops.llm_scratch.small_m_linear(torch.zeros(9, 32), w, s)
    with pytest.raises(RuntimeError, match="n does not match the panels"):
        torch.ops.llm_scratch.small_m_linear_panels(x, cpu_kernels.pack_panels(w), 40, None)


def test_without_the_kernel_everything_falls_back():
    code = (
        "import torch\n"
        "from pytorch_llama2_from_scratch import cpu_kernels\n"
        "from pytorch_llama2_from_scratch.model import ModelArgs, Transformer\n"
        "from pytorch_llama2_from_scratch.quantize import quantize_int8_\n"
        "m = Transformer(ModelArgs.preset('tiny', max_seq_len=16, max_batch_size=1)).eval()\n"
        "assert not cpu_kernels.available() and 'LLM_SCRATCH_NO_CPU_KERNELS' in cpu_kernels.unavailable_reason()\n"
        "assert cpu_kernels.use_panel_kernel_(m) == 0\n"
        "quantize_int8_(m)\n"
        "print(m.output.kernel, m(torch.tensor([[1, 2, 3]]), use_cache=False).shape)\n"
    )
    env = dict(os.environ, LLM_SCRATCH_NO_CPU_KERNELS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["int8pack", "torch.Size([1,", "3,", "256])"]
