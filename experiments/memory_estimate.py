"""The training-memory estimate a run prints before it trains (``memory_estimate`` in config.yaml).

A user about to start ``budget=full`` at 256 px on a GPU learns first whether the configured batch
fits: ``models.memory`` measures one training step's activations at batch 1 and 2 on the device
the run will use, under the run's precision (the trainer's own autocast context), and adds the
weights, gradients, optimiser state and the EMA copy. The probe leaves no trace: the model's state
(BatchNorm statistics, spectral-norm vectors), its gradients and every random generator are as
before, so a run with the estimate trains exactly as one without. It costs well under a second
at 256 px on a CPU core.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig, OmegaConf

from callbacks.rng import collect_rng_states, restore_rng_states
from datamodules.skin import collate_batch
from models.generative import GenerativeModule
from models.memory import MemoryEstimate, optimizer_states_per_parameter, probe_step, weight_figures

PROBE_BATCHES = (1, 2)


def optimizer_factories(model_cfg: DictConfig) -> list[Any]:
    """The partial optimisers a model config names (``model.optimizer``, the GAN's ``optimizer_g``/``_d``)."""
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).startswith("torch.optim.") and node.get("_partial_"):
                found.append(instantiate(node))
            else:
                for value in node.values():
                    walk(value)

    walk(OmegaConf.to_container(model_cfg, resolve=True))
    return found


def probe_batch(train_set: Any, count: int, device: torch.device) -> dict[str, Any]:
    """The first ``count`` training items as a batch on ``device`` (augmented as in training)."""
    return move_data_to_device(collate_batch([train_set[i] for i in range(count)]), device)


def estimate_run_memory(cfg: DictConfig, model: GenerativeModule, datamodule: Any, trainer: L.Trainer) -> MemoryEstimate:
    """The estimate for ``cfg``'s batch on the trainer's device; the model and random streams are left as found."""
    device = trainer.strategy.root_device
    states_per_parameter = max([optimizer_states_per_parameter(f) for f in optimizer_factories(cfg.model)], default=0.0)
    weights, count, gradients, optimizer_state, ema = weight_figures(model, states_per_parameter, cfg.callbacks.get("ema") is not None)
    rng = collect_rng_states()
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    original_device, was_training = model.device, model.training
    start = time.perf_counter()
    peaks, device_peak = {}, None
    sizes = PROBE_BATCHES if len(datamodule.train_set) >= max(PROBE_BATCHES) else (1,)
    try:
        model.to(device).train()
        for size in sizes:
            batch = probe_batch(datamodule.train_set, size, device)
            with trainer.precision_plugin.train_step_context():
                peaks[size], device_peak = probe_step(lambda: model.training_losses(batch), model, device)
    finally:
        model.load_state_dict(snapshot)
        model.to(original_device).train(was_training)
        restore_rng_states(rng)
    per_image = max(0, peaks[2] - peaks[1]) if 2 in peaks else peaks[1]  # one training image: all of it per image
    return MemoryEstimate(
        batch_size=int(cfg.data.batch_size), image_size=int(cfg.data.image_size), precision=str(cfg.trainer.precision),
        weights=weights, trainable_parameters=count, gradients=gradients, optimizer_state=optimizer_state, ema=ema,
        activations_per_image=per_image, activations_fixed=max(0, peaks[1] - per_image),
        measured_device_peak=device_peak, probe_seconds=time.perf_counter() - start,
    )


def log_memory_estimate(cfg: DictConfig, model: GenerativeModule, datamodule: Any, trainer: L.Trainer) -> dict[str, Any] | None:
    """Print the estimate on rank 0 and return it for config.yaml's provenance; None when ``memory_estimate`` is off."""
    if not cfg.memory_estimate or not trainer.is_global_zero:
        return None
    if type(model).training_losses is GenerativeModule.training_losses:
        print(f"No training-memory estimate: {type(model).__name__} does not expose its training losses", flush=True)
        return None
    estimate = estimate_run_memory(cfg, model, datamodule, trainer)
    print(estimate.summary(), flush=True)  # before training, where a user deciding whether to wait sees it
    return estimate.to_dict()
