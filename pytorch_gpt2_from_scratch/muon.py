"""Muon: momentum, orthogonalised by a Newton-Schulz iteration, for the hidden weight matrices.

Muon (Keller Jordan et al., 2024: the blog post "Muon: An optimizer for hidden layers in neural networks" and the
``KellerJordan/modded-nanogpt`` speedrun, where it is the largest single gain) updates a weight matrix ``W``
``(m, n)`` with the *orthogonalised* momentum instead of the momentum itself::

    M_t = mu M_{t-1} + G_t                          # SGD momentum (mu = 0.95)
    U_t = G_t + mu M_t                              # Nesterov look-ahead
    O_t ~ orth(U_t) = P Q^T        where U_t = P S Q^T is the SVD (all singular values set to ~1)
    W  <- W - lr * sqrt(max(1, m / n)) * O_t

Why orthogonalise: the momentum of a transformer's weight matrix is dominated by a few directions (its singular
values span orders of magnitude), so a plain step moves the weights almost only along those. ``P Q^T`` keeps the
directions of the update and gives each of them the same size, so the rare directions learn as fast as the
common ones. (``P Q^T`` is the steepest-descent step under the spectral norm.) The ``sqrt(max(1, m/n))`` makes
tall matrices' updates about as large per element as square ones'.

**The Newton-Schulz iteration.** An SVD per matrix per step is slow; an odd matrix polynomial is not. For
``X = P S Q^T``, ``X X^T X = P S^3 Q^T``, so::

    X <- a X + b (X X^T) X + c (X X^T)^2 X     applies   s <- p(s) = a s + b s^3 + c s^5

to every singular value at once, without computing any of them. Start from ``X = U / ||U||_F`` (all singular
values in (0, 1]) and iterate: we want ``p`` to push every ``s`` towards 1. The classic cubic
``(3 s - s^3) / 2`` converges to exactly 1 but slowly from small ``s`` (slope 1.5 at 0). The quintic coefficients
``(a, b, c) = (3.4445, -4.7750, 2.0315)`` are the ones Keller Jordan tuned for Muon (blog post above; the
modded-nanogpt code): a slope of ``a = 3.4445`` at 0 grows small singular values ~3.4x per iteration, at the price
of not converging to exactly 1: ``p`` maps ``[0.68, 1.21]`` into itself and every ``s`` in ``[0.21, 1]`` into that
band in one step, so after 5 iterations every singular value above 1.5e-3 (of the normalised matrix) lies in
``[0.68, 1.21]``. For an optimizer update that is as good as exactly 1 (the tests check the band and that the
iteration is ``p`` applied to the singular values).

The iteration is run on the wide orientation (``m <= n``) so ``X X^T`` is the small Gram matrix.

**AdamW for everything else.** Muon is for the 2-D weights *inside* the blocks. Embedding tables (a lookup: each
row sees only its own token's gradient), the output head and the 1-D gains and scalars are trained with AdamW, as
in modded-nanogpt. :class:`Muon` holds both kinds of parameter groups (``use_muon=True`` or ``False``) so one
``state_dict`` holds the whole optimizer state (checkpoints resume bit-exactly).

**Under DDP** the gradients are all-reduced (averaged) in ``backward`` before ``step`` runs, so every rank
orthogonalises the same averaged momentum and makes the same update: 2 processes equal 1 process on the union of
their batches (tested). (modded-nanogpt instead shards the matrices over the ranks and all-gathers the updates,
which saves the duplicated Newton-Schulz work on many GPUs.)
"""

from __future__ import annotations

import math

