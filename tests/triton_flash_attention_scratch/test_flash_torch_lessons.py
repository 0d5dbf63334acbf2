"""Every lesson 01-13 of chapter 4 (part 1) runs at small settings, and what it shows is checked independently."""

import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

CH = "triton_flash_attention_scratch"


def test_01_naive_attention(load_lesson):
    out = load_lesson(CH, 1).main(seq_len=7, n_embd=16, n_head=4, n_kv_head=2, device="cpu")
    q, k, v = out["q"], out["k"], out["v"]
    torch.testing.assert_close(out["out"], F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert max(out["errors"].values()) < 1e-5


def test_01_bad_head_count(load_lesson):
    with pytest.raises(ValueError, match="divisible by n_head"):
        load_lesson(CH, 1).main(n_embd=30, n_head=4, device="cpu")


def test_02_peak_memory_linear_for_tiled_quadratic_for_naive(load_lesson):
    out = load_lesson(CH, 2).main(seq_lens=(512, 1024), head_dim=64, device="cpu")
    small, large = out["peaks"]
    assert small["naive"] > 0 and small["tiled"] > 0
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
    torch.testing.assert_close(out["p"], torch.softmax(out["x"], -1))
    assert out["invariant_violation"] < 1e-5
    torch.testing.assert_close(out["ms"][-1], out["x"].amax(-1))


def test_05_block_matmul(load_lesson):
    out = load_lesson(CH, 5).main(m=33, k=17, n=9, block_m=8, block_n=4, block_k=5)
    torch.testing.assert_close(out["c"], out["a"] @ out["b"], atol=1e-5, rtol=1e-5)
    assert out["tiles"] == (5, 3, 4)
    assert out["max_error_batched"] < 1e-5


def test_06_flash_forward(load_lesson):
    out = load_lesson(CH, 6).main(batch=1, n_head=2, n_kv_head=1, head_dim=16, seq_lens=(1, 17, 100), device="cpu")
    assert len(out["rows"]) == 6
    for row in out["rows"]:
        assert row["simple_error"] < 1e-5 and row["fa2_error"] < 1e-5 and row["lse_error"] < 1e-5
        if row["causal"] and row["N"] == 100:  # blocks 64 x 32: 2 query blocks see 2 and 4 of 4 key blocks
            assert (row["tiles"], row["tiles_total"]) == (6, 8)


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
    if shutil.which("nvcc") is not None:  # without a GPU the lesson compiles the kernel to PTX and shows it
        text = out["ptx"].read_text()
        assert "vector_add_kernel" in text and "%ctaid.x" in text and "%tid.x" in text


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
    assert gpu["vector_add_ms"] > 0


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
    expected = torch.logsumexp(torch.tensor([1000.0, 999, 998]), 0).item()
    assert big["safe"] == pytest.approx(expected) and big["online"] == pytest.approx(expected)
    assert out["grad_is_softmax_error"] < 1e-6 and out["tile_error"] < 1e-6 and out["lse_error"] < 1e-5


def test_10_jacobians(load_lesson):
    out = load_lesson(CH, 10).main(n=4, m=3)
    assert out["scalar_grad"] == pytest.approx(out["scalar_exact"], rel=1e-12)
    assert out["scalar_fd"] == pytest.approx(out["scalar_exact"], rel=1e-6)
    for key in ("jacobian_error", "vjp_error", "vjp_hand_error", "rows_error", "chain_error"):
        assert out[key] < 1e-12, key


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
    out = load_lesson(CH, 13).main(n_head=2, n_kv_head=1, head_dim=16, seq_lens=(17, 100), device="cpu")
    assert out["gradcheck"] is True
    for row in out["rows"]:
        assert row["hand_error"] < 1e-4 and row["flash_error"] < 1e-4 and row["function_error"] < 1e-4
    big = [r for r in out["rows"] if r["N"] == 100]
    assert all(r["saved_flash"] < r["saved_naive"] / 5 for r in big)
