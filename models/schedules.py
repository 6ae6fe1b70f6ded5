"""Learning-rate schedules shared by the hybrid and the baselines, as ``LambdaLR`` multipliers stepped once per batch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Progress = Callable[[], float]  # the share of the run done, 0 to 1 (a CPU-time budget's clock: callbacks/cpu_budget.py)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, progress: Progress | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    ``total_steps <= 0`` (no ``trainer.max_steps``) keeps the rate constant after warm-up. With
    ``progress``, the decay follows ``progress()`` instead of the step count: a run on a time budget
    reaches 0 at the end of its budget whatever a step costs.
    """

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if progress is not None:
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress()))))
        if total_steps <= warmup_steps:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int, final_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear decay from the base rate to ``final_fraction`` of it at ``total_steps`` (SNGAN, Miyato et al. 2018).

    ``total_steps <= 0`` keeps the rate constant.
    """

    def multiplier(step: int) -> float:
        if total_steps <= 0:
            return 1.0
        return 1.0 - (1.0 - final_fraction) * min(1.0, step / total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def with_warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, progress: Progress | None = None) -> dict:
    """``configure_optimizers`` return value: the optimizer and a per-step warm-up + cosine schedule.

    ``max_steps`` is ``trainer.max_steps`` (Lightning's -1, unset, keeps the rate constant after warm-up);
    ``progress`` replaces the step count in the decay (``warmup_cosine``).
    """
    schedule = warmup_cosine(optimizer, warmup_steps, max(0, int(max_steps)), progress)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
