"""Evaluation as a callback: an optional cheap ``val/fd`` during training and the final metrics.json.

``val/fd`` is the FD of a few samples (``eval.val_fd.num_generated``) against the cached real test
features, in the same feature space as the final figure: a trend, not a result. The full
protocol (``evaluation.protocol.evaluate_generator``) runs at ``on_fit_end`` when
``write_on_fit_end`` is set, or when the runner calls ``evaluate``.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from callbacks.ema import find_ema
from evaluation.protocol import evaluate_generator, quick_fd
from evaluation.schema import write_metrics_json


class Evaluate(Callback):
    """Args:
        eval_cfg: the ``eval`` config group.
        output_dir: the run folder (metrics.json and eval/ go there).
        every_n_steps: log ``val/fd`` every so many optimiser steps (0 = never).
        num_generated: samples per ``val/fd``.
        write_on_fit_end: run the full protocol and write metrics.json when fitting ends.
        extra: fixed metrics.json entries (exp, data, seed); train_steps and train_time_s are added.
    """

    def __init__(
        self,
        eval_cfg: DictConfig | dict[str, Any],
        output_dir: str,
        every_n_steps: int = 0,
        num_generated: int = 64,
        write_on_fit_end: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.eval_cfg = eval_cfg if isinstance(eval_cfg, DictConfig) else OmegaConf.create(eval_cfg)
        self.output_dir = Path(output_dir)
        self.every_n_steps = every_n_steps
        self.num_generated = num_generated
        self.write_on_fit_end = write_on_fit_end
        self.extra = dict(extra or {})
        self.metrics: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or trainer.datamodule is None:
            return
        ema = find_ema(trainer)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with ema.swapped(pl_module) if ema is not None else nullcontext():
                fd = quick_fd(pl_module, trainer.datamodule, self.eval_cfg, self.num_generated, seed=int(self.eval_cfg.get("seed", 0)))
        finally:
            pl_module.train(was_training)
        pl_module.log("val/fd", fd, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.write_on_fit_end:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the full protocol with the EMA weights; rank 0 writes ``output_dir/metrics.json``."""
        extra = {**self.extra, "train_steps": int(trainer.global_step), **(extra or {})}
        ema = find_ema(trainer)
        pl_module.eval()
        with torch.inference_mode(False), (ema.swapped(pl_module) if ema is not None else nullcontext()):
            self.metrics = evaluate_generator(pl_module, trainer.datamodule, self.eval_cfg, self.output_dir, extra=extra)
        if trainer.is_global_zero:
            write_metrics_json(self.output_dir / "metrics.json", self.metrics)
        return self.metrics
