"""Sample grids during training: ``samples/step_<N>.png`` with the prompts in ``step_<N>.json``.

The conditions are drawn once (fixed seed) so that grids from different steps show the same
prompts and can be compared by eye; images come from the EMA weights when EMA is on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image

from callbacks.cpu_budget import paused
from callbacks.ema import ema_weights


def save_grid(images: Tensor, path: Path, captions: list[str] | None = None, min_tile: int = 64) -> Path:
    """Write (N, 3, H, W) images in [-1, 1] as one PNG grid, tiles upscaled to ``min_tile`` px.

    Captions, when given, go to a ``.json`` file beside the PNG (row-major order).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images.detach().float().cpu().clamp(-1, 1)
    if images.shape[-1] < min_tile:
        scale = math.ceil(min_tile / images.shape[-1])
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    nrow = max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    save_image(grid, path)
    if captions is not None:
        path.with_suffix(".json").write_text(json.dumps({"nrow": nrow, "captions": captions}, indent=1))
    return path


class SampleGrid(Callback):
    """Every ``every_n_steps`` optimiser steps and at the end of training, draw and save a grid."""

    def __init__(self, dirpath: str, every_n_steps: int = 500, num_images: int = 16, seed: int = 0) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.seed = seed
        self._conditions: dict[str, Any] | None = None
        self.last_path: Path | None = None

    def _conditions_for(self, trainer: L.Trainer) -> dict[str, Any] | None:
        if self._conditions is None:
            datamodule = trainer.datamodule
            if datamodule is not None and hasattr(datamodule, "sample_conditions"):
                self._conditions = datamodule.sample_conditions(self.num_images, seed=self.seed)
        return self._conditions

    @rank_zero_only
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        conditions = self._conditions_for(trainer)
        generator = torch.Generator().manual_seed(self.seed)
        with paused(trainer), ema_weights(trainer, pl_module):  # drawing is not training time
            images = pl_module.generate(conditions, self.num_images, generator=generator)
        captions = list(conditions["caption"]) if conditions is not None and pl_module.conditioning != "none" else None
        path = save_grid(images, self.dirpath / f"step_{trainer.global_step}.png", captions)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                caption = "; ".join(captions[:4]) + (" ..." if captions and len(captions) > 4 else "") if captions else None
                extra = {"caption": [caption]} if caption else {}
                logger.log_image(key="samples", images=[str(path)], step=trainer.global_step, **extra)
        self.last_path = path
        return path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.dirpath / f"step_{trainer.global_step}.png").exists():
            self.draw(trainer, pl_module)

