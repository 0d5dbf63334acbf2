"""Lessons 14-18 (model families, tokenizers, chat, real models) at small settings, each output recomputed
independently: by transformers on the same settings, or from the definition written out in the test."""

from __future__ import annotations

import pytest
import torch

from tests.numerics import assert_close_scaled, assert_close_to_fp64

CH = "pytorch_llama2_from_scratch"


def test_14_llama3_rope_scaling(load_lesson):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    r = load_lesson(CH, 14).main(plot=False)
    rope = {**r["scaling"], "rope_theta": 500000.0}
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072, rope_parameters=rope)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")  # transformers' own llama3 frequencies
    assert torch.allclose(r["scaled"], ref.float(), rtol=2e-6, atol=0)
    theta64 = 500000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    assert_close_to_fp64(r["plain"], theta64)
    assert dict((k, (a, b)) for k, a, b in r["rows"])["vocab_size"] == (32000, 128256)


def test_15_qwen3_block(load_lesson):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    r = load_lesson(CH, 15).main()
    for _, with_norm, _ in r["rows"]:
        assert with_norm <= r["bound"] + 1e-5  # |q.k|/sqrt(hd) <= sqrt(hd) for unit-RMS q and k, unit gains
    growth = r["rows"][-1][2] / r["rows"][0][2]
    assert growth == pytest.approx(16.0**2, rel=1e-3)  # without the norm scores scale as g^2 (bilinear in h)
    config = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)  # fmt: skip
    with torch.device("meta"):
        n = sum(p.numel() for p in Qwen3ForCausalLM(config).parameters())
    assert r["qwen3_params"] == n


def test_16_sliding_window(load_lesson):
    r = load_lesson(CH, 16).main(window=4, layers=3, seq_len=16)
    s, j = torch.arange(8)[:, None], torch.arange(8)[None, :]
    assert torch.equal(r["mask"], (s - j >= 0) & (s - j < 4))
    assert r["same_before"] and float(r["diff_after"].min()) > 1e-3
    assert r["fields"] == [3, 6, 9]  # n_layers * (W - 1)
    # decode steps with the KV cache = the full forward (two code paths of our model: rule 2 of the policy)
    assert_close_scaled(r["decoded"], r["logits"], ulps=64)


def test_17_tokenizers_and_templates(load_lesson):
    r = load_lesson(CH, 17).main()
    assert r["decoded"] == r["text"] and len(r["special"]) == 3
    assert r["eos_ids"][0] != r["eos_ids"][1] and len(r["eos_ids"]) == 2
    assert r["rendered"]["chatml"].endswith("<|im_start|>assistant\n")
    assert r["rendered"]["llama3"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert r["rendered"]["llama2"].startswith("<s>[INST] <<SYS>>\nYou answer in one sentence.\n<</SYS>>\n\n")


@pytest.mark.slow
def test_18_requirements(load_lesson):
    """Lesson 18's parameter counts against transformers' own classes on the published configs (the loading-memory
    measurement it prints is tested in test_llama_families.py)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    lesson = load_lesson(CH, 18)
    r = lesson.main()
    for row in r["rows"]:
        cfg = dict(lesson.PUBLISHED[row["family"]]["config"])
        model_type = cfg.pop("model_type")
        if "rope_scaling" in cfg:
            cfg["rope_parameters"] = {**cfg.pop("rope_scaling"), "rope_theta": cfg["rope_theta"]}
        with torch.device("meta"):
            hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
        assert row["params"] == sum(p.numel() for p in hf.parameters()), row["family"]
        assert row["bf16_bytes"] == 2 * row["params"]


def test_readme_family_table_matches_the_published_shapes(load_lesson):
    """The README's parameter, size and RAM columns are what the code computes (they cannot drift apart)."""
    from pathlib import Path

    lesson = load_lesson(CH, 18)
    readme = (Path(__file__).resolve().parents[2] / CH / "README.md").read_text()
    table = readme[readme.index("### Supported families at their smallest published shape") :]
    rows = {r["family"]: r for r in lesson.requirements()}
    seen = 0
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or cells[0] not in rows:
            continue
        r = rows[cells[0]]
        assert cells[1] == f"`{r['hf_id']}`"
        assert cells[2] == f"{r['params'] / 1e6:.1f} M"
        assert cells[3] == f"{r['bf16_bytes'] / 2**30:.2f} GiB"
        assert cells[4] == f"{r['ram_bytes'] / 2**30:.1f} GiB"
        seen += 1
    assert seen == len(rows) == 6
