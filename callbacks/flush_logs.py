"""Loggers write their buffered rows to disk with every checkpoint.

Lightning's CSV logger keeps rows in memory between flushes (every 100 steps by default); a run
killed in between would resume from a checkpoint whose earlier rows were never written. Flushing
when a checkpoint is saved keeps the log at least as far along as the checkpoint.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class FlushLogs(Callback):
    """``logger.save()`` for every logger whenever a checkpoint is saved."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.save()
