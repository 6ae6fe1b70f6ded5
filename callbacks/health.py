"""Stop a run at the first non-finite loss, before a checkpoint can save the broken weights."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class FiniteLoss(Callback):
    """Raise with the step number when ``training_step`` returns a NaN/Inf loss.

    Lightning runs ``ModelCheckpoint`` after the other callbacks, so the last checkpoint on disk
    is the last good one and ``resume=auto`` continues from it (lower the learning rate first).
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach())
        if isinstance(loss, float) and not math.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
                "the last good checkpoint is kept in checkpoints/last.ckpt"
            )
