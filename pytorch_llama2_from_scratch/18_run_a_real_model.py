"""Step 18 - run a real model: what to download for each family, how much memory it needs, and how fast it decodes.

Everything of steps 14-17 comes together: ``loading.load_checkpoint`` reads the Hugging Face folder you downloaded
(family detected from ``config.json``, sharded safetensors, weights kept in their stored bf16), ``chat.py`` renders
the checkpoint's chat template and stops on its EOS ids. This lesson prints, for the smallest published model of
each family, the download command, the parameter count N (computed from the published config by
``ModelArgs.num_params``), the bf16 size 2N bytes, and the RAM it needs:

    RAM ~ 2N (weights, bf16)  +  KV cache  2 * n_layers * context * n_kv_heads * head_dim * 2 bytes  +  ~0.5 GiB

Offline parts (no download needed):

* ``--memory``: write a random bf16 checkpoint of one family's shape to disk (sharded, with its index), then load
  it in a fresh process and print the peak memory the loading added, relative to the weights' size (the loader
  builds the model around the memory-mapped tensors, so this stays near 1x instead of 2x).
* ``--bench``: decode speed (tokens/s, batch 1, greedy, KV cache) of random bf16 models at each family's
  smallest published shape, measured side by side in interleaved rounds.

Run:  python pytorch_llama2_from_scratch/18_run_a_real_model.py [--memory --shape "Llama 3.2"] [--bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import positive_int, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch.families import PUBLISHED, args_for, decode_tokens_per_s, write_random_checkpoint
from pytorch_llama2_from_scratch.model import Transformer, kv_cache_bytes

GIB = 2**30
LICENCE = {"Llama 3.2": "accept Meta's licence on the model page, then `hf auth login`"}


def requirements(context: int = 4096) -> list[dict]:
    """Per family: id, parameters, bf16 bytes, KV cache bytes at ``context`` tokens, RAM estimate."""
    rows = []
    for name, entry in PUBLISHED.items():
        args = args_for(name)
        n = args.num_params()
        kv = kv_cache_bytes(args, 1, context, torch.bfloat16)
        rows.append(dict(family=name, hf_id=entry["hf_id"], params=n, bf16_bytes=2 * n, kv_bytes=kv,
                         ram_bytes=2 * n + kv + GIB // 2))  # fmt: skip
    return rows


_MEASURE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pytorch_llama2_from_scratch.loading import measure_loading_memory
r = measure_loading_memory(sys.argv[2], max_seq_len=64)
print(json.dumps({k: r[k] for k in ("weight_bytes", "peak_extra_bytes", "ratio")}
                 | {"dtype": str(r["model"].tok_embeddings.weight.dtype)}))
"""


def measure_memory(shape: str, out: str | None = None, **config_changes) -> dict:
    """Write a random bf16 checkpoint of ``shape`` and measure its loading in a fresh process."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        directory = write_random_checkpoint(shape, Path(tmp) / "ck", shard_bytes=GIB // 2, **config_changes)
        files = sorted(p.name for p in directory.iterdir())
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(Path(__file__).resolve().parents[1]), str(directory)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the measuring process failed: {proc.stderr.strip().splitlines()[-1]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["files"] = files
    return result


def random_model(name: str, dtype: torch.dtype, max_seq_len: int, seed: int, **config_changes) -> Transformer:
    """A random model of a published shape, allocated once directly in ``dtype``."""
    args = args_for(name, max_seq_len=max_seq_len, max_batch_size=1).replace(**config_changes)
    with torch.device("meta"):
        model = Transformer(args)
    model.to(dtype).to_empty(device="cpu")
    model.tie_weights()
    torch.manual_seed(seed)
    model.init_weights()
    model.reset_cache()
    return model.eval()


def bench(names: list[str], dtype: torch.dtype, n_tokens: int, repeats: int, seed: int, **config_changes) -> dict:
    """Decode tokens/s of every family, interleaved rounds (a burst of load elsewhere hits all alike)."""
    models = {n: random_model(n, dtype, 64, seed, **config_changes) for n in names}
    runs: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for n, m in models.items():
            runs[n].append(decode_tokens_per_s(m, n_tokens))
    return {n: dict(best=max(v), worst=min(v), runs=v) for n, v in runs.items()}


def main(
    memory: bool = False,
    shape: str = "SmolLM2",
    run_bench: bool = False,
    families: list[str] | None = None,
    bench_tokens: int = 16,
    repeats: int = 3,
    dtype: str = "bfloat16",
    seed: int = 0,
    out: str | None = None,
    config_changes: dict | None = None,
) -> dict:
    """``config_changes``: config.json fields changed for ``--memory`` (e.g. fewer layers for a quick try)."""
    seed_everything(seed)
    config_changes = config_changes or {}
    rows = requirements()
    print(f"{'family':<10} {'example model':<38} {'params':>8} {'bf16':>8} {'KV 4k ctx':>9} {'RAM':>8}")
    for r in rows:
        print(f"{r['family']:<10} {r['hf_id']:<38} {r['params'] / 1e9:7.2f}B {r['bf16_bytes'] / GIB:6.2f}GiB "
              f"{r['kv_bytes'] / GIB:7.2f}GiB {r['ram_bytes'] / GIB:6.1f}GiB")  # fmt: skip
    print("\ndownload one (huggingface_hub's CLI), then chat with it:")
    for r in rows:
        local = "models/" + r["hf_id"].split("/")[-1]
        note = f"   # {LICENCE[r['family']]}" if r["family"] in LICENCE else ""
        print(f"  hf download {r['hf_id']} --local-dir {local}{note}")
    print("  python pytorch_llama2_from_scratch/chat.py --checkpoint models/SmolLM2-135M-Instruct")
    result: dict = {"rows": rows}
    if memory:
        m = measure_memory(shape, out, **config_changes)
        print(f"\nrandom {shape}-shaped checkpoint ({len(m['files'])} files: {', '.join(m['files'][:3])}, ...): "
              f"weights {m['weight_bytes'] / 2**20:.0f} MiB {m['dtype']}, loading added at most "
              f"{m['peak_extra_bytes'] / 2**20:.0f} MiB peak = {m['ratio']:.2f}x the weights")  # fmt: skip
        result["memory"] = m
    if run_bench:
        names = families or [n for n in PUBLISHED if n != "Mistral"]
        b = bench(names, getattr(torch, dtype), bench_tokens, repeats, seed)
        print(f"\ndecode, batch 1, greedy, {dtype}, {bench_tokens} tokens after an 8-token prompt, {repeats} "
              f"interleaved rounds, torch {torch.__version__}, {torch.get_num_threads()} threads:")  # fmt: skip
        for n, v in b.items():
            print(f"  {n:<10} best {v['best']:6.2f} tok/s   worst {v['worst']:6.2f} tok/s")
        result["bench"] = b
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory", action="store_true", help="measure loading a random bf16 checkpoint")
    p.add_argument("--shape", default="SmolLM2", choices=list(PUBLISHED), help="family shape for --memory")
    p.add_argument("--bench", dest="run_bench", action="store_true", help="decode tokens/s of every family")
    p.add_argument("--families", nargs="+", choices=list(PUBLISHED), default=None, help="for --bench")
    p.add_argument("--bench-tokens", type=positive_int, default=16)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--seed", type=seed_int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
