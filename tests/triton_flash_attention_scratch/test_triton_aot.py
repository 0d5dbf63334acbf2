"""Every flash-attention kernel compiles ahead of time for sm_80 (A100) and sm_90 (H100), without a GPU.

``triton.compile`` with a ``GPUTarget`` runs Triton's whole pipeline down to PTX and a cubin (ptxas ships with
the wheel), so a compile error is caught in CI instead of on a learner's first GPU run. The full matrix (4 kernels
x 2 targets x fp16/bf16 x D 64/128 x causal or not = 64 compilations, ~2 s each) takes minutes, so CI compiles a
representative subset: each kernel for each target, with dtype, head dim and causality rotated so that every value
of each appears for every target. The compiled facts are checked against what the architecture must produce.
"""

import pytest

from triton_flash_attention_scratch import triton_flash as tf

SUBSET = [
    {"kernel": "fwd", "arch": 80, "dtype": "float16", "head_dim": 64, "causal": True},
    {"kernel": "dkdv", "arch": 80, "dtype": "bfloat16", "head_dim": 128, "causal": True},
    {"kernel": "dq", "arch": 80, "dtype": "float16", "head_dim": 128, "causal": False},
    {"kernel": "preprocess", "arch": 80, "dtype": "bfloat16", "head_dim": 64},
    {"kernel": "fwd", "arch": 90, "dtype": "bfloat16", "head_dim": 128, "causal": False},
    {"kernel": "dkdv", "arch": 90, "dtype": "float16", "head_dim": 64, "causal": False},
    {"kernel": "dq", "arch": 90, "dtype": "bfloat16", "head_dim": 64, "causal": True},
    {"kernel": "preprocess", "arch": 90, "dtype": "float16", "head_dim": 128},
]
SMEM = {80: 163 * 1024, 90: 227 * 1024}  # max shared memory per block (opt-in), CUDA programming guide


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90():
    facts = tf.compile_ahead_of_time(SUBSET)
    assert len(facts) == len(SUBSET)
    assert {(f["kernel"], f["arch"]) for f in facts} == {(k, a) for k in tf.AOT_KERNELS for a in (80, 90)}
    for f in facts:
        what = f"{f['kernel']} sm_{f['arch']} {f['dtype']} D={f['head_dim']}"
        assert f["cubin_bytes"] > 0, what
        assert 0 < f["shared_bytes"] <= SMEM[f["arch"]], what
        assert f["tma"] == 0, what  # these kernels use pointer loads, which Triton lowers to cp.async, not TMA
        if f["kernel"] == "preprocess":  # no matmul, nothing to pipeline
            assert f["mma_sync"] == f["wgmma"] == f["cp_async"] == 0, what
            continue
        # tensor cores: warp-level mma.sync on Ampere, warpgroup wgmma on Hopper
        if f["arch"] == 80:
            assert f["mma_sync"] > 0 and f["wgmma"] == 0, what
        else:
            assert f["wgmma"] > 0 and f["mma_sync"] == 0, what
        # num_stages >= 2 in every default config: the streamed tiles arrive by asynchronous copies
        assert f["config"]["num_stages"] >= 2 and f["cp_async"] > 0 and f["cp_async_wait"] > 0, what
