"""Step 18 — ``FlashAttentionFunction``: the kernels as one autograd op, input validation, grouped-query attention.

What this step adds:

* ``FlashAttentionFunction(torch.autograd.Function)`` — ``forward`` runs the forward kernel and saves Q, K, V, O
  and L (never P); ``backward`` runs the three backward kernels. ``flash_attention(q, k, v, causal)`` is then
  used like any PyTorch op: ``loss.backward()`` reaches q, k, v.
* **validation before any launch** — a kernel given a wrong shape does not raise: compiled it reads out of bounds,
  under the interpreter it can kill the process. ``validate_attention_inputs`` checks device, dtype, shapes,
  head dim and strides and raises an error naming the problem. This lesson feeds it bad inputs and prints them.
* **grouped-query attention (GQA)** (beyond the lecture; used by Llama 2 70B, Mistral): H query heads share
  H_kv < H key/value heads; query head h reads K/V head h // (H / H_kv). The forward and dQ kernels just index
  the shared head; the dK/dV program of a K/V head loops over the H / H_kv query heads of its group and sums
  their contributions, so no K/V copies and no atomics. H_kv = 1 is multi-query attention.
* **splitting the group in the backward** — that loop makes the dK/dV grid ``(N / BLOCK_N, B · H_kv)``: few
  programs, each with ``H / H_kv`` heads of serial work, when B · H_kv is small. ``flash_attention(...,
  dkdv_split=s)`` shares a group among s programs (s = H / H_kv: one per query head, as FlashAttention-2 does);
  each writes an fp32 partial dK, dV and one ``sum`` adds the s partials. Counted in query-block iterations
  (one BLOCK_M × BLOCK_N tile of the backward's matmuls), the kernel cannot finish sooner than

      bound = max(total / SMs, longest)          total = Σ over programs of their iterations

  (each SM runs one dK/dV program at a time with the default tiles: 8 warps of 164-243 registers a thread, out
  of 65 536 registers an SM). ``dkdv_work`` counts both; the lesson prints them for model-sized shapes on a
  132-SM H100/H200. Splitting leaves ``total`` alone and divides ``longest`` by s, so it helps only where the
  longest program is the bound: one K/V head and one sequence (a 70B model's 8 K/V heads spread over 8 GPUs),
  not Llama-3-8B's 8 K/V heads. ``.ci/gpu`` times both (lesson 21, ``gqa_rows``).

Checks: output and gradients vs ``F.scaled_dot_product_attention(..., enable_gqa=True)``, for every split.

Run:  python triton_flash_attention_scratch/18_autograd_function_and_gqa.py [--heads 8 --kv-heads 2]
"""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.nn.functional as F

from pytorch_basis.common import seed_everything
from triton_flash_attention_scratch.triton_flash import (
    GPU_DEFAULT_CONFIGS,
    dkdv_grid,
    flash_attention,
    lesson_parser,
    resolve_kernel_device,
)

# Streaming multiprocessors of an H100 SXM5 (NVIDIA H100 Tensor Core GPU Architecture whitepaper); the H200 is
# the same GH100 chip with more memory.
H100_SMS = 132
# (name, B, H, H_kv, N) at D = 128, causal: where splitting the group can and cannot matter
SPLIT_SHAPES = [
    ("Llama-3-8B, 1 sequence", 1, 32, 8, 4096),
    ("Llama-3-70B over 8 GPUs, 1 sequence", 1, 8, 1, 4096),
    ("Llama-3-70B over 8 GPUs, 4 sequences", 4, 8, 1, 4096),
    ("multi-query, 16 heads, 1 sequence", 1, 16, 1, 1024),
]


