"""Step 10: inference strategies - how one vector of logits becomes the next token.

A model gives logits ``z`` (one per vocabulary entry) for the next token. This lesson applies every strategy of
``sampling.py`` to one hand-made ``z`` so you can see what each keeps, then compares greedy decoding with beam
search on a toy bigram "language model" where the greedy choice is a trap:

* greedy ``argmax z``; temperature ``softmax(z / T)``; random sampling ``x ~ softmax(z)``;
* top-k (keep the k largest), top-p / nucleus (smallest set with mass >= p), min-p (keep ``p_v >= min_p * p_max``);
* repetition penalty (divide positive / multiply negative logits of tokens already generated);
* beam search (keep the ``num_beams`` best partial sequences; length penalty; early stopping; EOS);
* and the clear errors for impossible settings (``temperature <= 0``, ``top_p`` outside (0, 1], ``k < 1`` ...).

Run::

    python pytorch_llama2_from_scratch/10_inference_strategies.py        # a second; writes a bar chart PNG
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import matplotlib
import torch
from torch import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pytorch_basis.common import out_dir, run_cli, seed_everything, seed_int
from pytorch_llama2_from_scratch import sampling as S
from pytorch_llama2_from_scratch.generate import beam_search, generate

# next word after "The cat sat on the ..."; "mat" and "sofa" were already used earlier in the text
WORDS = ["mat", "floor", "sofa", "roof", "bed", "table", "moon", "idea", "banana", "quantum"]
LOGITS = [3.0, 2.2, 1.9, 1.2, 1.0, 0.7, -0.5, -1.5, -2.0, -3.0]
HISTORY = ["mat", "sofa"]


def processed_distributions(z: torch.Tensor, history: torch.Tensor) -> dict[str, torch.Tensor]:
    """``label -> probabilities`` after each processor (``z`` is ``(1, V)``)."""
    return {
        "softmax(z)  (random sampling)": z,
        "temperature 0.5": S.apply_temperature(z, 0.5),
        "temperature 2.0": S.apply_temperature(z, 2.0),
        "top-k 3": S.top_k_filter(z, 3),
        "top-p 0.8": S.top_p_filter(z, 0.8),
        "min-p 0.2": S.min_p_filter(z, 0.2),
        "repetition penalty 1.5": S.apply_repetition_penalty(z, history, 1.5),
    }


class BigramLM(nn.Module):
    """A toy language model whose next-token distribution depends on the last token only (a lookup table).

    It has the call signature of our ``Transformer`` (``forward(tokens, start_pos, use_cache, ...) -> (B, T, V)``
    logits), so ``generate`` and ``beam_search`` drive it unchanged; it needs no KV cache.
    """

    VOCAB = ["<s>", "</s>", "the", "a", "cat", "dog", "sat", "."]
    NEXT = {  # P(next | last)
        "<s>": {"the": 0.55, "a": 0.45},
        "the": {"cat": 0.36, "dog": 0.34, "sat": 0.30},  # after "the" the model is unsure ...
        "a": {"cat": 0.9, "dog": 0.1},  # ... after "a" it is sure
        "cat": {".": 0.52, "sat": 0.48},
        "dog": {"sat": 0.5, ".": 0.5},
        "sat": {".": 0.7, "</s>": 0.3},
        ".": {"</s>": 1.0},
        "</s>": {"</s>": 1.0},
    }

    def __init__(self):
        super().__init__()
        ids = {w: i for i, w in enumerate(self.VOCAB)}
        probs = torch.full((len(self.VOCAB), len(self.VOCAB)), 1e-6)
        for prev, nxt in self.NEXT.items():
            for word, p in nxt.items():
                probs[ids[prev], ids[word]] = p
        self.table = nn.Parameter(probs.log(), requires_grad=False)  # (V, V) logits
        self.args = SimpleNamespace(max_seq_len=32, max_batch_size=8)
        self.ids = ids

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, use_cache: bool = True, **_) -> torch.Tensor:
        return self.table[tokens]  # (B, T) -> (B, T, V)

    def log_prob(self, tokens: list[int]) -> float:
        """log P(tokens[1:] | tokens[0]) = sum_t log softmax(table[tokens[t-1]])[tokens[t]]."""
        lp = self.table.log_softmax(-1)
        return sum(float(lp[a, b]) for a, b in zip(tokens[:-1], tokens[1:]))

    def text(self, tokens: list[int]) -> str:
        return " ".join(self.VOCAB[t] for t in tokens)


def show_errors() -> list[str]:
    """Impossible settings fail early with a message naming the parameter."""
    z = torch.tensor([LOGITS])
    attempts = [
        ("temperature=0 when sampling", lambda: S.SamplingConfig.from_strategy("temperature", temperature=0.0)),
        ("top_p=1.5", lambda: S.top_p_filter(z, 1.5)),
        ("top_p=0", lambda: S.top_p_filter(z, 0.0)),
        ("top_k=0", lambda: S.top_k_filter(z, 0)),
        ("min_p=1.2", lambda: S.min_p_filter(z, 1.2)),
        ("num_beams=0", lambda: S.check_num_beams(0)),
    ]
    messages = []
    for label, attempt in attempts:
        try:
            attempt()
        except ValueError as e:
            messages.append(f"{label:28s} -> ValueError: {e}")
    return messages


def main(plot: bool = True, seed: int = 1337) -> dict:
    seed_everything(seed)
    z = torch.tensor([LOGITS])  # (1, V)
    history = torch.tensor([[WORDS.index(w) for w in HISTORY]])

    # 1. what each processor keeps
    print('next word after "The cat sat on the ..."  (already used: ' + ", ".join(HISTORY) + ")\n")
    print(f"{'':32s}" + "".join(f"{w:>8s}" for w in WORDS) + "   kept")
    dists = {}
    for label, zz in processed_distributions(z, history).items():
        p = zz.softmax(-1)[0]
        dists[label] = p
        kept = int((p > 0).sum())
        print(f"{label:32s}" + "".join(f"{float(v):8.3f}" for v in p) + f"   {kept:4d}")
    print(
        f"\ngreedy picks {WORDS[int(S.greedy(z))]!r}; with repetition penalty 1.5 greedy picks "
        f"{WORDS[int(S.greedy(S.apply_repetition_penalty(z, history, 1.5)))]!r}"
    )

    # sampling follows the distribution: empirical frequencies of 10,000 top-p draws
    gen = torch.Generator().manual_seed(seed)
    cfg = S.SamplingConfig.from_strategy("top_p", top_p=0.8)
    draws = S.next_token(z.expand(10_000, -1), cfg, generator=gen)
    freq = torch.bincount(draws, minlength=len(WORDS)).float() / len(draws)
    print("top-p 0.8, 10,000 samples:      " + "".join(f"{float(v):8.3f}" for v in freq))

    # 2. greedy vs beam search on a toy bigram model
    lm = BigramLM()
    bos, eos = lm.ids["<s>"], lm.ids["</s>"]
    greedy_out = generate(lm, [[bos]], max_new_tokens=6, eos_id=eos)[0]
    greedy_lp = lm.log_prob([bos, *greedy_out])
    print(f"\ntoy bigram model: greedy    -> {lm.text(greedy_out)!r:34s} log P = {greedy_lp:.3f}")
    beams = {}
    for num_beams, length_penalty in [(2, 1.0), (3, 0.0), (3, 1.0), (3, 2.0)]:
        hyps = beam_search(lm, [bos], num_beams, max_new_tokens=6, eos_id=eos, length_penalty=length_penalty)
        beams[(num_beams, length_penalty)] = hyps
        best = hyps[0]
        print(
            f"beam search k={num_beams} length_penalty={length_penalty}: {lm.text(best.tokens)!r:34s} "
            f"log P = {lm.log_prob([bos, *best.tokens]):.3f}, score = {best.score:.3f} "
            f"(= log P / {len(best.tokens)}^{length_penalty})"
        )
    print(
        "greedy took 'the' (0.55) and then faced a flat distribution; beam search also kept 'a' (0.45), whose\n"
        "continuation 'cat' is almost certain, and found more likely sentences. The score divides log P by\n"
        "length ** length_penalty: 0 ranks by log P alone (short sentences win), larger values favour longer ones."
    )

    # 3. clear errors for impossible settings
    errors = show_errors()
    print("\n" + "\n".join(errors))

    png = None
    if plot:
        fig, axes = plt.subplots(2, 4, figsize=(14, 5.5), sharey=True)
        for ax, (label, p) in zip(axes.flat, dists.items()):
            ax.bar(range(len(WORDS)), p.numpy(), color=["C0" if v > 0 else "C7" for v in p])
            ax.set_title(label, fontsize=9)
            ax.set_xticks(range(len(WORDS)), WORDS, rotation=60, fontsize=7)
        axes.flat[-1].bar(range(len(WORDS)), freq.numpy(), color="C1")
        axes.flat[-1].set_title("top-p 0.8: 10,000 samples", fontsize=9)
        axes.flat[-1].set_xticks(range(len(WORDS)), WORDS, rotation=60, fontsize=7)
        for ax in axes[:, 0]:
            ax.set_ylabel("probability of the next word")
        fig.supxlabel("next word (the toy vocabulary)", fontsize=9)
        fig.tight_layout()
        png = out_dir("llama2") / "10_inference_strategies.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        print(f"\nbar chart: {png}")
    return {
        "distributions": dists,
        "top_p_frequencies": freq,
        "greedy": (greedy_out, greedy_lp),
        "beams": beams,
        "bigram": lm,
        "errors": errors,
        "png": png,
        "uniform_entropy": math.log(len(WORDS)),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG")
    p.add_argument("--seed", type=seed_int, default=1337)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
