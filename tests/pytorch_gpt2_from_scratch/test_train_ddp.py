"""DDP: a 2-process gloo run (torchrun, loopback) equals one process on the union of the ranks' batches."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from pytorch_gpt2_from_scratch.model import GPT
from tests.numerics import assert_close_to_fp64, to_double

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def test_two_gloo_processes_equal_one_process_on_the_union(load_lesson, tmp_path):
    lesson = load_lesson("pytorch_gpt2_from_scratch", 16)
    B, T, steps, accum, lr, nproc = 2, 16, 2, 2, 1e-3, 2
    ddp = lesson.launch(tmp_path / "ddp.pt", nproc=nproc, B=B, T=T, steps=steps, grad_accum=accum, timeout=150)
    assert ddp["world_size"] == nproc

    # Independent reference: one process, one forward over all rows of the step (no accumulation, no DDP),
    # clipping and torch's AdamW (non-fused) with the same two parameter groups -- in fp32 and in float64. DDP's
    # all-reduced mean of micro-batch means is the same number as one mean over the union, but not the same
    # float: the float64 run says how far fp32 itself strays, and the DDP run may stray a few times as far.
    torch.manual_seed(0)
    base = GPT(lesson.toy_model_config())
    tokens = lesson.toy_tokens(0)
    rows = nproc * accum * B  # the union of all micro-batches of all ranks in one step
    results = {}
    for name, dtype in (("ref64", torch.float64), ("ref32", torch.float32)):  # float64 copy before base trains
        model = to_double(base) if dtype == torch.float64 else base
        decay = [p for p in model.parameters() if p.dim() >= 2]
        plain = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
            lr=lr,
            betas=(0.9, 0.95),
            eps=1e-8,
            foreach=False,
        )
        losses = []
        for step in range(steps):
            buf = tokens[step * rows * T : (step + 1) * rows * T + 1]
            x, y = buf[:-1].view(rows, T), buf[1:].view(rows, T)
            opt.zero_grad()
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        results[name] = (torch.tensor(losses, dtype=dtype), {k: v.clone() for k, v in model.state_dict().items()})
    (l32, s32), (l64, s64) = results["ref32"], results["ref64"]
    assert_close_to_fp64(torch.tensor(ddp["losses"][:steps]), l64, l32, what="DDP losses")
    for k, v in s64.items():
        assert_close_to_fp64(ddp["state"][k], v, s32[k], what=k)
