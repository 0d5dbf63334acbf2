"""Step 13: the flash attention backward pass, in PyTorch, as in the FlashAttention-2 paper.

Forward (step 6) kept only O and L = m + log(l). Backward of O = softmax(S) V with S = Q Kᵀ · scale, written
with steps 11 and 12:

    dV = Pᵀ dO                   dP = dO Vᵀ
    dS = P ∘ (dP − D),  D = rowsum(dO ∘ O)            (step 12; D is N values, computed once up front)
    dQ = dS K · scale            dK = dSᵀ Q · scale    (step 11)

None of it needs the whole P at once: every term is a sum over tiles. So for each tile (i, j), rebuild
S_ij = Q_i K_jᵀ · scale and P_ij = e^(S_ij − L_i) (step 9: exact, no renormalization) and accumulate

    outer loop over key/value blocks j  (one GPU program per j):   dV_j += P_ijᵀ dO_i,  dK_j += dS_ijᵀ Q_i · scale
    outer loop over query blocks i      (one GPU program per i):   dQ_i += dS_ij K_j · scale

Each output block is written by exactly one loop nest, so no atomics are needed (the paper's Algorithm 2
accumulates dQ inside the first nest with atomic adds instead; the price here is computing P twice).
Recomputing S costs extra FLOPs but saves the N² memory and its traffic — the same trade as activation
checkpointing. ``FlashAttentionTorch`` wires forward and backward into autograd. This step checks the
gradients against autograd of the naive attention and against ``gradcheck``, and compares how many bytes each
version saves for the backward pass.

Run:  python triton_flash_attention_scratch/13_flash_attention_backward.py [--seq-lens 17 100 257]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch

from pytorch_basis.common import add_device_argument, positive_int, resolve_device, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import (
    FlashAttentionTorch,
    flash_attention_backward,
    flash_attention_forward,
    flash_attention_torch,
    naive_attention,
    naive_attention_backward,
)


def saved_bytes(fn, *inputs: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward while running fn(*inputs), inputs themselves excluded."""
    storages: dict[int, int] = {}
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in input_ptrs:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(storages.values())


def main(
    batch: int = 1,
    n_head: int = 4,
    n_kv_head: int = 2,
    head_dim: int = 32,
    seq_lens: tuple[int, ...] = (17, 100, 257),
    block_q: int = 64,
    block_k: int = 32,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    dev = resolve_device(device)
    seed_everything(seed)
    rows = []
    print(f"B={batch} H={n_head} H_kv={n_kv_head} D={head_dim} block_q={block_q} block_k={block_k}")
    print(
        f"{'N':>5} {'causal':>6} {'by hand (P kept)':>17} {'flash tiled':>12} {'autograd.Function':>18}"
        f" {'saved naive KiB':>16} {'saved flash KiB':>16}"
    )
    for n in seq_lens:
        q = torch.randn(batch, n_head, n, head_dim, device=dev)
        k, v = (torch.randn(batch, n_kv_head, n, head_dim, device=dev) for _ in range(2))
        do = torch.randn_like(q)
        for causal in (False, True):
            qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
            naive_attention(qr, kr, vr, causal).backward(do)
            ref = (qr.grad, kr.grad, vr.grad)
            err = lambda grads, ref=ref: max((g - r).abs().max().item() for g, r in zip(grads, ref))
            o, lse = flash_attention_forward(q, k, v, causal, None, block_q, block_k)
            qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
            flash_attention_torch(qf, kf, vf, causal, None, block_q, block_k).backward(do)
            hand = naive_attention_backward(q, k, v, do, causal)
            flash = flash_attention_backward(q, k, v, o, lse, do, causal, None, block_q, block_k)
            row = {
                "N": n,
                "causal": causal,
                "hand_error": err(hand),
                "flash_error": err(flash),
                "function_error": err((qf.grad, kf.grad, vf.grad)),
                "tensors": {
                    "q": q,
                    "k": k,
                    "v": v,
                    "do": do,
                    "hand": hand,
                    "flash": flash,
                    "function": (qf.grad, kf.grad, vf.grad),
                },  # fmt: skip
                "saved_naive": saved_bytes(lambda a, b, c, causal=causal: naive_attention(a, b, c, causal), qr, kr, vr),
                "saved_flash": saved_bytes(
                    lambda a, b, c, causal=causal: flash_attention_torch(a, b, c, causal, None, block_q, block_k),
                    qf,
                    kf,
                    vf,
                ),
            }
            rows.append(row)
            print(
                f"{n:>5} {causal!s:>6} {row['hand_error']:>17.1e} {row['flash_error']:>12.1e} "
                f"{row['function_error']:>18.1e} {row['saved_naive'] / 1024:>16.1f} {row['saved_flash'] / 1024:>16.1f}"
            )

    q64 = torch.randn(1, 2, 9, 4, dtype=torch.float64, device=dev, requires_grad=True)
    k64, v64 = (torch.randn(1, 1, 9, 4, dtype=torch.float64, device=dev, requires_grad=True) for _ in range(2))
    ok = torch.autograd.gradcheck(lambda a, b, c: FlashAttentionTorch.apply(a, b, c, True, None, 4, 3), (q64, k64, v64))
    print(f"torch.autograd.gradcheck (float64, causal, GQA, N=9 with blocks 4 x 3): {ok}")
    print("saved for backward: naive keeps S/P-sized tensors (N²); flash keeps O and L (N·D + N)")
    return {"rows": rows, "gradcheck": ok}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--n-head", type=positive_int, default=4)
    parser.add_argument("--n-kv-head", type=positive_int, default=2)
    parser.add_argument("--head-dim", type=positive_int, default=32)
    parser.add_argument("--seq-lens", type=positive_int, nargs="+", default=[17, 100, 257])
    parser.add_argument("--block-q", type=positive_int, default=64)
    parser.add_argument("--block-k", type=positive_int, default=32)
    parser.add_argument("--seed", type=seed_int, default=0)
    add_device_argument(parser)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    def _cli():
        args = parse_args()
        args.seq_lens = tuple(args.seq_lens)
        main(**vars(args))

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(_cli, EXPECTED_CLI_ERRORS + (TypeError,))
