"""Evaluation as a callback: set-up before training, a cheap ``val/fd`` during it, the final metrics.json.

The judge and the real-set features are prepared in ``setup`` (``evaluation.resources``), before
the training clock (``trainer.max_time``) starts, with their own progress bars; their timing goes
to ``provenance.setup``. ``val/fd`` is then only sampling and feature extraction: the FD of a few
samples (``eval.val_fd.num_generated``) against the real *validation* images, in
``eval.val_fd.feature_extractor``'s space: a trend, not a result. ``final_evaluation`` is the one
function that produces a run's metrics.json (the runner and ``on_fit_end`` call it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from callbacks.cpu_budget import paused
from callbacks.ema import ema_weights
from callbacks.rng import collect_rng_states, restore_rng_states
from evaluation.protocol import evaluate_generator, validation_fd
from evaluation.resources import EvalResources, prepare_evaluation
from evaluation.schema import write_metrics_json


class Evaluate(Callback):
    """Args:
        eval_cfg: the ``eval`` config group.
        output_dir: the run folder (metrics.json and eval/ go there).
        every_n_steps: log ``val/fd`` every so many optimiser steps (0 = never).
        num_generated: samples per ``val/fd``.
        write_on_fit_end: run the full protocol and write metrics.json when fitting ends.
        extra: fixed metrics.json entries (exp, data, seed); train_steps is added.
    """

    def __init__(
        self,
        eval_cfg: DictConfig | dict[str, Any],
        output_dir: str,
        every_n_steps: int,
        num_generated: int,
        write_on_fit_end: bool,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.eval_cfg = eval_cfg if isinstance(eval_cfg, DictConfig) else OmegaConf.create(eval_cfg)
        self.output_dir = Path(output_dir)
        self.every_n_steps = every_n_steps
        self.num_generated = num_generated
        self.write_on_fit_end = write_on_fit_end
        self.extra = dict(extra or {})
        self.resources: EvalResources | None = None
        self.metrics: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.datamodule is None or self.resources is not None:
            return
        start = time.perf_counter()
        # The set-up trains the judge or loads it from the cache: the training's random streams must
        # not depend on which, or a run would not repeat itself (nor a resumed run the straight one).
        states = collect_rng_states()
        try:
            self.resources = prepare_evaluation(
                trainer.datamodule, validation_config(self.eval_cfg), trainer.strategy.root_device,
                progress=trainer.is_global_zero and bool(self.eval_cfg["progress"]),
            )
        finally:
            restore_rng_states(states)
        self.resources.timing["total_s"] = round(time.perf_counter() - start, 2)
        self.resources.timing["when"] = "before training (callback set-up)"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or self.resources is None:
            return
        with paused(trainer), ema_weights(trainer, pl_module):  # evaluation is not training time
            fd = validation_fd(pl_module, trainer.datamodule, self.resources, self.eval_cfg, self.num_generated)
        pl_module.log("val/fd", fd, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.write_on_fit_end:
            self.metrics = final_evaluation(trainer, pl_module, self.eval_cfg, self.output_dir, self.extra)


def validation_config(eval_cfg: DictConfig) -> DictConfig:
    """The eval config with ``split: val``: training-time figures never look at the test split."""
    cfg = eval_cfg.copy()
    with open_dict(cfg):
        cfg.split = "val"
    return cfg


def final_evaluation(
    trainer: L.Trainer, model: L.LightningModule, eval_cfg: DictConfig, output_dir: str | Path, extra: dict[str, Any],
    **provenance: Any,
) -> dict[str, Any]:
    """The run's evaluation with the EMA weights (``evaluation.protocol.evaluate_generator``); rank 0
    writes ``output_dir/metrics.json``. Reuses the set-up the ``Evaluate`` callback prepared.

    ``provenance`` passes ``budget``, ``checkpoint`` and ``overrides`` on to the protocol.
    """
    callback = next((c for c in trainer.callbacks if isinstance(c, Evaluate)), None)
    resources = callback.resources if callback is not None else None
    if resources is not None and resources.split != eval_cfg["split"]:
        resources = None
    extra = {**extra, "train_steps": int(trainer.global_step)}
    with torch.inference_mode(False), ema_weights(trainer, model):
        metrics = evaluate_generator(model, trainer.datamodule, eval_cfg, output_dir, extra=extra, resources=resources, **provenance)
    if trainer.is_global_zero:
        write_metrics_json(Path(output_dir) / "metrics.json", metrics)
    return metrics
