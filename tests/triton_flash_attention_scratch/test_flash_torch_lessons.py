"""Every lesson 01-13 of chapter 4 (part 1) runs at small settings, and what it shows is checked independently.

The lessons return the tensors they used; the tests rebuild the references from them (float64 where the
reference can run in float64, ``tests/numerics.py``) instead of re-reading the errors the lesson printed.
"""

import math
import re
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from tests.numerics import assert_close_to_fp64


def _grads64(fn, inputs, do):
    """Output and gradients of ``fn`` run in float64 and in float32 on the same values."""
    out = []
    for dt in (torch.float64, torch.float32):
        xs = [t.detach().to(dt).requires_grad_() for t in inputs]
        o = fn(*xs)
        out.append([o.detach(), *torch.autograd.grad(o, xs, do.to(dt))])
    return out


CH = "triton_flash_attention_scratch"


def test_01_naive_attention(load_lesson):
    out = load_lesson(CH, 1).main(seq_len=7, n_embd=16, n_head=4, n_kv_head=2, device="cpu")
    q, k, v = out["q"], out["k"], out["v"]
    ref = lambda dt: F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), is_causal=True)  # noqa: E731
    assert_close_to_fp64(out["out"], ref(torch.float64), ref(torch.float32))


def test_01_bad_head_count(load_lesson):
    with pytest.raises(ValueError, match="divisible by n_head"):
        load_lesson(CH, 1).main(n_embd=30, n_head=4, device="cpu")


def test_02_peak_memory_linear_for_tiled_quadratic_for_naive(load_lesson):
    out = load_lesson(CH, 2).main(seq_lens=(512, 1024), head_dim=64, device="cpu")
    small, large = out["peaks"]
    # doubling N: the tiled peak (O, L and one tile) at most doubles; naive's N² scores quadruple
    assert large["tiled"] / small["tiled"] < 2.5
    assert large["naive"] / small["naive"] > 3.0
    assert large["naive"] >= 1024 * 1024 * 4  # at least one fp32 N × N matrix was alive
    assert large["tiled"] < 1024 * 1024 * 4 / 4  # far below one N × N matrix
    for row in out["traffic"]:
        N = row["N"]
        assert row["naive"] == (4 * N * 64 + 4 * N * N) * 2


def test_03_safe_softmax(load_lesson):
    out = load_lesson(CH, 3).main()
    for case in out.values():
        torch.testing.assert_close(case["safe"].float(), torch.softmax(case["x"].float(), -1), atol=1e-3, rtol=1e-3)
    assert torch.isnan(out["large logits fp32"]["naive"]).all()
    assert torch.isnan(out["fp16 logits > 11.1"]["naive"]).any()


@pytest.mark.parametrize("block_size", [1, 4])
def test_04_online_softmax(load_lesson, block_size):
    out = load_lesson(CH, 4).main(rows=3, length=13, block_size=block_size)
    x = out["x"]
    assert_close_to_fp64(out["p"], torch.softmax(x.double(), -1), torch.softmax(x, -1))
    for t, (m, l) in enumerate(zip(out["ms"], out["ls"])):  # the invariant, recomputed from the prefix
        prefix = x[:, : (t + 1) * block_size]
        assert torch.equal(m, prefix.amax(-1))
        assert_close_to_fp64(l, torch.exp(prefix.double() - m.double()[:, None]).sum(-1),
                             torch.exp(prefix - m[:, None]).sum(-1))  # fmt: skip


def test_05_block_matmul(load_lesson):
    out = load_lesson(CH, 5).main(m=33, k=17, n=9, block_m=8, block_n=4, block_k=5)
    a, b = out["a"], out["b"]
    assert_close_to_fp64(out["c"], a.double() @ b.double(), a @ b)
    assert out["tiles"] == (5, 3, 4)  # ceil(33/8), ceil(9/4), ceil(17/5)
    a3, b3, c3 = out["batched"]
    assert c3.shape == (3, 4, 17, 5)
    assert_close_to_fp64(c3, a3.double() @ b3.double(), a3 @ b3)


