"""The chapter README's deterministic numbers (bytes, counts, shapes) are read from the README and recomputed.

Allocation sizes and byte counts do not depend on the machine or its load, so a README table of them can be
checked exactly: when the code changes what it allocates, this test fails until the README says so too.
"""

import re
from pathlib import Path

import torch

CH = "triton_flash_attention_scratch"
README = Path(__file__).resolve().parents[2] / CH / "README.md"


def readme_table(heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table after ``heading`` (cells stripped, header and rule dropped)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table after {heading!r}"
    return rows[2:]


def readme_paragraph_after(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    return section[: section.index("\n### ", 1)]


def test_step02_peak_memory_table_matches_the_lesson(load_lesson, capfd):
    heading = "### Measured: peak memory of one forward pass (step 02)"
    rows = readme_table(heading)
    seq_lens = tuple(int(r[0]) for r in rows)
    out = load_lesson(CH, 2).main(seq_lens=seq_lens, device="cpu")
    printed = capfd.readouterr()
    assert "USDT" not in printed.out + printed.err, "the profiler's native log lines must be silenced"
    for row, peak in zip(rows, out["peaks"]):
        N = int(row[0])
        assert peak["N"] == N
        assert [int(row[1]), int(row[2])] == [round(peak["naive"] / 1024), round(peak["tiled"] / 1024)], row
        assert int(row[3]) == N * N * 4 // 1024  # one N x N fp32 matrix, by hand
    # the growth factors the paragraph quotes
    text = readme_paragraph_after(heading)
    quoted = [float(x) for x in re.findall(r"by (\d\.\d\d)", text) + re.findall(r"then (\d\.\d\d)", text)]
    naive = [b["naive"] / a["naive"] for a, b in zip(out["peaks"], out["peaks"][1:])]
    tiled = [b["tiled"] / a["tiled"] for a, b in zip(out["peaks"], out["peaks"][1:])]
    assert sorted(quoted) == sorted(round(x, 2) for x in naive + tiled), (quoted, naive, tiled)


def test_step13_saved_for_backward_table(load_lesson):
    """Flash keeps O (B·H·N·D floats) and L (B·H·N floats): checked by hand; naive's column by the lesson's hook."""
    from triton_flash_attention_scratch.attention_torch import flash_attention_torch, naive_attention

    mod = load_lesson(CH, 13)
    B, H, H_kv, D = 1, 4, 2, 32  # the README's line above the table
    assert "B = 1, H = 4, H_kv = 2, D = 32, fp32" in readme_paragraph_after("### Measured: tensors saved for")
    for row in readme_table("### Measured: tensors saved for the backward pass (step 13)"):
        N = int(row[0])
        flash_kib = (B * H * N * D + B * H * N) * 4 / 1024
        assert float(row[3]) == round(flash_kib, 1), row
        q = torch.randn(B, H, N, D, requires_grad=True)
        k, v = (torch.randn(B, H_kv, N, D, requires_grad=True) for _ in range(2))
        for causal, cell in ((False, row[1]), (True, row[2])):
            naive = mod.saved_bytes(lambda a, b, c, causal=causal: naive_attention(a, b, c, causal), q, k, v)
            assert float(cell) == round(naive / 1024, 1), (N, causal)
        flash = mod.saved_bytes(lambda a, b, c: flash_attention_torch(a, b, c, True, None, 64, 32), q, k, v)
        assert flash == (B * H * N * D + B * H * N) * 4
