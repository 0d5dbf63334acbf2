"""Every flash-attention kernel compiles ahead of time for sm_80 (A100) and sm_90 (H100), without a GPU.

``triton.compile`` with a ``GPUTarget`` runs Triton's whole pipeline down to PTX and a cubin (ptxas ships with
the wheel), so a compile error is caught in CI instead of on a learner's first GPU run. The full matrix (4 kernels
x 2 targets x fp16/bf16 x D 64/128 x causal or not = 64 compilations, ~2 s each) takes minutes, so CI compiles a
representative subset: each kernel for each target, with dtype, head dim and causality rotated so that every value
of each appears for every target. The compiled facts are checked against what the architecture must produce.

Register use comes from ptxas' own report (``ptxas -v``, which Triton runs to build the cubin): the default configs
must not spill registers to local memory, and a config known to spill must be reported as spilling.
"""

import re

import pytest
import triton

from triton_flash_attention_scratch import triton_flash as tf

SUBSET = [
    {"kernel": "fwd", "arch": 80, "dtype": "float16", "head_dim": 64, "causal": True},
    {"kernel": "dkdv", "arch": 80, "dtype": "bfloat16", "head_dim": 128, "causal": True, "even_m": False},
    {"kernel": "dq", "arch": 80, "dtype": "float16", "head_dim": 128, "causal": False,
     "sizes": {"H": 32, "H_KV": 1, "N_CTX": 1000}},  # one key/value head: Triton compiles H_KV as the constant 1
    {"kernel": "preprocess", "arch": 80, "dtype": "bfloat16", "head_dim": 64},
    {"kernel": "fwd", "arch": 90, "dtype": "bfloat16", "head_dim": 128, "causal": False},
    {"kernel": "dkdv", "arch": 90, "dtype": "float16", "head_dim": 64, "causal": False},
    {"kernel": "dq", "arch": 90, "dtype": "bfloat16", "head_dim": 64, "causal": True,
     "sizes": {"H": 32, "H_KV": 32, "N_CTX": 4096}},  # lesson 21's N = 4096 row: every size a multiple of 16
    {"kernel": "preprocess", "arch": 90, "dtype": "float16", "head_dim": 128},
    {"kernel": "dkdv", "arch": 90, "dtype": "bfloat16", "head_dim": 128, "causal": True, "kv_split": 4,
     "sizes": {"H": 32, "H_KV": 8, "N_CTX": 4096}},  # Llama-3-8B's heads, the GQA group shared by 4 programs
]  # fmt: skip
SMEM = {80: 163 * 1024, 90: 227 * 1024}  # max shared memory per block (opt-in), CUDA programming guide


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90():
    facts = tf.compile_ahead_of_time(SUBSET)
    assert len(facts) == len(SUBSET)
    assert {(f["kernel"], f["arch"]) for f in facts} == {(k, a) for k in tf.AOT_KERNELS for a in (80, 90)}
    for job, f in zip(SUBSET, facts):
        what = f"{f['kernel']} sm_{f['arch']} {f['dtype']} D={f['head_dim']}"
        assert f["sizes"] == job.get("sizes") and f["kv_split"] == job.get("kv_split", 1), what
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


@pytest.mark.parametrize(
    "sizes, msg",
    [
        ({"H": 32, "N_CTX": 4096}, "exactly the keys"),
        ({"H": 32, "H_KV": 0, "N_CTX": 4096}, "sizes['H_KV'] must be a positive int"),
        ({"H": 32, "H_KV": 8, "N_CTX": 40.0}, "sizes['N_CTX'] must be a positive int"),
        ({"H": 12, "H_KV": 8, "N_CTX": 64}, "H=12 is not a multiple of H_KV=8"),
        ([32, 32, 4096], "sizes must be None or a dict"),
    ],
)
def test_bad_sizes_get_one_clear_line(sizes, msg):
    with pytest.raises(ValueError, match=re.escape(msg)) as e:
        tf.compile_ahead_of_time([{"kernel": "fwd", "arch": 90, "sizes": sizes}])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kv_split", [0, 2.0, True, "4"])