def _sdpa_and_lse(q, k, v, causal, dt):
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    N, D = q.shape[-2:]
    s = q @ k.transpose(-2, -1) / D**0.5
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal), torch.logsumexp(s, -1)


def test_06_flash_forward(load_lesson):
    out = load_lesson(CH, 6).main(batch=1, n_head=2, n_kv_head=1, head_dim=16, seq_lens=(1, 17, 100), device="cpu")
    assert len(out["rows"]) == 6
    for row in out["rows"]:
        t = row["tensors"]
        q, k, v = t["q"], t["k"].repeat_interleave(2, 1), t["v"].repeat_interleave(2, 1)  # 2 heads over 1 K/V head
        c = row["causal"]
        r64, r32 = (_sdpa_and_lse(q, k, v, c, dt) for dt in (torch.float64, torch.float32))
        assert_close_to_fp64(t["o_simple"], r64[0], r32[0], what="simple")
        assert_close_to_fp64(t["o"], r64[0], r32[0], what="FA2")
        assert_close_to_fp64(t["lse"], r64[1], r32[1], what="L")
        if row["causal"] and row["N"] == 100:  # blocks 64 x 32: 2 query blocks see 2 and 4 of 4 key blocks
            assert (row["tiles"], row["tiles_total"]) == (6, 8)


def test_06_worked_trace_equals_plain_softmax_at_every_step(load_lesson):
    """By hand: after each key block, m, l and õ/l equal the plain softmax statistics of the prefix,
    and the rescale factor is e^(m_before - m_after)."""
    tr = load_lesson(CH, 6).worked_trace(n_keys=10, block_k=4, head_dim=2)
    q, k, v, steps = tr["q"].double(), tr["k"].double(), tr["v"].double(), tr["steps"]
    assert [st["keys"] for st in steps] == [(0, 4), (4, 8), (8, 10)]  # three blocks, the last one ragged
    assert any(st["m_after"] > st["m_before"] > float("-inf") for st in steps), "the max must move at least once"
    for j, st in enumerate(steps):
        hi = st["keys"][1]
        s = k[:hi] @ q / 2**0.5
        assert st["m_after"].item() == pytest.approx(s.max().item(), abs=1e-6)
        assert st["l_after"].item() == pytest.approx(torch.exp(s - s.max()).sum().item(), rel=1e-6)
        torch.testing.assert_close((st["o_after"] / st["l_after"]).double(), torch.softmax(s, 0) @ v[:hi],
                                   atol=1e-6, rtol=1e-6)  # fmt: skip
        assert st["alpha"].item() == pytest.approx(math.exp(st["m_before"].item() - st["m_after"].item()))
        if j:  # the state carried from the previous block
            assert torch.equal(st["o_before"], steps[j - 1]["o_after"])


def test_07_cuda_simulation(load_lesson):
    mod = load_lesson(CH, 7)
    a, b = torch.randn(1000), torch.randn(1000)
    sim = mod.simulate_vector_add(a, b, 256)
    torch.testing.assert_close(sim["c"], a + b)
    assert sim["blocks"] == 4 and sim["threads_idle"] == 24
    assert (sim["writes_per_element"] == 1).all()
    wide = torch.randn(37, 50)[:, :45]  # padded rows: stride(0) = 50
    mb = torch.randn(37, 45)
    msim = mod.simulate_matrix_add(wide.contiguous(), mb, (16, 8))
    torch.testing.assert_close(msim["c"], wide + mb)
    assert msim["grid"] == (3, 5) and msim["threads_idle"] == 3 * 16 * 5 * 8 - 37 * 45
    with pytest.raises(ValueError, match="threads_per_block"):
        mod.simulate_vector_add(a, b, 2048)


def test_07_lesson_runs(load_lesson):
    out = load_lesson(CH, 7).main(n=300, threads=128, rows=20, cols=33, device="cpu")
    assert out["vector_ok"] and out["matrix_ok"]


