"""Step 8: tensor layouts — shapes, strides, contiguity, and how a kernel finds an element in memory.

A tensor is a flat block of memory (its *storage*) plus a view of it: a shape, a storage offset and one
*stride* per dimension, the number of elements to skip to move one step along that dimension. Element
x[i_0, i_1, ..., i_{n-1}] lives at

    offset = storage_offset + Σ_d i_d · stride_d          (address = data_ptr + offset · element_size)

which is exactly the arithmetic a CUDA or Triton kernel does: it receives a base pointer and the strides
(``q.stride(0)``, ``q.stride(1)``, ...) and computes the addresses itself. Row-major *contiguous* means
stride_d = Π_{e > d} size_e. ``transpose``/``permute``/slicing/``expand`` only change the view (no copy);
``view`` needs strides compatible with the new shape and raises otherwise; ``reshape`` is ``view`` when
possible and a copy when not; ``contiguous()`` copies into row-major order.

The case that matters for attention: q = x.view(B, T, H, D).transpose(1, 2) has shape (B, H, T, D) but strides
(T·C, D, C, 1) — consecutive tokens of one head are C elements apart, not D. A kernel given these strides reads
it in place; a kernel that assumes contiguity reads garbage. This step computes every element's offset from
the strides and checks it against ``torch.as_strided`` and ordinary indexing.

Run:  python triton_flash_attention_scratch/08_tensor_layouts.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch

from pytorch_basis.common import positive_int, seed_everything, seed_int


def element_offset(index: tuple[int, ...], stride: tuple[int, ...], storage_offset: int = 0) -> int:
    """offset = storage_offset + Σ_d index_d · stride_d (in elements, from the start of the storage)."""
    if len(index) != len(stride):
        raise ValueError(f"index has {len(index)} coordinates but the tensor has {len(stride)} dimensions")
    return storage_offset + sum(i * s for i, s in zip(index, stride))


def all_offsets(t: torch.Tensor) -> torch.Tensor:
    """The offset of every element of ``t`` (same shape as t), built from its strides with broadcasting."""
    offsets = torch.full(t.shape, t.storage_offset(), dtype=torch.long)
    for d, (size, stride) in enumerate(zip(t.shape, t.stride())):
        view_shape = [1] * t.dim()
        view_shape[d] = size
        offsets = offsets + (torch.arange(size) * stride).view(view_shape)  # i_d · stride_d along dim d
    return offsets


def storage_as_flat(t: torch.Tensor) -> torch.Tensor:
    """The whole underlying storage as a 1-D tensor: what a kernel's base pointer points at."""
    n = t.untyped_storage().nbytes() // t.element_size()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), 0, (n,), (1,))


def describe(name: str, t: torch.Tensor, base: torch.Tensor) -> dict:
    flat = storage_as_flat(t)
    offsets = all_offsets(t)
    by_strides = flat[offsets]  # gather every element by its computed offset
    rebuilt = torch.as_strided(flat, t.shape, t.stride(), t.storage_offset())
    shares = t.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    row = {
        "name": name,
        "tensor": t,
        "shape": tuple(t.shape),
        "stride": t.stride(),
        "offset": t.storage_offset(),
        "contiguous": t.is_contiguous(),
        "shares_storage": shares,
        "strides_match_indexing": bool(torch.equal(by_strides, t)),
        "as_strided_matches": bool(torch.equal(rebuilt, t)),
    }
    print(
        f"{name:34s} {str(row['shape']):15s} {str(row['stride']):17s} {row['offset']:>3} "
        f"{row['contiguous']!s:>6} {shares!s:>7} {row['strides_match_indexing'] and row['as_strided_matches']!s:>6}"
    )
    return row


def main(batch: int = 2, seq_len: int = 3, n_head: int = 2, head_dim: int = 4, seed: int = 0) -> dict:
    seed_everything(seed)
    B, T, H, D = batch, seq_len, n_head, head_dim
    C = H * D
    x = torch.arange(B * T * C, dtype=torch.float32).view(B, T, C)  # value = its own offset: easy to read
    print(f"{'view':34s} {'shape':15s} {'stride':17s} {'off':>3} {'contig':>6} {'shared':>7} {'check':>6}")
    rows = [describe("x (B, T, C)", x, x)]
    q = x.view(B, T, H, D).transpose(1, 2)  # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
    rows.append(describe("x.view(B,T,H,D).transpose(1,2)", q, x))
    rows.append(describe("q.contiguous()", q.contiguous(), x))
    rows.append(describe("x.transpose(-2, -1)", x.transpose(-2, -1), x))
    rows.append(describe("x[:, 1:, 2:6] (slice)", x[:, 1:, 2:6], x))
    rows.append(describe("x[:, :, ::2] (step 2)", x[:, :, ::2], x))
    rows.append(describe("x[0, :1].expand(4, C) (stride 0)", x[0, :1].expand(4, C), x))
    rows.append(describe("x.permute(2, 0, 1)", x.permute(2, 0, 1), x))

    idx = (1, 1, 2, 3)
    off = element_offset(idx, q.stride(), q.storage_offset())
    print(
        f"\nq[{idx}] = {q[idx].item():.0f}, offset from strides {q.stride()}: "
        f"{' + '.join(f'{i}·{s}' for i, s in zip(idx, q.stride()))} = {off}"
    )
    try:
        q.view(B, H, T * D)
        view_error = None
    except RuntimeError as e:
        view_error = str(e).split(".")[0]
    merged = q.reshape(B, H, T * D)
    print(f"q.view(B, H, T*D) on the transposed tensor: RuntimeError: {view_error}")
    print(
        f"q.reshape(B, H, T*D) works by copying: shares storage with x: "
        f"{merged.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()}"
    )
    print(
        "a kernel reading q gets (stride_b, stride_h, stride_t, stride_d) =",
        q.stride(),
        "— the token stride is C, not D",
    )
    return {"rows": rows, "q": q, "x": x, "offset_example": (idx, off), "view_error": view_error}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--seq-len", type=positive_int, default=3)
    parser.add_argument("--n-head", type=positive_int, default=2)
    parser.add_argument("--head-dim", type=positive_int, default=4)
    parser.add_argument("--seed", type=seed_int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
