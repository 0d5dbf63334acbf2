"""Muon (muon.py): the Newton-Schulz band, the update against a reference written here, resume and DDP."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pytorch_gpt2_from_scratch.modern import ModernConfig, ModernGPT
from pytorch_gpt2_from_scratch.muon import NS_COEFFS, Muon, muon_param_groups, newton_schulz
from pytorch_gpt2_from_scratch.training import load_checkpoint, save_checkpoint
from tests.numerics import assert_close_scaled

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(
    block_size=16,
    vocab_size=97,
    n_layer=2,
    n_head=2,
    n_embd=16,
    rope=True,
    norm="rmsnorm",
    bias=False,
    qk_norm=True,
    mlp="relu2",
    tie_weights=False,
    softcap=15.0,
    value_embed=True,
    x0_skip=True,
)


def quintic_iterated(s: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = 3.4445, -4.7750, 2.0315  # Keller Jordan's coefficients, as published
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("shape", [(48, 160), (160, 48), (64, 64)])
def test_newton_schulz_maps_singular_values_into_the_band(shape):
    g = torch.randn(*shape, dtype=torch.float64)
    o = newton_schulz(g, steps=5)
    s_in = torch.linalg.svdvals(g) / (g.norm() + 1e-7)  # the normalised singular values, in (0, 1]
    s_out = torch.linalg.svdvals(o)
    # the iteration is exactly the scalar quintic applied to each normalised singular value (p is not monotonic,
    # so compare the sorted lists)
    expected = quintic_iterated(s_in, 5).sort(descending=True).values
    assert_close_scaled(s_out, expected, ulps=1e4, dtype=torch.float64, what="singular values")
    # the promised band: after 5 steps every s_in >= 1.5e-3 lands in [0.68, 1.21]; smaller ones only grow
    # (a square Gaussian matrix has a few tiny singular values)
    mapped = quintic_iterated(s_in, 5)
    inside = s_in >= 1.5e-3
    assert inside.sum() >= len(s_in) - 3
    assert mapped[inside].min() >= 0.68 and mapped[inside].max() <= 1.21
    assert (mapped[~inside] > s_in[~inside]).all()
    if shape[0] != shape[1]:
        assert s_out.min() >= 0.68 and s_out.max() <= 1.21, (s_out.min(), s_out.max())
    # same singular vectors as G: O = P p(S) Q^T, so O^T G = Q p(S) S Q^T is symmetric
    m = o.T @ g
    assert_close_scaled(m, m.T, ulps=1e4, dtype=torch.float64, what="O^T G symmetric")
    assert NS_COEFFS == (3.4445, -4.7750, 2.0315)


def test_newton_schulz_rejects_a_vector():
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.ones(3))


def reference_orth(u: torch.Tensor) -> torch.Tensor:
    """SVD route: P p^5(S / (||U||_F + 1e-7)) Q^T -- what 5 Newton-Schulz steps promise, computed without them."""
    p, s, qt = torch.linalg.svd(u, full_matrices=False)
    return p @ torch.diag(quintic_iterated(s / (u.norm() + 1e-7), 5)) @ qt


def test_muon_step_equals_a_reference_implementation():
    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**TINY)).double()
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = muon_param_groups(model, muon_lr=0.05, adam_lr=3e-3, embed_lr=1e-2, head_lr=2e-3, weight_decay=0.1)
    opt = Muon(groups)
    kinds = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            kinds[names[id(p)]] = g
    assert all(kinds[n]["use_muon"] == (".h." in f".{n}" and p.dim() == 2) for n, p in model.named_parameters())
    mom, adam_m, adam_v = {}, {}, {}
    x = torch.randint(0, 97, (3, 16))
    for t in range(1, 4):
        opt.zero_grad()
        _, loss = model(x, torch.roll(x, -1, 1))
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for n, w in ref.items():  # the reference update, written from the definitions
            g, grp = grads[n], kinds[n]
            lr, wd = grp["lr"], grp["weight_decay"]
            if grp["use_muon"]:
                mom[n] = 0.95 * mom.get(n, torch.zeros_like(w)) + g
                u = g + 0.95 * mom[n]  # Nesterov
                scale = math.sqrt(max(1.0, w.shape[0] / w.shape[1]))
                ref[n] = w * (1 - lr * wd) - lr * scale * reference_orth(u)
            else:
                adam_m[n] = 0.9 * adam_m.get(n, torch.zeros_like(w)) + 0.1 * g
                adam_v[n] = 0.95 * adam_v.get(n, torch.zeros_like(w)) + 0.05 * g * g
                m_hat, v_hat = adam_m[n] / (1 - 0.9**t), adam_v[n] / (1 - 0.95**t)
                ref[n] = w * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + 1e-8)
        for n, p in model.named_parameters():
            assert_close_scaled(p.detach(), ref[n], ulps=1e5, dtype=torch.float64, what=f"step {t} {n}")
            ref[n] = p.detach().clone()  # the next step starts from the same weights on both sides


def _tiny_model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = ModernGPT(ModernConfig(**TINY))
    return model, Muon(muon_param_groups(model, muon_lr=0.05, adam_lr=3e-3))


def _steps(model, opt, tokens, start, stop, rows=2, T=16):
    for s in range(start, stop):
        buf = tokens[s * rows * T : (s + 1) * rows * T + 1]
        x, y = buf[:-1].view(rows, T), buf[1:].view(rows, T)
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = g["max_lr"] * (1 - s / 10)
        opt.step()


def test_resume_with_muon_is_bit_exact(tmp_path):
    tokens = torch.randint(0, 97, (2000,))
    straight, opt = _tiny_model_and_opt()
    _steps(straight, opt, tokens, 0, 6)

    first, opt1 = _tiny_model_and_opt()
    _steps(first, opt1, tokens, 0, 3)
    path = save_checkpoint(tmp_path / "ckpt.pt", model=first, optimizer=opt1, step=3, config=first.config)
    ckpt = load_checkpoint(path)  # weights_only=True
    resumed, opt2 = _tiny_model_and_opt(seed=123)  # other initial weights: everything must come from the file
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    assert any("momentum_buffer" in s for s in opt2.state.values())
    _steps(resumed, opt2, tokens, int(ckpt["step"]), 6)
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n


# --------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tokens: torch.Tensor, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, opt = _tiny_model_and_opt()
        model = model.double()
        opt = Muon(muon_param_groups(model, muon_lr=0.05, adam_lr=3e-3))
        ddp = DDP(model)
        rows, T = 2, 16  # per rank
        for s in range(3):
            base = s * world * rows * T
            buf = tokens[base + rank * rows * T : base + (rank + 1) * rows * T + 1]
            x, y = buf[:-1].view(rows, T), buf[1:].view(rows, T)
            opt.zero_grad(set_to_none=True)
            _, loss = ddp(x, y)
            loss.backward()  # gradients averaged over the ranks here, before Muon orthogonalises them
            opt.step()
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_muon_two_gloo_processes_equal_one_process_on_the_union(tmp_path):
    tokens = torch.randint(0, 97, (2000,))
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), tokens, out), nprocs=2, join=True)
    ddp_state = torch.load(out, weights_only=True)

    model, _ = _tiny_model_and_opt()
    model = model.double()
    opt = Muon(muon_param_groups(model, muon_lr=0.05, adam_lr=3e-3))
    _steps_union = 2 * 2  # rows of both ranks in one batch
    for s in range(3):
        buf = tokens[s * _steps_union * 16 : (s + 1) * _steps_union * 16 + 1]
        x, y = buf[:-1].view(_steps_union, 16), buf[1:].view(_steps_union, 16)
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
    for n, v in model.state_dict().items():
        assert_close_scaled(ddp_state[n], v, ulps=1e5, dtype=torch.float64, what=n)
