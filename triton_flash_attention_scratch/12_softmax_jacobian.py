"""Step 12: the Jacobian of softmax, diag(p) − p pᵀ, and the row-wise shortcut the backward pass uses.

For one row p = softmax(x), p_i = e^(x_i) / Σ_k e^(x_k). Quotient rule:

    ∂p_i/∂x_j = p_i δ_ij − p_i p_j        =>   J = diag(p) − p pᵀ          (n × n, symmetric)

Its rows sum to zero (Σ_i p_i = 1 whatever x is), so J is singular: adding a constant to x changes nothing.
Backward needs only the VJP with the upstream gradient dp = ∂L/∂p, and since J is symmetric:

    dx = Jᵀ dp = p ∘ dp − p (pᵀ dp) = p ∘ (dp − Σ_k p_k dp_k)

For a matrix of rows (attention's P = softmax(S) row-wise):  dS = P ∘ (dP − rowsum(dP ∘ P)) — O(n) per row
instead of an n × n matrix. In attention, with dP = dO Vᵀ and O = P V, rowsum(dP ∘ P)_i = Σ_j P_ij (dO_i · V_j)
= dO_i · O_i, so the flash backward precomputes D = rowsum(dO ∘ O) from tensors of size N × D only.

Run:  python triton_flash_attention_scratch/12_softmax_jacobian.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch
from torch.autograd.functional import jacobian

from pytorch_basis.common import positive_int, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import softmax_backward, softmax_jacobian


def main(n: int = 5, rows: int = 6, head_dim: int = 4, seed: int = 0) -> dict:
    seed_everything(seed)
    dt = torch.float64
    x = torch.randn(n, dtype=dt)
    p = torch.softmax(x, dim=0)
    j_hand = softmax_jacobian(p)
    j_torch = jacobian(lambda z: torch.softmax(z, dim=0), x)
    jac_err = (j_hand - j_torch).abs().max().item()
    print(f"J = diag(p) - p pᵀ ({n} × {n}) vs autograd.functional.jacobian: max error {jac_err:.1e}")
    print(
        f"symmetric: {torch.allclose(j_hand, j_hand.T)}, row sums {j_hand.sum(1).abs().max().item():.1e} (zero), "
        f"rank {torch.linalg.matrix_rank(j_hand).item()} of {n}"
    )

    dp = torch.randn(n, dtype=dt)
    vjp_err = (softmax_backward(p, dp) - j_hand.T @ dp).abs().max().item()
    print(f"shortcut p ∘ (dp - p·dp) vs Jᵀ dp: max error {vjp_err:.1e}")

    s = torch.randn(rows, n, dtype=dt, requires_grad=True)
    big_p = torch.softmax(s, dim=-1)
    d_big_p = torch.randn(rows, n, dtype=dt)
    big_p.backward(d_big_p)
    rowwise_err = (softmax_backward(big_p.detach(), d_big_p) - s.grad).abs().max().item()
    print(f"row-wise dS = P ∘ (dP - rowsum(dP ∘ P)) for a {rows} × {n} matrix vs autograd: {rowwise_err:.1e}")

    # the attention identity rowsum(dP ∘ P) = rowsum(dO ∘ O)
    v, d_o = torch.randn(n, head_dim, dtype=dt), torch.randn(rows, head_dim, dtype=dt)
    pp = big_p.detach()
    o, dpp = pp @ v, d_o @ v.T
    identity_err = ((dpp * pp).sum(-1) - (d_o * o).sum(-1)).abs().max().item()
    print(f"attention: rowsum(dP ∘ P) = rowsum(dO ∘ O) (N × N vs N × D work): max difference {identity_err:.1e}")
    return {
        "jacobian_error": jac_err,
        "vjp_error": vjp_err,
        "rowwise_error": rowwise_err,
        "identity_error": identity_err,
        "jacobian": j_hand,
        "p": p,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=5, help="row length")
    parser.add_argument("--rows", type=positive_int, default=6)
    parser.add_argument("--head-dim", type=positive_int, default=4)
    parser.add_argument("--seed", type=seed_int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
