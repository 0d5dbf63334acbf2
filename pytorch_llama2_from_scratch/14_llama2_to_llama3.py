"""Step 14 - from Llama 2 to Llama 3: the same decoder, a bigger vocabulary, GQA everywhere, and RoPE scaling.

What changed between the published configs (Touvron et al. 2023; Grattafiori et al. 2024, "The Llama 3 herd"):

* vocabulary 32,000 SentencePiece pieces -> 128,256 byte-level BPE tokens (``tokenizer.json``, lesson 17): fewer
  tokens per text, but a 128256 x dim embedding (and output matrix, tied in 3.2 1B/3B);
* grouped-query attention (lesson 07) in every size, 8 KV heads;
* ``rope_theta`` 10,000 -> 500,000: slower rotations, so positions far apart still get distinct angles;
* context 4,096 -> 8,192 (Llama 3) -> 131,072 (3.1/3.2) with **llama3 RoPE scaling**.

Why scaling: dimension pair i of q and k rotates by m * theta_i at position m, with wavelength
lambda_i = 2 pi / theta_i. During pre-training (context L = 8192) a pair whose wavelength exceeds L never completed
a turn: angles beyond m = L are *new* to it, and attention breaks down past the training length. Llama 3.1
divides the slow frequencies by s = factor (32 for 3.2) so that s * L positions map onto angles seen in training,
keeps the fast ones (short-range detail) and blends in between (``model.llama3_scale_inv_freq``)::

    lambda_i < L / high_freq_factor            theta_i' = theta_i
    lambda_i > L / low_freq_factor             theta_i' = theta_i / s
    otherwise, g = (L / lambda_i - low) / (high - low):   theta_i' = (1 - g) theta_i / s + g theta_i

The lesson prints the config differences, checks the three bands on the real 3.2 settings, and plots
theta_i' against theta_i (``out/llama2/14_rope_scaling.png``).

Run:  python pytorch_llama2_from_scratch/14_llama2_to_llama3.py [--no-plot]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules


from pytorch_basis.common import out_dir, run_cli
from pytorch_llama2_from_scratch.families import args_for
from pytorch_llama2_from_scratch.model import ModelArgs, rope_inv_freq


def main(plot: bool = True) -> dict:
    l2 = ModelArgs.preset("llama2-7b")
    l3 = args_for("Llama 3.2")
    rows = [
        ("vocab_size", l2.vocab_size, l3.vocab_size),
        ("dim / layers", f"{l2.dim} / {l2.n_layers}", f"{l3.dim} / {l3.n_layers}"),
        ("query / KV heads", f"{l2.n_heads} / {l2.n_kv_heads}", f"{l3.n_heads} / {l3.n_kv_heads}"),
        ("rope_theta", f"{l2.rope_theta:g}", f"{l3.rope_theta:g}"),
        ("context", l2.max_seq_len, l3.max_seq_len),
        ("tied embeddings", l2.tie_embeddings, l3.tie_embeddings),
        ("parameters", f"{l2.num_params() / 1e9:.2f} B", f"{l3.num_params() / 1e9:.2f} B"),
    ]
    print(f"{'':18} {'Llama-2 7B':>14} {'Llama-3.2 1B':>14}")
    for name, a, b in rows:
        print(f"{name:18} {a!s:>14} {b!s:>14}")
    emb = l3.vocab_size * l3.dim
    print(f"embedding of Llama-3.2 1B: {emb / 1e6:.0f} M parameters = {emb / l3.num_params():.0%} of the model")

    scaling = l3.rope_scaling
    L, s = scaling["original_max_position_embeddings"], scaling["factor"]
    plain = rope_inv_freq(l3.head_dim, l3.rope_theta)  # (hd/2,)
    scaled = rope_inv_freq(l3.head_dim, l3.rope_theta, scaling=scaling)
    wavelen = 2 * math.pi / plain
    fast = wavelen < L / scaling["high_freq_factor"]
    slow = wavelen > L / scaling["low_freq_factor"]
    mid = ~fast & ~slow
    ratio = scaled / plain
    print(
        f"\nllama3 scaling (L = {L}, factor {s:g}) over the {plain.numel()} frequency pairs of head_dim {l3.head_dim}:"
        f"\n  {int(fast.sum())} fast pairs (wavelength < {L / scaling['high_freq_factor']:.0f}) unchanged, "
        f"ratio {ratio[fast].min():.3f}..{ratio[fast].max():.3f}"
        f"\n  {int(mid.sum())} pairs blended, ratio {ratio[mid].min():.3f}..{ratio[mid].max():.3f}"
        f"\n  {int(slow.sum())} slow pairs (wavelength > {L}) divided by {s:g}, ratio {ratio[slow].min():.4f}"
    )
    # the slowest pair at the new context length turns by the angle it had at new_context / s before scaling
    m = l3.max_seq_len
    print(f"  slowest pair at position {m}: angle {m * scaled[-1]:.3g} rad = unscaled angle at position "
          f"{m * scaled[-1] / plain[-1]:.0f} ({m} / {s:g})")  # fmt: skip

    path = None
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.loglog(wavelen, plain, "o", ms=3, label="Llama 3 (no scaling)")
        ax.loglog(wavelen, scaled, "o", ms=3, label=f"Llama 3.1/3.2 llama3 scaling (factor {s:g})")
        for x, text in ((L / scaling["high_freq_factor"], "L / high"), (L / scaling["low_freq_factor"], "L / low")):
            ax.axvline(x, color="gray", ls="--", lw=0.8)
            ax.text(x, plain.min().item(), f" {text}", rotation=90, va="bottom", fontsize=8)
        ax.set_xlabel("wavelength 2π/θ_i (positions)")
        ax.set_ylabel("frequency θ_i (radians per position)")
        ax.set_title(f"RoPE frequencies of Llama-3.2 1B (head_dim {l3.head_dim}, θ = {l3.rope_theta:g}, L = {L})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir("llama2") / "14_rope_scaling.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"plot: {path}")
    return {"rows": rows, "plain": plain, "scaled": scaled, "wavelen": wavelen, "scaling": scaling, "plot": path}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
