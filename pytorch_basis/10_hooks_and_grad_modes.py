"""Step 10 — hooks (tensor and module) and the three "not training" switches: no_grad, inference_mode, eval().

What this step adds: ways to look at and change what flows through autograd, and to turn it off.

Hooks
* ``t.register_hook(fn)``: ``fn(grad)`` runs when dL/dt has been computed; returning a tensor replaces the
  gradient that flows on. With h = 2x and a hook g ↦ 10 g on h, x.grad becomes 10 · 2 = 20 per element.
* ``module.register_forward_pre_hook`` / ``register_forward_hook``: see (or change) a module's inputs and
  outputs — how activations are captured for inspection.
* ``module.register_full_backward_hook``: ``fn(module, grad_input, grad_output)`` with dL/d(output) and
  dL/d(input) of that module.
Every ``register_*`` returns a handle; ``handle.remove()`` takes the hook off.

Switches
* ``model.eval()`` changes *layers* (dropout off, batch norm uses running stats). Autograd still records.
* ``torch.no_grad()`` stops recording: results have ``requires_grad=False``, no graph, less memory. They are
  ordinary tensors and may be used in a graph later.
* ``torch.inference_mode()`` also stops recording and skips version counters, so it is a bit faster; its
  results are "inference tensors" that can never enter a graph later ("Inference tensors cannot be saved
  for backward").
For evaluation you usually want both ``model.eval()`` and ``torch.no_grad()`` (or ``inference_mode``).

Run:  python pytorch_basis/10_hooks_and_grad_modes.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch
from torch import nn

from pytorch_basis.autograd_utils import capture_error, lesson_parser, section
from pytorch_basis.common import positive_int, resolve_device, run_cli, seed_everything


def make_model(d_in: int = 4, d_hidden: int = 8, p_drop: float = 0.5) -> nn.Sequential:
    """Linear → ReLU → Dropout → Linear: small, with one layer that behaves differently in eval()."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Dropout(p_drop), nn.Linear(d_hidden, 1))


def main(d_in: int = 4, batch: int = 5, device: str = "cpu", seed: int = 0) -> dict:
    seed_everything(seed)
    dev = resolve_device(device)

    section("tensor hooks: watch and change a gradient")
    x = torch.randn(3, device=dev, requires_grad=True)
    h = 2 * x
    seen = []
    h.register_hook(lambda g: seen.append(g.clone()))  # returns None: only watches
    h.register_hook(lambda g: 10 * g)  # returns a tensor: replaces the gradient
    h.sum().backward()
    print(f"dL/dh seen by the first hook: {seen[0].tolist()}")
    print(f"x.grad with the x10 hook on h: {x.grad.tolist()}  (without it: 2.0 each)")
    tensor_hook_grad = x.grad.clone()

    section("module hooks: capture activations and the gradients at a layer")
    model = make_model(d_in).to(dev)
    inputs = torch.randn(batch, d_in, device=dev)
    captured: dict[str, torch.Tensor] = {}
    calls: list[str] = []

    def save_input(module, args):  # forward pre-hook: before module.forward(*args)
        calls.append("pre")
        captured["input"] = args[0].detach()

    def save_output(module, args, output):  # forward hook: after module.forward
        calls.append("forward")
        captured["relu_out"] = output.detach()

    def save_grad_output(module, grad_input, grad_output):  # backward hook: dL/d(output), dL/d(input)
        calls.append("backward")
        captured["grad_out"] = grad_output[0].detach()

    handles = [
        model[0].register_forward_pre_hook(save_input),
        model[1].register_forward_hook(save_output),
        model[3].register_full_backward_hook(save_grad_output),
    ]
    model.eval()  # no dropout noise, so the check below is exact
    out = model(inputs)
    out.retain_grad()
    loss = (out**2).mean()
    loss.backward()
    print(
        f"forward_pre_hook saw the input {tuple(captured['input'].shape)}; forward_hook saw the ReLU output "
        f"{tuple(captured['relu_out'].shape)}, fraction zero = {(captured['relu_out'] == 0).float().mean():.2f}"
    )
    print(f"full_backward_hook grad_output equals dL/d(out): {torch.allclose(captured['grad_out'], out.grad)}")
    print(f"hook calls for one forward + backward: {calls}")
    n_calls = len(calls)
    for handle in handles:
        handle.remove()
    model(inputs).sum().backward()
    print(f"after handle.remove(): {len(calls) - n_calls} more hook calls for another forward + backward")

    section("eval() changes layers, not autograd")
    model.train()
    train_a, train_b = model(inputs), model(inputs)
    model.eval()
    eval_a, eval_b = model(inputs), model(inputs)
    print(f"train(): two forwards equal? {torch.equal(train_a, train_b)} (dropout is random)")
    print(
        f"eval():  two forwards equal? {torch.equal(eval_a, eval_b)}; output still requires_grad="
        f"{eval_a.requires_grad}, grad_fn={type(eval_a.grad_fn).__name__}"
    )

    section("no_grad vs inference_mode")
    with torch.no_grad():
        out_no_grad = model(inputs)
    with torch.inference_mode():
        out_inference = model(inputs)
    print(
        f"no_grad:        requires_grad={out_no_grad.requires_grad} grad_fn={out_no_grad.grad_fn} "
        f"is_inference={out_no_grad.is_inference()}"
    )
    print(
        f"inference_mode: requires_grad={out_inference.requires_grad} grad_fn={out_inference.grad_fn} "
        f"is_inference={out_inference.is_inference()}"
    )
    w = torch.ones(1, device=dev, requires_grad=True)
    (out_no_grad * w).sum().backward()  # a no_grad result is an ordinary tensor: fine in a later graph
    print(f"using the no_grad result in a new graph: ok, w.grad = {w.grad.item():.4f} (= sum of the outputs)")
    inference_error = capture_error(lambda: (out_inference * w).sum().backward())
    print(f"using the inference_mode result in a new graph: {inference_error}")
    clone_ok = (out_inference.clone() * w).sum().requires_grad  # a clone outside inference mode is normal
    print(f"out_inference.clone() can enter a graph: {clone_ok}")

    return {
        "x": x.detach().cpu(),
        "hook_seen_grad": seen[0].cpu(),
        "tensor_hook_grad": tensor_hook_grad.cpu(),
        "model": model.cpu(),
        "inputs": inputs.cpu(),
        "hooked": {k: v.cpu() for k, v in captured.items()},
        "hook_calls": calls,
        "out_eval": out.detach().cpu(),
        "train_outputs_equal": torch.equal(train_a, train_b),
        "eval_outputs_equal": torch.equal(eval_a, eval_b),
        "eval_requires_grad": eval_a.requires_grad,
        "no_grad_requires_grad": out_no_grad.requires_grad,
        "inference_is_inference": out_inference.is_inference(),
        "no_grad_is_inference": out_no_grad.is_inference(),
        "inference_error": inference_error,
        "hooks_after_remove": len(calls) - n_calls,
    }


def parse_args():
    parser = lesson_parser(__doc__)
    parser.add_argument("--d-in", type=positive_int, default=4)
    parser.add_argument("--batch", type=positive_int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
