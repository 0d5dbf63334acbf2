"""Step 23: speculative decoding - a cheap draft proposes k tokens, the target verifies them in one forward.

A target forward over k+1 tokens reads the weights once, like a forward over one token, so checking k guesses
costs about one decode step. ``speculative.speculative_generate`` runs rounds of

    draft: d_1 .. d_k  (k cheap steps)  ->  target: one forward on [x, d_1 .. d_k]  ->  accept a prefix + 1 token

With greedy acceptance (``d_i == argmax p_i``) the output is the target's greedy output token for token; with
sampling, the accept/reject rule ``min(1, p/q)`` + residual ``max(0, p - q)`` emits exactly the target's
distribution (proof in ``speculative.py``). If each proposal is accepted with probability ``a``, a round emits
``(1 - a^{k+1}) / (1 - a)`` tokens for one target forward and k draft steps, so with a draft costing ``c`` of
a target step the speed-up is about ``(1 - a^{k+1}) / ((1 - a)(1 + k c))``: it needs a draft that is both
cheap and often right.

Drafts here (no training needed, so they work on the random ~125M-parameter target of lessons 19-22):

* ``int8`` -- the target itself with weight-only int8 weights (``quantize.py``): ~4x fewer bytes per step and
  nearly the same predictions;
* ``layers:N`` -- the target's first N layers + its norm and output head (``speculative.truncated_draft``),
  sharing the target's tensors (early exit).

A random model is a poor target for speculation: its next-token distribution is nearly flat, so any change (int8
rounding, a missing layer) flips the argmax. ``--damp-after N`` makes a random target whose layers N.. barely
change the residual stream (their ``wo`` and ``w2`` scaled by ``--damp``), so its ``layers:N`` early exit
agrees often -- a stand-in for a trained pair.

* ``layers:N+int8`` -- the same early exit with int8 weights (a quarter of the head's bytes; on a random target
  the int8 rounding flips many of its guesses).

Verification multiplies k+1 rows by every weight matrix. It reads the weights once, but PyTorch's CPU matmul
takes a GEMM path for more than a few rows that costs ~2 decode steps at k+1 = 7 (measured below). With
``--verify-kernel panels`` (the default where it builds) the target's linears multiply 1..16 rows with the
chapter's panel kernel (``cpu_kernels.PanelLinear``: a packed copy of each weight, one pass for up to 8 rows,
so k <= 7; 9..16 rows take two passes). The target's one-row steps -- plain greedy, the baseline -- go through
the same kernel, so the comparison is kernel against kernel; ``layers:N`` drafts keep PyTorch's ``nn.Linear``.

For each draft length k the lesson prints the acceptance rate, tokens per target forward and tok/s against
plain greedy decoding with the same static-cache decoder, interleaved, and checks the tokens are identical.

Run::

    python pytorch_llama2_from_scratch/23_speculative_decoding.py                    # ~3-6 min on one CPU thread
    python pytorch_llama2_from_scratch/23_speculative_decoding.py --draft layers:3 --ks 1 2 4
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import nonnegative_int, positive_float, positive_int
from pytorch_llama2_from_scratch import cpu_kernels
from pytorch_llama2_from_scratch.fast_decode import (
    FastDecoder,
    bytes_per_token,
    decode_parser,
    lesson_model,
    parse_decode_args,
    random_prompt,
    spread,
    warm_and_measure,
)
from pytorch_llama2_from_scratch.quantize import quantize_int8_
from pytorch_llama2_from_scratch.speculative import damp_deep_layers, speculative_generate, truncated_draft


def make_draft(model, spec: str):
    """``"int8"``, ``"layers:N"`` or ``"layers:N+int8"`` -> a draft Transformer with the target's vocabulary.

    ``layers:N+int8`` is the early exit with int8 weights: it reads N/L of the layers *and* a quarter of the
    output head's bytes (with a 32000-token vocabulary the head alone is a quarter of this target's weights)."""
    base, _, suffix = spec.partition("+")
    if suffix not in ("", "int8") or (suffix and not base.startswith("layers:")):
        raise ValueError(f"--draft must be 'int8', 'layers:N' or 'layers:N+int8', got {spec!r}")
    if base == "int8":
        return quantize_int8_(copy.deepcopy(model))
    if base.startswith("layers:"):
        try:
            n = int(base.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--draft layers:N needs an integer N, got {spec!r}") from None
        draft = truncated_draft(model, n)
        return quantize_int8_(draft) if suffix else draft  # replaces the draft's own modules: the target stays fp32
    raise ValueError(f"--draft must be 'int8', 'layers:N' or 'layers:N+int8', got {spec!r}")


@torch.inference_mode()
def verification_cost(model, decoder: FastDecoder, rows: int, repeats: int = 3) -> dict[str, float]:
    """Time of one target forward over ``rows`` tokens in decode steps of the same kernel (best of ``repeats``):
    with PyTorch's matmul and, if the model has :class:`cpu_kernels.PanelLinear` layers, with the panel kernel."""
    tokens = torch.arange(3, 3 + rows, device=decoder.cache.k0.device)[None]
    one = tokens[:, :1]

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    def in_steps():  # (k+1)-row forward / one-row step
        return best(lambda: decoder.prefill(tokens, 0, last_only=False)) / best(lambda: decoder.step(one, 0))

    panels = any(isinstance(m, cpu_kernels.PanelLinear) for m in model.modules())
    out = {}
    if panels:
        out["panel kernel"] = in_steps()
        cpu_kernels.use_panel_kernel_(model, False, keep=True)
    try:
        out["torch matmul"] = in_steps()
    finally:
        if panels:
            cpu_kernels.use_panel_kernel_(model, True, repack=False)
    return out


