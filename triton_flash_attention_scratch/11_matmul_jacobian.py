"""Step 11: the Jacobian of matrix multiplication, and the two gradient formulas every backward pass uses.

C = A B with A (M × K), B (K × N):  C_ij = Σ_k A_ik B_kj,  so  ∂C_ij/∂A_pq = δ_ip B_qj.

The full Jacobian ∂vec(C)/∂vec(A) is an (M·N) × (M·K) matrix — for row-major vec it is I_M ⊗ Bᵀ, mostly zeros.
Contract it with the upstream gradient G = ∂L/∂C instead:

    ∂L/∂A_pq = Σ_ij G_ij δ_ip B_qj = Σ_j G_pj B_qj = (G Bᵀ)_pq        =>   dA = dC Bᵀ
    ∂L/∂B_pq = Σ_ij G_ij A_ip δ_qj = Σ_i A_ip G_iq = (Aᵀ G)_pq        =>   dB = Aᵀ dC

(a shape check remembers them: dA must be M × K = (M × N)(N × K)). In attention the same rule gives, for
S = Q Kᵀ · scale:  dQ = dS K · scale,  dK = dSᵀ Q · scale;  and for O = P V:  dP = dO Vᵀ,  dV = Pᵀ dO.
This step checks the formulas against autograd and against the full Jacobian from
``torch.autograd.functional.jacobian``.

Run:  python triton_flash_attention_scratch/11_matmul_jacobian.py [--m 4 --k 3 --n 5]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import argparse

import torch
from torch.autograd.functional import jacobian

from pytorch_basis.common import positive_int, seed_everything, seed_int
from triton_flash_attention_scratch.attention_torch import matmul_backward


def main(m: int = 4, k: int = 3, n: int = 5, seed: int = 0) -> dict:
    seed_everything(seed)
    dt = torch.float64
    a, b, g = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt), torch.randn(m, n, dtype=dt)

    da, db = matmul_backward(a, b, g)  # dC Bᵀ, Aᵀ dC
    ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
    (ar @ br).backward(g)
    autograd_err = max((da - ar.grad).abs().max().item(), (db - br.grad).abs().max().item())
    print(f"dA = dC Bᵀ {tuple(da.shape)}, dB = Aᵀ dC {tuple(db.shape)}: max error vs autograd {autograd_err:.1e}")

    j_a, j_b = jacobian(lambda x, y: x @ y, (a, b))  # (M, N, M, K) and (M, N, K, N)
    kron_err = (j_a.reshape(m * n, m * k) - torch.kron(torch.eye(m, dtype=dt), b.T.contiguous())).abs().max().item()
    print(
        f"∂vec(C)/∂vec(A) is {m * n} × {m * k}, equal to I_M ⊗ Bᵀ: max error {kron_err:.1e} "
        f"({int((j_a != 0).sum())} of {j_a.numel()} entries nonzero)"
    )
    contract_err = max(
        (torch.einsum("ij,ijpq->pq", g, j_a) - da).abs().max().item(),
        (torch.einsum("ij,ijpq->pq", g, j_b) - db).abs().max().item(),
    )
    print(f"contracting the full Jacobians with dC gives the same dA, dB: max error {contract_err:.1e}")

    # the attention instance: S = Q Kᵀ · scale
    q, kk, ds = torch.randn(6, 4, dtype=dt), torch.randn(7, 4, dtype=dt), torch.randn(6, 7, dtype=dt)
    scale = 0.5
    dq, dkt = matmul_backward(q, kk.T, ds)  # A = Q, B = Kᵀ: dQ = dS K, d(Kᵀ) = Qᵀ dS; the scale multiplies both
    qr, kr = q.clone().requires_grad_(), kk.clone().requires_grad_()
    ((qr @ kr.T) * scale).backward(ds)
    attn_err = max((dq * scale - qr.grad).abs().max().item(), (dkt.T * scale - kr.grad).abs().max().item())
    print(f"S = Q Kᵀ·scale: dQ = dS K·scale, dK = dSᵀ Q·scale, max error vs autograd {attn_err:.1e}")
    return {
        "autograd_error": autograd_err,
        "kron_error": kron_err,
        "contract_error": contract_err,
        "attention_error": attn_err,
        "da": da,
        "db": db,
        "a": a,
        "b": b,
        "g": g,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=positive_int, default=4)
    parser.add_argument("--k", type=positive_int, default=3)
    parser.add_argument("--n", type=positive_int, default=5)
    parser.add_argument("--seed", type=seed_int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    from pytorch_basis.common import EXPECTED_CLI_ERRORS, run_cli

    # bad options or inputs: one line "error: ..." and exit 1 (LLM_SCRATCH_DEBUG=1 shows the traceback)
    run_cli(lambda: main(**vars(parse_args())), EXPECTED_CLI_ERRORS + (TypeError,))
