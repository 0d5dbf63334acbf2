"""Step 01 - the LLaMA-2 architecture and what changes from GPT-2; parameter counts from the args alone.

LLaMA-2 (Touvron et al., 2023) is a decoder-only transformer like GPT-2, with five changes:

    GPT-2                               LLaMA-2
    ---------------------------------   ------------------------------------------------------------
    LayerNorm (mean, var, bias)         RMSNorm: x / sqrt(mean(x^2) + eps) * g             (lesson 04)
    learned absolute positions wpe      rotary embeddings applied to q, k in every layer    (lesson 03)
    GELU MLP, 4*D hidden                SwiGLU: w2(silu(w1 x) * w3 x), ~8/3*D hidden         (lesson 08)
    n_head key/value heads              n_kv_heads <= n_heads (grouped-query attention)     (lesson 07)
    biases everywhere, tied lm_head     no biases, separate output matrix

Both are pre-norm: h = x + Attn(Norm(x)); out = h + FFN(Norm(h)) (lesson 05). ``ModelArgs`` holds every size;
``ModelArgs.num_params()`` counts parameters without building anything:

    per layer = D*H*hd + 2*D*KV*hd + H*hd*D  (wq, wk, wv, wo)  + 3*D*F (w1, w2, w3) + 2*D (two RMSNorms)
    total     = n_layers * per layer + D (final norm) + 2*V*D (embeddings + output)

Run:  python pytorch_llama2_from_scratch/01_llama_architecture.py [--preset llama2-13b]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

from pytorch_basis.common import run_cli
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer


def _human(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def breakdown(args: ModelArgs) -> dict[str, int]:
    """Parameters per component, from the args (the same terms as ``ModelArgs.num_params``)."""
    d, hd, f, l = args.dim, args.head_dim, args.ffn_hidden, args.n_layers
    return {
        "tok_embeddings (V*D)": args.vocab_size * d,
        "attention (wq,wk,wv,wo)": l * (2 * d * args.n_heads * hd + 2 * d * args.n_kv_heads * hd),
        "feed_forward (w1,w2,w3)": l * 3 * d * f,
        "norms (2 per layer + final)": (2 * l + 1) * d,
        "output (D*V)": d * args.vocab_size,
    }


def main(preset: str = "llama2-7b") -> dict:
    print(f"{'preset':<12} {'dim':>5} {'layers':>6} {'heads':>5} {'kv':>3} {'hd':>4} {'ffn':>6} {'params':>10}")
    counts = {}
    for name in ModelArgs.preset_names():
        a = ModelArgs.preset(name)
        counts[name] = a.num_params()
        print(
            f"{name:<12} {a.dim:>5} {a.n_layers:>6} {a.n_heads:>5} {a.n_kv_heads:>3} {a.head_dim:>4} "
            f"{a.ffn_hidden:>6} {_human(counts[name]):>10}"
        )

    args = ModelArgs.preset(preset)
    parts = breakdown(args)
    total = sum(parts.values())
    print(f"\n{preset}: where the {total:,} parameters live")
    for part, n in parts.items():
        print(f"  {part:<30} {n:>15,}  {100 * n / total:5.1f}%")
    assert total == args.num_params()

    # Build the tiny model and check the analytic count against the real one.
    tiny = ModelArgs.preset("tiny")
    model = Transformer(tiny)
    built = sum(p.numel() for p in model.parameters())
    print(f"\ntiny model: analytic {tiny.num_params():,} parameters, built {built:,}")
    print(model.layers[0])
    return {"counts": counts, "breakdown": parts, "tiny_analytic": tiny.num_params(), "tiny_built": built}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama2-7b", choices=ModelArgs.preset_names())
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