def main(
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    kv_heads: int = 4,
    intermediate: int = 2048,
    vocab: int = 32000,
    prompt_len: int = 16,
    new_tokens: int = 64,
    ks: tuple[int, ...] = (1, 2, 3, 4, 6),
    draft: str = "int8",
    damp_after: int | None = None,
    damp: float = 0.05,
    verify_kernel: str = "auto",
    repeats: int = 3,
    threads: int | None = 1,
    clock: str = "wall",
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    ks = tuple(int(k) for k in ks)
    total = prompt_len + new_tokens + max(ks)
    model, _, dev = lesson_model(hidden, layers, heads, kv_heads, intermediate, vocab, total, threads, device, seed)
    if damp_after is not None:
        damp_deep_layers(model, damp_after, damp)
        print(f"layers {damp_after}..{layers - 1}: wo and w2 scaled by {damp} (blocks close to the identity)")
    small = make_draft(model, draft)
    if verify_kernel not in ("auto", "panels", "torch"):
        raise ValueError(f"--verify-kernel must be auto, panels or torch, got {verify_kernel!r}")
    if verify_kernel == "panels" and not cpu_kernels.available_on(dev):
        raise ValueError(f"--verify-kernel panels needs the CPU kernel: {cpu_kernels.unavailable_reason() or dev}")
    use_panels = verify_kernel == "panels" or (verify_kernel == "auto" and cpu_kernels.available_on(dev))
    if use_panels:  # after make_draft: a layers:N draft shares the target's tensors but keeps plain nn.Linear
        cpu_kernels.use_panel_kernel_(model)
    print(
        f"target: {model.num_params() / 1e6:.1f} M parameters fp32 ({bytes_per_token(model, total) / 1e6:.0f} "
        f"MB/token); draft {draft!r}: {bytes_per_token(small, total) / 1e6:.0f} MB/token; {dev}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    prompt = random_prompt(vocab, prompt_len, seed)
    tdec = FastDecoder(model, max_seq_len=total)
    ddec = FastDecoder(small, max_seq_len=total)
    cost = {k + 1: verification_cost(model, tdec, k + 1) for k in ks}
    print("one target forward over k+1 tokens, in decode steps (best of 3):")
    for rows, c in cost.items():
        print(f"   k+1 = {rows}: " + ", ".join(f"{v:.2f} with the {name}" for name, v in c.items()))
    bpt = bytes_per_token(model, total)
    methods = {"plain greedy": (lambda: tdec.generate(prompt, new_tokens), bpt)}
    stats = {}
    for k in ks:

        def run(k=k):
            out, stats[k] = speculative_generate(model, small, prompt, new_tokens, k=k, target_decoder=tdec,
                                                 draft_decoder=ddec)  # fmt: skip
            return out

        methods[f"speculative k={k}"] = (run, bpt)
    methods[f"draft alone ({draft})"] = (lambda: ddec.generate(prompt, new_tokens), bytes_per_token(small, total))
    # the warm-up run also fills in the statistics, which are deterministic for greedy decoding
    res = warm_and_measure(methods, new_tokens, repeats, dev, model, clock, "plain greedy", progress=True)
    base = res["methods"]["plain greedy"]["median_tok_s"]
    print(f"\n{repeats} interleaved rounds, {new_tokens} new tokens, greedy, {clock} clock")
    print(f"   {'method':24s} {'tok/s':>20s} {'vs plain':>9s} {'accept':>7s} {'tok/fwd':>8s}  same tokens")
    for name, row in res["methods"].items():
        k = int(name.split("=")[1]) if name.startswith("speculative") else None
        acc = f"{100 * stats[k].acceptance_rate:6.1f}%" if k else "      -"
        tpf = f"{stats[k].tokens_per_target_forward:8.2f}" if k else "       -"
        print(
            f"   {name:24s} {spread(row['tok_s']):>20s} {row['median_tok_s'] / base:8.2f}x {acc} {tpf}  "
            f"{row['same_tokens']:.0%}"
        )
    best = max(ks, key=lambda k: res["methods"][f"speculative k={k}"]["median_tok_s"])
    print(f"best k = {best}: {res['methods'][f'speculative k={best}']['median_tok_s'] / base:.2f}x plain greedy")
    return {"speed": res, "stats": stats, "best_k": best, "verification_steps": cost, "verify_kernel":
            "panels" if use_panels else "torch"}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = decode_parser(__doc__, new_tokens=64, repeats=3)
    p.add_argument("--ks", type=positive_int, nargs="+", default=[1, 2, 3, 4, 6], help="draft lengths to compare")
    p.add_argument("--draft", default="int8",
                   help="'int8' (quantised target), 'layers:N' (first N layers) or 'layers:N+int8'")  # fmt: skip
    p.add_argument(
        "--damp-after", type=nonnegative_int, default=None, help="scale wo/w2 of layers >= N (agreeing early exit)"
    )
    p.add_argument("--damp", type=positive_float, default=0.05, help="the factor of --damp-after (default 0.05)")
    p.add_argument("--verify-kernel", choices=["auto", "panels", "torch"], default="auto",
                   help="matmul of the target's 1..16-row products (steps and verification): the chapter's panel "
                   "kernel (auto: where it builds) or PyTorch's")  # fmt: skip
    return parse_decode_args(p, argv)


if __name__ == "__main__":
    from pytorch_basis.common import run_cli
    from pytorch_llama2_from_scratch.generate import CLI_ERRORS

    run_cli(lambda: main(**vars(parse_args())), CLI_ERRORS, join_lines=True)
