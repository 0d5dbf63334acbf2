"""Step 20: a static KV cache and ``torch.compile`` of the decode step - removing the time between the bytes.

The chapter's cache (lesson 06) already pre-allocates its buffers, but every step attends over
``cache[:, :start_pos + 1]``: a new shape per step, which a compiler must either re-specialise or treat as
dynamic. :class:`fast_decode.FastDecoder` keeps one shape for the whole generation:

* cache per layer ``(B, KV, S_max, hd)``, written in place: ``cache.index_copy_(2, pos, k_new)``;
* the query attends over **all** ``S_max`` slots with the mask ``slot <= pos`` (the extra slots cost
  ``2 * L * S_max * KV * hd`` bytes per step, small next to the weights at short contexts);
* the position is a tensor ``pos`` (1,), so step t and step t+1 are the same graph with different data.

A fixed-shape step compiles once: ``torch.compile(step, fullgraph=True, dynamic=False)`` traces the ~450 small
operations of one step into one graph, fuses the elementwise ones (RMSNorm, RoPE, SiLU * gate, residual adds)
into a few generated kernels and calls the matmuls directly; on CUDA ``mode="reduce-overhead"`` also records a
CUDA graph, so one step is one launch. On CPU the step's attention is written as broadcasts and sums
(``FastDecoder(step_attention="reduce")``, the default there when compiled): inductor fuses it into two loops per
layer, where ``F.scaled_dot_product_attention`` is an opaque call with its own set-up cost in every layer (+2 %
tok/s measured at 125M). The compile itself takes time, shown here, and pays off only after::

    break-even tokens  n*  =  compile seconds / (1 / eager tok/s  -  1 / compiled tok/s)

This lesson checks that the static, compiled and dynamic decoders produce the same tokens as Hugging Face's
``generate`` on the same random ~125M-parameter LLaMA and times them interleaved, with the GEMV bandwidth probe.

Run::

    python pytorch_llama2_from_scratch/20_static_cache_and_compile.py           # several minutes (compile)
    python pytorch_llama2_from_scratch/20_static_cache_and_compile.py --layers 2 --vocab 4000 --no-compile
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_llama2_from_scratch.fast_decode import (
    FastDecoder,
    benchmark,
    decode_parser,
    describe,
    lesson_model,
    parse_decode_args,
    spread,
)


def print_rows(result: dict, baseline: str | None = "HF generate") -> None:
    """One line per method: tok/s (median [min-max]), % of the bandwidth limit, ratio to ``baseline``."""
    rows = result["methods"]
    base = rows[baseline]["median_tok_s"] if baseline in rows else None
    print(f"   {'method':24s} {'tok/s':>22s} {'% of limit':>22s} {'vs ' + str(baseline):>12s}  same tokens")
    for name, row in rows.items():
        ratio = f"{row['median_tok_s'] / base:.2f}x" if base else "-"
        same = f"{row['same_tokens']:.0%}" if "same_tokens" in row else "-"
        print(f"   {name:24s} {spread(row['tok_s']):>22s} {spread(row['pct_of_limit']):>22s} {ratio:>12s}  {same}")


def main(
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    kv_heads: int = 4,
    intermediate: int = 2048,
    vocab: int = 32000,
    prompt_len: int = 16,
    new_tokens: int = 128,
    repeats: int = 5,
    compile: bool = True,
    threads: int | None = 1,
    clock: str = "wall",
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    model, hf, dev = lesson_model(hidden, layers, heads, kv_heads, intermediate, vocab, prompt_len + new_tokens,
                                  threads, device, seed, with_hf=True)  # fmt: skip
    dec = FastDecoder(model, max_seq_len=prompt_len + new_tokens)
    print(
        f"model: {describe(model, dev)}; static cache: {dec.cache.n_layers} layers x 2 x "
        f"{tuple(dec.cache.k0.shape)} = {dec.cache.nbytes() / 1e6:.1f} MB"
    )
    if compile:
        print("compiling the decode step (first call: tracing + code generation) ...")
    result = benchmark(
        model, prompt_len, new_tokens, repeats, compile=compile, hf_model=hf, clock=clock, seed=seed, progress=True
    )
    print(
        f"\n{repeats} interleaved rounds, {new_tokens} new tokens after a {prompt_len}-token prompt, greedy, "
        f"{clock} clock; GEMV bandwidth {spread(result['bandwidth_GBs'], '.2f')} GB/s, "
        f"{result['bytes_per_token'] / 1e6:.0f} MB/token -> limit {result['limit_tok_s']:.1f} tok/s"
    )
    print_rows(result)
    if compile:
        print(
            f"\ncompile time {result['compile_seconds']:.1f} s; break-even after "
            f"{result['break_even_tokens']:.0f} generated tokens (compile + compiled decoding < eager static)"
        )
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = decode_parser(__doc__, new_tokens=128, repeats=5)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    return parse_decode_args(p, argv)


if __name__ == "__main__":
    from pytorch_basis.common import run_cli
    from pytorch_llama2_from_scratch.generate import CLI_ERRORS

    run_cli(lambda: main(**vars(parse_args())), CLI_ERRORS, join_lines=True)
