"""Step 13: decode throughput on the CPU - our KV cache, no cache, and Hugging Face ``generate``, side by side.

One random LLaMA (``transformers.LlamaForCausalLM``, saved with ``save_pretrained`` and loaded with our HF
loader, so both hold the *same* weights) generates greedily, batch 1, from the same prompt:

* **ours + KV cache**: prefill once, then one token per forward (``generate.generate``);
* **ours, no cache**: every step re-runs the whole sequence (``use_cache=False``), so step ``t`` costs a forward
  over ``P + t`` tokens and ``n`` new tokens cost ``O(n (P + n))`` token-forwards instead of ``O(P + n)``;
* **HF generate**: ``LlamaForCausalLM.generate(do_sample=False)`` with its dynamic cache.

For each generated length (64 / 256 / 512 by default) the three runs are interleaved ``--repeats`` times and
the best time is kept (the least disturbed by other processes). Throughput = generated tokens / seconds,
prefill included. On a machine shared with other jobs, ``--threads 1 --clock cpu`` counts this process's CPU
time instead of elapsed time, which the other jobs disturb much less. The table goes to
``out/llama2/decode_benchmark.md``.

Run::

    python pytorch_llama2_from_scratch/13_decode_benchmark.py            # ~2-4 minutes on 2 CPU cores
    python pytorch_llama2_from_scratch/13_decode_benchmark.py --lengths 32 64 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import atomic_write_text, out_dir, positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.fast_decode import CLOCKS, random_llama_pair
from pytorch_llama2_from_scratch.generate import generate

METHODS = ("ours + KV cache", "ours, no cache", "HF generate")


def timed(fn, clock: str = "wall") -> tuple[float, list[int]]:
    now = CLOCKS[clock]
    t0 = now()
    out = fn()
    return now() - t0, out


def run_once(method: str, ours, hf, prompt: list[int], n: int, clock: str = "wall") -> tuple[float, list[int]]:
    with torch.inference_mode():
        if method == "ours + KV cache":
            return timed(lambda: generate(ours, [prompt], n)[0], clock)
        if method == "ours, no cache":
            return timed(lambda: generate(ours, [prompt], n, use_cache=False)[0], clock)
        ids = torch.tensor([prompt])
        seconds, out = timed(
            lambda: hf.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
            ),
            clock,
        )
        return seconds, out[0, len(prompt) :].tolist()


def markdown_table(rows: list[dict], meta: str) -> str:
    lines = [
        meta,
        "",
        "| new tokens | ours + KV cache (tok/s) | ours, no cache (tok/s) | HF generate (tok/s) "
        "| ours cache / HF | cache speed-up | same tokens as HF |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tps = r["tokens_per_s"]
        lines.append(
            f"| {r['n']} | {tps['ours + KV cache']:.0f} | {tps['ours, no cache']:.0f} | {tps['HF generate']:.0f} "
            f"| {r['ours_vs_hf']:.2f}x | {r['cache_speedup']:.1f}x | {r['match_hf']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(
    lengths: tuple[int, ...] = (64, 256, 512),
    repeats: int = 3,
    prompt_len: int = 16,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 352,
    vocab: int = 2048,
    threads: int | None = None,
    clock: str = "wall",
    seed: int = 1337,
    out: str | None = None,
) -> dict:
    """Benchmark; returns ``{"rows": [...], "table": markdown, "path": file}``."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    lengths = tuple(int(n) for n in lengths)
    max_len = prompt_len + max(lengths)
    ours, hf = random_llama_pair(  # a random LlamaForCausalLM and ours with the same weights (via save/load)
        hidden, layers, heads, kv_heads, intermediate, vocab, max_len, seed, attn_implementation="eager"
    )
    prompt = torch.randint(3, vocab, (prompt_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    n_params = sum(p.numel() for p in ours.parameters())
    print(
        f"model: {n_params / 1e6:.1f} M parameters (dim {hidden}, {layers} layers, {heads} heads / {kv_heads} kv), "
        f"prompt {prompt_len} tokens, batch 1, greedy, fp32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for method in METHODS:  # warm-up: first calls allocate and initialise lazily
        run_once(method, ours, hf, prompt, 8, clock)

    rows = []
    for n in lengths:
        best = dict.fromkeys(METHODS, float("inf"))
        outputs = {}
        for _ in range(repeats):
            for method in METHODS:  # interleaved, so a burst of load from elsewhere hits all three alike
                seconds, outputs[method] = run_once(method, ours, hf, prompt, n, clock)
                best[method] = min(best[method], seconds)
        tps = {m: n / best[m] for m in METHODS}
        ref = outputs["HF generate"]
        match = sum(a == b for a, b in zip(outputs["ours + KV cache"], ref)) / n
        row = {
            "n": n,
            "seconds": best,
            "tokens_per_s": tps,
            "ours_vs_hf": tps["ours + KV cache"] / tps["HF generate"],
            "cache_speedup": tps["ours + KV cache"] / tps["ours, no cache"],
            "match_hf": match,
            "cache_equals_no_cache": outputs["ours + KV cache"] == outputs["ours, no cache"],
            "tokens": dict(outputs),
        }
        rows.append(row)
        print(
            f"{n:4d} new tokens: "
            + ", ".join(f"{m} {tps[m]:7.0f} tok/s" for m in METHODS)
            + f" | ours/HF {row['ours_vs_hf']:.2f}x, cache speed-up {row['cache_speedup']:.1f}x, "
            f"tokens equal to HF {match:.0%}"
        )

    meta = (
        f"Decode throughput, batch 1, greedy, fp32, prompt {prompt_len} tokens, random LLaMA with "
        f"{n_params / 1e6:.1f} M parameters (dim {hidden}, {layers} layers, {heads} query / {kv_heads} kv heads, "
        f"vocab {vocab}); best of {repeats} interleaved runs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {clock} clock; {datetime.date.today().isoformat()}."
    )
    table = markdown_table(rows, meta)
    path = Path(out) if out else out_dir("llama2") / "decode_benchmark.md"
    atomic_write_text(table, path)
    print(f"\n{table}\nwritten to {path}")
    return {"rows": rows, "table": table, "path": path, "hf_model": hf, "prompt": prompt}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=positive_int, nargs="+", default=[64, 256, 512], help="generated tokens per run")
    p.add_argument("--repeats", type=positive_int, default=3, help="interleaved runs per length; the best is kept")
    p.add_argument("--prompt-len", type=positive_int, default=16)
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--kv-heads", type=positive_int, default=2)
    p.add_argument("--intermediate", type=positive_int, default=352)
    p.add_argument("--vocab", type=positive_int, default=2048)
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, steadier on a shared machine "
        "(use it with --threads 1)",
    )
    p.add_argument("--seed", type=seed_int, default=1337)
    p.add_argument("--out", default=None, help="markdown file (default: out/llama2/decode_benchmark.md)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