def test_07_ptx_index_math_matches_the_simulation(load_lesson, tmp_path):
    """The compiled PTX (nvcc is part of the CI image): every line annotated; its integer arithmetic, executed
    for every thread, stores exactly the elements 0..n-1 at byte 4·i; a guard made off by one is caught."""
    mod = load_lesson(CH, 7)
    ptx = mod.nvcc_compile(mod.SOURCES["vector_add"], tmp_path / "v.ptx", ptx=True)
    body = mod.kernel_ptx_body(ptx.read_text())
    notes = mod.annotate_ptx(body)
    assert all(note for _, note in notes), [line for line, note in notes if not note]
    assert any(line.startswith("setp.") for line in body) and any(line.startswith("@") for line in body)
    for n, t in mod.AWKWARD_SIZES:
        assert mod.check_ptx_against_simulation(body, n, t), (n, t)
        ran = mod.run_ptx_index_math(body, n, t)
        assert int(ran["stores"].sum()) == n and ran["blocks"] == -(-n // t)  # by hand: ceil(n / t) blocks
    wrong_guard = [line.replace("setp.ge.s32", "setp.gt.s32") for line in body]  # i > n: one thread too many
    assert not mod.check_ptx_against_simulation(wrong_guard, 257, 256)
    wrong_index = [re.sub(r"^(mul\.wide\.s32 .*), 4$", r"\1, 2", line) for line in body]  # 2-byte stride
    assert wrong_index != body and not mod.check_ptx_against_simulation(wrong_index, 1000, 256)


@pytest.mark.skipif(
    shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed: cannot compile the .cu files"
)
@pytest.mark.parametrize("name", ["vector_add", "matrix_add"])
def test_07_cu_files_compile_with_nvcc(load_lesson, tmp_path, name):
    """Host and device code (main() included) compile to an object file; no GPU needed."""
    mod = load_lesson(CH, 7)
    obj = mod.nvcc_compile(mod.SOURCES[name], tmp_path / f"{name}.o")
    assert obj.stat().st_size > 0
    listing = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True)
    if listing.returncode == 0:  # nm is optional; when present the kernel's host stub must be in the object
        assert f"{name}_kernel" in listing.stdout


@pytest.mark.gpu
def test_07_cuda_extension_on_gpu(load_lesson):
    out = load_lesson(CH, 7).main(n=1000, device="cuda")
    gpu = out["gpu"]
    assert gpu is not None
    assert gpu["vector_error"] == 0 and gpu["matrix_error"] == 0 and gpu["strided_matrix_error"] == 0


def test_08_tensor_layouts(load_lesson):
    mod = load_lesson(CH, 8)
    out = mod.main(batch=2, seq_len=3, n_head=2, head_dim=4)
    for row in out["rows"]:
        assert row["strides_match_indexing"] and row["as_strided_matches"], row["name"]
    T, H, D = 3, 2, 4
    assert out["q"].stride() == (T * H * D, D, H * D, 1)
    assert out["view_error"] is not None
    # element_offset vs indexing, on a sliced, transposed view
    base = torch.arange(5 * 6 * 7.0).view(5, 6, 7)
    t = base[1:, ::2].transpose(0, 2)
    flat = base.view(-1)
    for idx in [(0, 0, 0), (6, 2, 3), (3, 1, 2)]:
        assert flat[mod.element_offset(idx, t.stride(), t.storage_offset())] == t[idx]
    torch.testing.assert_close(torch.as_strided(flat, t.shape, t.stride(), t.storage_offset()), t)
    with pytest.raises(ValueError, match="coordinates"):
        mod.element_offset((1, 2), (3, 4, 5))


