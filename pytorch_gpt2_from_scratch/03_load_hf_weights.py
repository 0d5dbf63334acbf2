"""Lesson 3 — loading the Hugging Face GPT-2 parameters into our module (``GPT.from_pretrained``).

Three details make the copy exact:

* Hugging Face implements the four linear layers (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``,
  ``mlp.c_proj``) as ``Conv1D``, which computes ``x W + b`` with ``W`` of shape ``(in, out)``; ``nn.Linear``
  computes ``x W^T + b`` with ``W`` of shape ``(out, in)``. These four matrices are transposed on the way in.
* Old checkpoints carry ``attn.bias`` / ``attn.masked_bias``: causal-mask *buffers*, not parameters. Ignored.
* Every other tensor must match in shape; a mismatch raises ``ValueError`` naming the key (shown below by
  loading into a model with the wrong width).

The proof that the copy is right: our logits equal ``GPT2LMHeadModel``'s on the same tokens (max |diff| ~1e-5
in fp32 — different kernels sum in different orders).

Run::

    python pytorch_gpt2_from_scratch/03_load_hf_weights.py                     # hub 'gpt2' (network once)
    python pytorch_gpt2_from_scratch/03_load_hf_weights.py --model path/to/save_pretrained_dir
    python pytorch_gpt2_from_scratch/03_load_hf_weights.py --random-init       # offline, random 124M weights
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import positive_int, run_cli, seed_everything, seed_int
from pytorch_gpt2_from_scratch.cli import add_model_arguments, resolve_model
from pytorch_gpt2_from_scratch.model import GPT, GPTConfig, load_hf_checkpoint


def main(model: str = "gpt2", random_init: bool = False, B: int = 2, T: int = 16, seed: int = 1337) -> dict:
    seed_everything(seed)
    source = resolve_model(model, random_init)
    ours = GPT.from_pretrained(source).eval()
    print(f"loaded {source} into our GPT: {ours.config}")
    print("Conv1D weights transposed: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj (x W -> x W^T)")

    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(source).eval()
    idx = torch.randint(0, ours.config.vocab_size, (B, T))
    with torch.no_grad():
        logits, _ = ours(idx)
        ref = hf(idx).logits
    max_diff = (logits - ref).abs().max().item()
    print(f"logits {tuple(logits.shape)}; max |ours - GPT2LMHeadModel| = {max_diff:.2e}")

    # A wrong shape is a clear error that names the offending key, never a silent partial load.
    config, state = load_hf_checkpoint(source)
    wrong = GPT(GPTConfig(**{**config, "n_embd": config["n_embd"] // 2}))
    try:
        wrong.load_hf_state_dict(state)
        mismatch = None
    except ValueError as e:
        mismatch = str(e)
    print(f"loading into a model of half the width: ValueError: {mismatch}")
    return dict(max_diff=max_diff, config=ours.config, mismatch_error=mismatch, idx=idx, logits=logits)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--B", type=positive_int, default=2)
    p.add_argument("--T", type=positive_int, default=16)
    p.add_argument("--seed", type=seed_int, default=1337)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(**vars(parse_args())))