def test_bad_kv_split_gets_one_clear_line(kv_split):
    with pytest.raises(ValueError, match=re.escape(f"kv_split must be a positive int, got {kv_split!r}")) as e:
        tf.compile_ahead_of_time([{"kernel": "dkdv", "arch": 90, "kv_split": kv_split}])
    assert "\n" not in str(e.value)


# What ptxas -v prints for one kernel (the dK/dV kernel with 4 warps and bounds masks at D = 128 for sm_90a,
# triton 3.9's ptxas).
PTXAS_LOG = """ptxas-blackwell info    : 11 bytes gmem
ptxas-blackwell info    : Compiling entry function '_attn_bwd_dkdv' for 'sm_90a'
ptxas-blackwell info    : Function properties for _attn_bwd_dkdv
    208 bytes stack frame, 208 bytes spill stores, 220 bytes spill loads
ptxas-blackwell info    : Used 255 registers, used 1 barriers, 208 bytes cumulative stack size
ptxas-blackwell info    : Compile time = 302.151 ms
"""


def test_ptxas_log_is_parsed():
    assert tf.parse_ptxas_log(PTXAS_LOG) == {"registers": 255, "spill_stores": 208, "spill_loads": 220}
    no_spill = (
        "ptxas info : Function properties for k\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill "
        "loads\nptxas info    : Used 96 registers, used 1 barriers, 13312 bytes smem, 424 bytes cmem[0]\n"
    )
    assert tf.parse_ptxas_log(no_spill) == {"registers": 96, "spill_stores": 0, "spill_loads": 0}
    assert tf.parse_ptxas_log("") == {"registers": None, "spill_stores": None, "spill_loads": None}


# The defaults at both head dims the benchmarks use, every dtype and causality for each target, rotated (as SUBSET)
# to keep the compile count down; all 64 cases are summed up in NOTES.md ("Registers").
NO_SPILL = [
    {"kernel": k, "arch": a, "head_dim": d, "dtype": dt, "causal": c}
    for a in (80, 90)
    for d, dt, c in ((64, "bfloat16", True), (128, "float16", True), (128, "bfloat16", False))
    for k in ("fwd", "dkdv", "dq")
] + [{"kernel": "dkdv", "arch": a, "head_dim": 128, "dtype": "float16", "causal": True, "even_m": False}
     for a in (80, 90)]  # fmt: skip
SPILLS = {"kernel": "dkdv", "arch": 90, "head_dim": 128, "dtype": "float16", "causal": True,
          "config": {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}}  # fmt: skip


@pytest.mark.slow
def test_default_configs_do_not_spill_registers():
    if not triton.__version__.startswith("3.9."):
        pytest.skip(f"spill counts depend on the ptxas shipped with Triton; the table was made with 3.9, this is "
                    f"{triton.__version__}")  # fmt: skip
    facts = tf.compile_ahead_of_time([*NO_SPILL, SPILLS])
    for f in facts[:-1]:
        what = f"{f['kernel']} sm_{f['arch']} {f['dtype']} D={f['head_dim']} causal={f['causal']} {f['config']}"
        assert f["config"] == tf.GPU_DEFAULT_CONFIGS[f["kernel"]], what
        assert 0 < f["registers"] <= 255, what
        assert f["spill_stores"] == 0 and f["spill_loads"] == 0, what
    # whole query blocks only (N % BLOCK_M == 0): the dK/dV variant without bounds masks is the smaller kernel
    for arch in (80, 90):
        even, uneven = (
            next(f for f in facts if (f["kernel"], f["arch"], f["head_dim"], f["dtype"], f["causal"], f["even_m"])
                 == ("dkdv", arch, 128, "float16", True, e))
            for e in (True, False)
        )  # fmt: skip
        assert even["cubin_bytes"] < uneven["cubin_bytes"] and even["registers"] <= uneven["registers"], arch
    # the check can fail: the same dK/dV tiles with 4 warps spill at D = 128 on sm_90
    bad = facts[-1]
    assert bad["registers"] == 255 and bad["spill_stores"] > 0 and bad["spill_loads"] > 0, bad
