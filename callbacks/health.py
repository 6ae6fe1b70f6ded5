"""Guard the weights against a NaN/Inf loss: stop the run, or skip the bad batch.

The check runs in ``on_before_optimizer_step`` (before gradient clipping and before the
optimiser touches the weights), so a non-finite loss never reaches the parameters, the EMA or
a checkpoint. It works the same under manual optimisation (the GAN's two optimisers).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

MODES = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """The training loss (or its gradient) became NaN or infinite."""


def _finite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return True
    # one reduction per tensor; the sum of a tensor with a NaN or Inf is not finite
    return bool(torch.isfinite(torch.stack([g.detach().float().sum() for g in grads])).all())


class FiniteLoss(Callback):
    """``mode="stop"``: raise with the step number; ``mode="skip"``: drop the batch's update.

    Args:
        mode: ``stop`` (default) raises :class:`NonFiniteLossError` before the bad update; the
            last checkpoint on disk, if one was written yet, is the last good one; lower the
            learning rate and ``resume=force`` continues from it. ``skip`` clears the gradients
            so the optimiser step leaves the weights untouched, logs ``train/skipped_steps`` and
            goes on.
        max_consecutive_skips: in ``skip`` mode, this many bad batches in a row still stop the
            run: a model that diverged does not recover by skipping.
    """

    def __init__(self, mode: str = "stop", max_consecutive_skips: int = 20) -> None:
        if mode not in MODES:
            raise ValueError(f"on_nonfinite_loss must be one of {MODES}, got '{mode}'")
        self.mode = mode
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0
        self.consecutive = 0

    def _fail(self, trainer: L.Trainer, what: str) -> None:
        saved = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        saved = [path for path in saved if path and Path(path).is_file()]
        if saved:
            where = f"{saved[0]} holds the last good state; lower the learning rate and resume=force continues from it"
        else:
            where = "no checkpoint has been written yet, so nothing of this run is kept: lower the learning rate and start again"
        raise NonFiniteLossError(
            f"training {what} is not finite at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"the weights were not updated. {where}"
        )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if _finite_gradients(optimizer):
            self.consecutive = 0
            return
        if self.mode == "stop":
            self._fail(trainer, "loss gradient")
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive_skips:
            self._fail(trainer, f"loss gradient ({self.consecutive} batches in a row)")
        for group in optimizer.param_groups:  # AdamW skips parameters without a gradient
            for param in group["params"]:
                param.grad = None
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        """A non-finite loss whose gradient was finite (e.g. NaN from a detached term)."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach())
        if self.mode == "stop" and isinstance(loss, float) and not math.isfinite(loss):
            self._fail(trainer, f"loss ({loss})")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
