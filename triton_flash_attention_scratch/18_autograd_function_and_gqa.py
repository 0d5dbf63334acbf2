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

Checks: output and gradients vs ``F.scaled_dot_product_attention(..., enable_gqa=True)``.

Run:  python triton_flash_attention_scratch/18_autograd_function_and_gqa.py [--heads 8 --kv-heads 2]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
import torch.nn.functional as F

from pytorch_basis.common import seed_everything
from triton_flash_attention_scratch.triton_flash import flash_attention, lesson_parser, resolve_kernel_device


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
    return out


def parse_args():
    p = lesson_parser(__doc__, batch=2, heads=8, kv_heads=2, seq_len=48, head_dim=32)
    return p.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