def dkdv_work(B: int, H: int, H_kv: int, N: int, block_m: int, block_n: int, split: int = 1, causal: bool = True,
              sms: int = H100_SMS) -> dict:  # fmt: skip
    """The dK/dV kernel's programs and their work in query-block iterations: ``programs``, ``total``, ``longest``
    (the first key block's program: causal, it sees every query), and ``bound = max(total / sms, longest)``."""
    key_blocks, rows = dkdv_grid(B, H_kv, N, block_n, split)
    heads = H // H_kv // split  # query heads per program
    q_blocks = math.ceil(N / block_m)
    # a program of key block j: causal, the query blocks from its first key on (BLOCK_N % BLOCK_M == 0)
    per_program = [(q_blocks - (j * block_n) // block_m if causal else q_blocks) * heads for j in range(key_blocks)]
    total = sum(per_program) * rows
    return {"programs": key_blocks * rows, "total": total, "longest": max(per_program),
            "bound": max(total / sms, max(per_program))}  # fmt: skip


def split_table(shapes=SPLIT_SHAPES, config: dict = GPU_DEFAULT_CONFIGS["dkdv"], sms: int = H100_SMS) -> list[dict]:
    """``dkdv_work`` of each shape without a split and with one program per query head."""
    rows = []
    for name, B, H, H_kv, N in shapes:
        one, full = (dkdv_work(B, H, H_kv, N, config["BLOCK_M"], config["BLOCK_N"], s, True, sms)
                     for s in (1, H // H_kv))  # fmt: skip
        rows.append({"shape": name, "B": B, "H": H, "H_kv": H_kv, "N": N, "split_1": one, "split_group": full,
                     "bound_ratio": one["bound"] / full["bound"]})  # fmt: skip
    return rows


def bad_inputs(dev: torch.device) -> dict[str, tuple]:
    """Named examples of input the kernels must refuse (q, k, v)."""
    r = lambda *shape, dtype=torch.float32: torch.randn(*shape, device=dev, dtype=dtype)
    return {
        "float64": (r(1, 2, 8, 16, dtype=torch.float64),) * 3,
        "mixed dtypes": (r(1, 2, 8, 16), r(1, 2, 8, 16, dtype=torch.float16), r(1, 2, 8, 16)),
        "3-D q": (r(2, 8, 16), r(1, 2, 8, 16), r(1, 2, 8, 16)),
        "k/v shorter": (r(1, 2, 8, 16), r(1, 2, 5, 16), r(1, 2, 5, 16)),
        "6 heads over 4 K/V heads": (r(1, 6, 8, 16), r(1, 4, 8, 16), r(1, 4, 8, 16)),
        "head_dim 512": (r(1, 1, 8, 512),) * 3,
        "meta device": (torch.empty(1, 2, 8, 16, device="meta"),) * 3,
    }


def main(
    batch: int = 2,
    heads: int = 8,
    kv_heads: int = 2,
    seq_len: int = 48,
    head_dim: int = 32,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    seed_everything(seed)
    dev = resolve_kernel_device(device)
    B, H, H_kv, N, D = batch, heads, kv_heads, seq_len, head_dim

    print("validation: every bad input is refused before a kernel is launched")
    errors = {}
    for name, (q, k, v) in bad_inputs(dev).items():
        try:
            flash_attention(q, k, v)
        except (TypeError, ValueError) as e:
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"  {name:<26} -> {errors[name]}")
        else:
            raise AssertionError(f"{name}: accepted bad input")

    print(f"\nGQA: {H} query heads share {H_kv} K/V heads (group of {H // H_kv}); B={B} N={N} D={D}")
    q = torch.randn(B, H, N, D, device=dev, requires_grad=True)
    k = torch.randn(B, H_kv, N, D, device=dev, requires_grad=True)
    v = torch.randn(B, H_kv, N, D, device=dev, requires_grad=True)
    out = {"validation": errors, "gqa": []}
    for causal in (False, True):
        o = flash_attention(q, k, v, causal=causal)
        do = torch.randn_like(o)
        grads = torch.autograd.grad(o, (q, k, v), do)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        ref_grads = torch.autograd.grad(ref, (q, k, v), do)
        errs = {"O": (o - ref).abs().max().item()}  # printed; the tests recompute the reference themselves
        errs.update({n: (g - r).abs().max().item() for n, g, r in zip(("dQ", "dK", "dV"), grads, ref_grads)})
        out["gqa"].append({"causal": causal, **errs, "tensors": {"q": q, "k": k, "v": v, "do": do, "o": o,
                                                                   "grads": grads}})  # fmt: skip
        print(f"  causal={causal!s:<5} max |triton - SDPA|: " + "  ".join(f"{n} {e:.1e}" for n, e in errs.items()))
    print(f"K/V memory vs {H} K/V heads: {H_kv / H:.0%} (the KV cache at inference shrinks the same way)")

    group = H // H_kv
    splits = [s for s in range(1, group + 1) if group % s == 0]
    print(f"\ndkdv_split: the group of {group} shared among s dK/dV programs, s in {splits} (causal)")
    out["split"] = []
    o = flash_attention(q, k, v, causal=True)
    do = torch.randn_like(o)
    ref_grads = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                                    (q, k, v), do)  # fmt: skip
    for split in splits:
        o = flash_attention(q, k, v, causal=True, dkdv_split=split)
        grads = torch.autograd.grad(o, (q, k, v), do)
        errs = {n: (g - r).abs().max().item() for n, g, r in zip(("dQ", "dK", "dV"), grads, ref_grads)}
        out["split"].append({"split": split, **errs, "tensors": {"q": q, "k": k, "v": v, "do": do, "grads": grads}})
        print(f"  s={split:<3} max |triton - SDPA|: " + "  ".join(f"{n} {e:.1e}" for n, e in errs.items()))

    cfg = GPU_DEFAULT_CONFIGS["dkdv"]
    print(
        f"\nthe dK/dV kernel's work on a {H100_SMS}-SM H100/H200, D=128 causal, tiles {cfg['BLOCK_M']}x"
        f"{cfg['BLOCK_N']} (GPU_DEFAULT_CONFIGS), in query-block iterations; bound = max(total / SMs, longest)"
    )
    print(
        f"  {'shape':<38} {'B':>2} {'H/H_kv':>6} {'N':>5} | {'programs':>8} {'longest':>7} {'bound':>6} | "
        f"{'programs':>8} {'longest':>7} {'bound':>6} | s=1 / s=group"
    )
    out["split_table"] = split_table()
    for r in out["split_table"]:
        a, b = r["split_1"], r["split_group"]
        print(
            f"  {r['shape']:<38} {r['B']:>2} {r['H']:>3}/{r['H_kv']:<2} {r['N']:>5} | {a['programs']:>8} "
            f"{a['longest']:>7} {a['bound']:>6.0f} | {b['programs']:>8} {b['longest']:>7} {b['bound']:>6.0f} | "
            f"{r['bound_ratio']:.2f}"
        )
    print("  (a bound, not a timing: lesson 21's gqa_rows times both on a GPU)")
    return out


def parse_args():
    p = lesson_parser(__doc__, batch=2, heads=8, kv_heads=2, seq_len=48, head_dim=32)
    return p.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