import torch
from torch.optim.adamw import adamw  # the functional form of torch.optim.AdamW (fused on CPU and CUDA)

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (modded-nanogpt)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalise ``G`` ``(m, n)``: ``~ P Q^T`` for ``G = P S Q^T`` (singular values ~[0.68, 1.21]).

    ``dtype``: precision of the iteration (default: float32, or ``G``'s dtype if it is float64). The result has
    ``G``'s dtype.
    """
    if G.dim() != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFS
    if dtype is None:
        dtype = torch.float64 if G.dtype == torch.float64 else torch.float32
    X = G.to(dtype)
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T  # (m, n) -> (n, m): iterate on the wide side, X X^T is the smaller Gram matrix
    X = X / (X.norm() + eps)  # Frobenius norm >= spectral norm: every singular value now in (0, 1]
    for _ in range(steps):
        A = X @ X.T  # (m, m)
        B = b * A + c * (A @ A)
        X = a * X + B @ X  # = a X + b (X X^T) X + c (X X^T)^2 X
    if transposed:
        X = X.T
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for groups with ``use_muon=True`` (2-D parameters), AdamW for the other groups.

    Muon group options: ``lr``, ``momentum`` (0.95), ``nesterov`` (True), ``ns_steps`` (5), ``weight_decay`` (0).
    AdamW group options: ``lr``, ``betas`` ((0.9, 0.95)), ``eps`` (1e-8), ``weight_decay`` (0). Every group may
    have an ``lr_scale`` (default 1): the step uses ``lr * lr_scale``, so a loop that sets one ``lr`` for all groups
    (``training.train_step``) keeps their ratios. Any extra key (e.g. ``max_lr``) is kept untouched.
    """

    def __init__(self, param_groups: list[dict]):
        groups = []
        for g in param_groups:
            g = dict(g)
            if "lr" not in g:
                raise ValueError("every Muon parameter group needs an 'lr'")
            if g.setdefault("use_muon", False):
                g.setdefault("momentum", 0.95)
                g.setdefault("nesterov", True)
                g.setdefault("ns_steps", 5)
                for p in g["params"]:
                    if p.dim() != 2:
                        raise ValueError(f"Muon groups hold matrices only, got a parameter of shape {tuple(p.shape)}")
            else:
                g.setdefault("betas", (0.9, 0.95))
                g.setdefault("eps", 1e-8)
            g.setdefault("weight_decay", 0.0)
            groups.append(g)
        super().__init__(groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict) -> None:
        lr, mu, wd = group["lr"] * group.get("lr_scale", 1.0), group["momentum"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(g)  # M = mu M + G
            u = g.add(buf, alpha=mu) if group["nesterov"] else buf  # U = G + mu M
            o = newton_schulz(u, steps=group["ns_steps"])
            scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
            if wd:
                p.mul_(1.0 - lr * wd)
            p.add_(o, alpha=-lr * scale)

    def _adamw_group(self, group: dict) -> None:
        """AdamW on the group's tensors in one call of PyTorch's fused kernel (one pass over each tensor):

        ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``p *= 1 - lr wd``,
        ``p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
        Written out tensor by tensor this takes ~6 passes over memory; on a 2-core CPU that was ~4x slower for the
        13 M embedding and head parameters of Section 5's recipe.
        """
        lr = group["lr"] * group.get("lr_scale", 1.0)
        (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
        adamw(
            params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=fused,
            amsgrad=False, beta1=b1, beta2=b2, lr=lr, weight_decay=wd, eps=eps, maximize=False,
        )  # fmt: skip


def muon_param_groups(
    model: torch.nn.Module,
    *,
    muon_lr: float = 0.02,
    adam_lr: float = 3e-3,
    head_lr: float | None = None,
    embed_lr: float | None = None,
    momentum: float = 0.95,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Muon for the 2-D weights inside the blocks; AdamW for embeddings (``embed_lr``), head (``head_lr``), gains.

    Every group also records ``max_lr`` (its lr at the top of the schedule).
    """
    blocks, embeds, head, other = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name == "lm_head.weight":
            head.append(p)
        elif p.dim() == 2 and ".h." in f".{name}":
            blocks.append(p)
        elif p.dim() == 2:
            embeds.append(p)
        else:
            other.append(p)
    groups = [
        dict(params=blocks, use_muon=True, lr=muon_lr, momentum=momentum, weight_decay=weight_decay),
        dict(params=embeds, use_muon=False, lr=embed_lr or adam_lr),
        dict(params=head, use_muon=False, lr=head_lr or adam_lr),
        dict(params=other, use_muon=False, lr=adam_lr),
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["max_lr"] = g["lr"]
    return groups
