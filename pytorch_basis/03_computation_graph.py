"""Step 3 — the computation graph: ``grad_fn.next_functions``, saved tensors, ``retain_grad()``, ``gradient=``.

What this step adds: a look *inside* autograd. The forward pass of a one-neuron model

    z = Σ_i w_i x_i + b          y = σ(z)          L = (y - t)²

builds a graph of backward nodes. ``L.grad_fn`` is the last one; each node's ``next_functions`` points to the
nodes of its inputs, down to ``AccumulateGrad`` nodes that write into the leaves' ``.grad``. Each node keeps
the tensors its derivative needs (``_saved_self``, ``_saved_result``, ...): ``SigmoidBackward0`` saves its
*output* y because σ'(z) = y (1 - y). ``torch.autograd.graph.saved_tensors_hooks`` lets us watch every tensor
being saved in the forward pass and used in the backward pass.

Only leaves get ``.grad``; for an intermediate (z) call ``z.retain_grad()`` first, or you get ``None`` and a
warning. ``backward()`` with no argument works only on a scalar; for a vector output v = g(w) pass
``gradient=u`` and autograd computes the vector-Jacobian product uᵀ J (J = ∂v/∂w) without ever forming J. For

    v = tanh(A w)        J = diag(1 - v²) A        uᵀ J = Aᵀ ((1 - v²) ⊙ u)

Run:  python pytorch_basis/03_computation_graph.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.autograd_utils import capture_error, capture_warnings, lesson_parser, section
from pytorch_basis.common import finite_float, positive_int, resolve_device, run_cli, seed_everything


def saved_attributes(node) -> dict[str, object]:
    """The ``_saved_*`` attributes of a backward node (what it keeps for the backward pass)."""
    saved = {}
    for name in dir(node):
        if name.startswith("_saved_"):
            try:
                saved[name] = getattr(node, name)
            except RuntimeError:  # already freed by a backward pass
                saved[name] = "<freed>"
    return saved


def walk_graph(fn, depth: int = 0, seen: set | None = None, lines: list | None = None) -> list[tuple]:
    """Depth-first walk from ``fn`` through ``next_functions``; returns ``[(depth, node name, saved names)]``."""
    seen = set() if seen is None else seen
    lines = [] if lines is None else lines
    if fn is None or fn in seen:
        return lines
    seen.add(fn)
    saved = saved_attributes(fn)
    lines.append((depth, type(fn).__name__, sorted(saved)))
    desc = ", ".join(f"{k}={_describe(v)}" for k, v in sorted(saved.items()))
    leaf = f"  -> leaf of shape {tuple(fn.variable.shape)}" if hasattr(fn, "variable") else ""
    print(f"{'    ' * depth}{type(fn).__name__}{leaf}{'   saves ' + desc if desc else ''}")
    for next_fn, _ in fn.next_functions:
        walk_graph(next_fn, depth + 1, seen, lines)
    return lines


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor{tuple(v.shape)}" if v.dim() else f"{v.item():.4f}"
    return str(v)


def forward(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, t: float) -> dict[str, torch.Tensor]:
    """The one-neuron model of the docstring; returns every intermediate."""
    z = (w * x).sum() + b  # (D,) * (D,) -> (D,) -> ()
    y = torch.sigmoid(z)
    loss = (y - t) ** 2
    return {"z": z, "y": y, "loss": loss}


def main(dim: int = 3, target: float = 0.0, device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)
    x = torch.randn(dim, device=dev)
    w = torch.randn(dim, device=dev, requires_grad=True)
    b = torch.zeros((), device=dev, requires_grad=True)

    section("walking grad_fn.next_functions from the loss to the leaves")
    packed: list[tuple[int, ...]] = []
    unpacked: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:  # called when a node saves a tensor (forward)
        packed.append(tuple(t.shape))
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:  # called when the backward pass reads it back
        unpacked.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = forward(w, b, x, target)
    graph = walk_graph(out["loss"].grad_fn)
    sig_node = out["y"].grad_fn
    print(f"SigmoidBackward0._saved_result equals y: {torch.equal(sig_node._saved_result, out['y'])}")
    print("MulBackward0 saved x (other) to compute dL/dw; _saved_self (w) is None: x needs no gradient.")

    section("retain_grad(): .grad on a non-leaf")
    out["z"].retain_grad()
    unpacked.clear()  # reading _saved_* above went through unpack too; count only the backward pass
    out["loss"].backward()
    y_grad, warns_after = capture_warnings(lambda: out["y"].grad)
    print(f"saved_tensors_hooks: {len(packed)} tensors packed in forward, {len(unpacked)} unpacked in backward")
    print(f"z.grad (retained) = dL/dz = {out['z'].grad.item():.6f}")
    print(f"y.grad (not retained) = {y_grad}  warning: {warns_after[0][:90] if warns_after else None}...")
    print(f"w.grad = {[round(g, 6) for g in w.grad.tolist()]}")
    print(f"b.grad = {b.grad.item():.6f} (= dL/dz, since dz/db = 1)")

    section("backward() needs a scalar, or an explicit gradient= (a vector-Jacobian product)")
    A = torch.randn(4, dim, device=dev)
    w2 = torch.randn(dim, device=dev, requires_grad=True)
    v = torch.tanh(A @ w2)  # (4, D) @ (D,) -> (4,)
    scalar_error = capture_error(lambda: v.backward(retain_graph=True))
    print(f"v.backward() on a vector: {scalar_error}")
    u = torch.randn(4, device=dev)
    v.backward(gradient=u)  # computes uᵀ J
    vjp_by_hand = A.T @ ((1 - v.detach() ** 2) * u)  # (D, 4) @ (4,) -> (D,)
    print(f"w2.grad after v.backward(gradient=u): {[round(g, 5) for g in w2.grad.tolist()]}")
    print(f"Aᵀ((1 - v²) ⊙ u) by hand:             {[round(g, 5) for g in vjp_by_hand.tolist()]}")

    return {
        "x": x.cpu(),
        "w": w.detach().cpu(),
        "b": b.detach().cpu(),
        "target": target,
        "graph": graph,
        "packed": packed,
        "unpacked": unpacked,
        "z_grad": out["z"].grad.cpu(),
        "w_grad": w.grad.cpu(),
        "b_grad": b.grad.cpu(),
        "y_grad": y_grad,
        "non_leaf_warning": (warns_after or [""])[0],
        "scalar_error": scalar_error,
        "A": A.cpu(),
        "w2": w2.detach().cpu(),
        "u": u.cpu(),
        "vjp": w2.grad.cpu(),
    }


def parse_args():
    parser = lesson_parser(__doc__)
    parser.add_argument("--dim", type=positive_int, default=3, help="number of inputs of the neuron")
    parser.add_argument("--target", type=finite_float, default=0.0, help="the target t in L = (y - t)^2")
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