def test_09_logsumexp(load_lesson):
    out = load_lesson(CH, 9).main(seq_len=50, head_dim=8, block=16)
    big = out["[1000, 999, 998]"]
    assert big["naive"] == float("inf")
    expected = 1000 + math.log(1 + math.exp(-1) + math.exp(-2))  # by hand: factor out e^1000
    assert big["safe"] == pytest.approx(expected, rel=1e-6) and big["online"] == pytest.approx(expected, rel=1e-6)
    small = out["[-1000, -1001, -1002]"]
    assert small["naive"] == float("-inf") and small["safe"] == pytest.approx(
        -1000 + math.log(1 + math.exp(-1) + math.exp(-2))
    )
    # the lesson's claims, recomputed here: dLSE/dx = softmax(x); a tile of P rebuilt from L alone
    from triton_flash_attention_scratch.attention_torch import flash_attention_forward, logsumexp

    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    logsumexp(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.softmax(x.detach(), -1), rtol=1e-12, atol=1e-12)
    q, k, v = (torch.randn(1, 1, 50, 8, dtype=torch.float64) for _ in range(3))
    _, lse = flash_attention_forward(q, k, v, causal=True, block_q=16, block_k=16)
    s_ = (q @ k.transpose(-2, -1) / 8**0.5).masked_fill(torch.ones(50, 50, dtype=torch.bool).triu(1), float("-inf"))
    tile = torch.exp(s_[..., 16:32, :16] - lse[..., 16:32, None])  # a tile below the diagonal, from L alone
    torch.testing.assert_close(tile, torch.softmax(s_, -1)[..., 16:32, :16], rtol=1e-12, atol=1e-12)


def test_10_jacobians(load_lesson):
    mod = load_lesson(CH, 10)
    out = mod.main(n=4, m=3)
    t = 1.3
    exact = 3 * t**2 * math.sin(t) + t**3 * math.cos(t)  # d/dt t³ sin t, by hand
    assert out["scalar_grad"] == pytest.approx(exact, rel=1e-12)
    assert out["scalar_fd"] == pytest.approx(exact, rel=1e-6)
    # the lesson's hand-written Jacobian and VJP of y = tanh(Wx + b) against autograd, on inputs of the test's own
    x, w, b = (
        torch.randn(4, dtype=torch.float64),
        torch.randn(3, 4, dtype=torch.float64),
        torch.randn(3, dtype=torch.float64),
    )
    j = jacobian(lambda xx: torch.tanh(w @ xx + b), x)
    torch.testing.assert_close(mod.layer_jacobian(x, w, b), j, rtol=1e-12, atol=1e-12)
    g = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(mod.layer_vjp(x, w, b, g), j.T @ g, rtol=1e-12, atol=1e-12)


def test_11_matmul_jacobian(load_lesson):
    out = load_lesson(CH, 11).main(m=3, k=4, n=2)
    a, b, g = (out[x].clone().requires_grad_(x != "g") for x in ("a", "b", "g"))
    (a @ b).backward(g)
    torch.testing.assert_close(out["da"], a.grad)
    torch.testing.assert_close(out["db"], b.grad)
    for key in ("autograd_error", "kron_error", "contract_error", "attention_error"):
        assert out[key] < 1e-12, key


def test_12_softmax_jacobian(load_lesson):
    out = load_lesson(CH, 12).main(n=6)
    p = out["p"]
    torch.testing.assert_close(out["jacobian"], torch.diag(p) - p[:, None] * p[None, :])
    for key in ("jacobian_error", "vjp_error", "rowwise_error", "identity_error"):
        assert out[key] < 1e-12, key


def test_13_flash_backward(load_lesson):
    from triton_flash_attention_scratch.attention_torch import naive_attention

    out = load_lesson(CH, 13).main(n_head=2, n_kv_head=1, head_dim=16, seq_lens=(17, 100), device="cpu")
    assert out["gradcheck"] is True
    for row in out["rows"]:
        t = row["tensors"]

        def attn(q, k, v, causal=row["causal"]):
            return naive_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), causal)

        r64, r32 = _grads64(attn, (t["q"], t["k"], t["v"]), t["do"])
        for impl in ("hand", "flash", "function"):
            for name, got, a, b in zip(("dQ", "dK", "dV"), t[impl], r64[1:], r32[1:]):
                assert_close_to_fp64(got, a, b, what=f"{impl} {name} N={row['N']} causal={row['causal']}")
    big = [r for r in out["rows"] if r["N"] == 100]
    assert all(r["saved_flash"] < r["saved_naive"] / 5 for r in big)
