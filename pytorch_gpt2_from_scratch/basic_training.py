"""The plain optimization loop of lessons 7 and 8 (part 2's ``training.py`` adds schedules, clipping, DDP ...).

One step::

    optimizer.zero_grad()
    logits, loss = model(x, y)
    loss.backward()
    optimizer.step()
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    device: torch.device | str = "cpu",
    desc: str = "train",
    log_every: int = 10,
) -> list[float]:
    """Run ``steps`` optimization steps on the batches ``next_batch()`` returns; return the loss of each step."""
    losses: list[float] = []
    for step in (bar := tqdm(range(steps), desc=desc)):
        x, y = next_batch()
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % log_every == 0 or step == steps - 1:
            tqdm.write(f"step {step:3d} | loss {losses[-1]:.6f}")
    return losses
