"""Lesson 1 — exploring the GPT-2 (124M) checkpoint before writing any model code.

A checkpoint is just a dictionary ``name -> tensor``. Listing it tells us the whole architecture: ``wte``
(50257 x 768) token embeddings, ``wpe`` (1024 x 768) position embeddings, twelve blocks ``h.0`` ... ``h.11``
each with two LayerNorms, a fused ``c_attn`` (768 -> 3 * 768) projection for q, k, v, an attention output
``c_proj``, and an MLP ``c_fc`` (768 -> 3072) / ``c_proj`` (3072 -> 768), then ``ln_f``. The head ``lm_head``
reuses ``wte`` (tied), so the 124M model has 124,439,808 parameters. Hugging Face stores the four linear
layers as ``Conv1D`` with ``(in, out)`` matrices, the transpose of ``nn.Linear``'s ``(out, in)``.

The position embeddings ``wpe`` are learned, yet the trained matrix looks like a set of smooth sinusoids: the
plot this lesson writes shows it (with ``--random-init`` it is noise, since nothing was learned).

Run (downloads the 124M weights once from the Hugging Face hub)::

    python pytorch_gpt2_from_scratch/01_explore_checkpoint.py
    python pytorch_gpt2_from_scratch/01_explore_checkpoint.py --model path/to/save_pretrained_dir
    python pytorch_gpt2_from_scratch/01_explore_checkpoint.py --random-init     # offline, random weights
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from pytorch_basis.common import nonnegative_int, out_dir, run_cli
from pytorch_gpt2_from_scratch.cli import add_model_arguments, resolve_model
from pytorch_gpt2_from_scratch.model import load_hf_checkpoint


def count_parameters(state: dict[str, torch.Tensor]) -> int:
    """Parameters of a GPT-2 state dict: mask buffers excluded, a tied ``lm_head`` counted once."""
    total = 0
    for key, value in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not parameters
        if key == "lm_head.weight" and any(
            k.endswith("wte.weight") and torch.equal(v, value) for k, v in state.items()
        ):
            continue  # tied to the token embeddings: the same numbers
        total += value.numel()
    return total


def plot_position_embeddings(wpe: torch.Tensor, path: Path) -> Path:
    """Heat map of ``wpe`` (positions x channels) and three of its columns as curves."""
    wpe = wpe.float().cpu()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax0.imshow(wpe.numpy(), aspect="auto", cmap="gray")
    ax0.set_xlabel("channel")
    ax0.set_ylabel("position")
    ax0.set_title(f"wpe {tuple(wpe.shape)}")
    C = wpe.size(1)
    for c in (150, 200, 250) if C > 250 else (C // 4, C // 2, 3 * C // 4):  # the video's channels for C = 768
        ax1.plot(wpe[:, c].numpy(), label=f"channel {c}", linewidth=0.8)
    ax1.set_xlabel("position")
    ax1.set_ylabel("embedding value")
    ax1.set_title("a few channels of wpe across positions")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(model: str = "gpt2", random_init: bool = False, show: int = 0) -> dict:
    source = resolve_model(model, random_init)
    config, state = load_hf_checkpoint(source)
    print(f"checkpoint: {source}")
    print(f"config: {config}")
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    listed = list(shapes.items()) if show <= 0 else list(shapes.items())[:show]
    for key, shape in listed:
        print(f"  {key:45s} {str(shape):>16s}  {state[key].dtype}")
    if len(listed) < len(shapes):
        print(f"  ... ({len(shapes) - len(listed)} more; --show 0 lists them all)")
    n_params = count_parameters(state)
    print(f"{len(shapes)} tensors, {n_params:,} parameters (GPT-2 small: 124,439,808)")

    wpe_key = next(k for k in state if k.endswith("wpe.weight"))
    png = plot_position_embeddings(state[wpe_key], out_dir("gpt2_from_scratch") / "01_position_embeddings.png")
    print(f"position embeddings plotted to {png}")
    return dict(config=config, shapes=shapes, n_params=n_params, png=png)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--show", type=nonnegative_int, default=0, help="list only the first N tensors (default: all)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
