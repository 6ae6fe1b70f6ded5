"""The configuration a GPU user runs, composed as the command line does, and its CPU stand-in for tests.

``gpu_overrides`` is the command line of a GPU run: ``exp`` x ``budget`` x ``data.image_size`` x
``trainer`` (``gpu`` or ``ddp``) x ``route`` (``pixel`` or ``latent``). ``cpu_overrides`` adds only
what a CPU must change (the accelerator) and what makes the run tiny (two batches of 2, a few
phantom images, no loader processes, a 2-image sample grid, one epoch for the evaluation judge and
two steps of 2 images for the latent route's first stage, both fitted before training). ``CPU_KEYS`` lists those keys, and a test checks that the composed configs differ in
nothing else, so the networks, noise process, precision, callbacks and trainer settings are the
GPU user's. ``fit_and_sample`` trains that config with the runner's own callbacks, loggers and
checkpoint writer, then draws two images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from experiments.checkpoint_io import AtomicCheckpointIO
from experiments.loggers import build_loggers
from experiments.run import build_callbacks
from models.checkpoint import build_generator
from models.generative import GenerativeModule, SamplingSettings
from tests.helpers import compose_config

EXPERIMENTS = ("hybrid", "ddpm", "ddpm_class", "vae", "gan")
DIFFUSION = ("hybrid", "ddpm", "ddpm_class")
BUDGETS = ("smoke", "quick", "long", "full")
SIZES = (32, 64, 128, 256)
ROUTES = ("pixel", "latent")  # the diffusion models' routes (configs/route); the VAE and the GAN have pixels only
BATCHES = 2
# The GAN counts its discriminator and its generator step (trainer.global_step advances by 2 per batch).
OPTIMIZER_STEPS_PER_BATCH = {"gan": 2}
# Sampler steps of the 2-image draw: the shapes a sample passes through do not depend on the count.
SAMPLE_STEPS = 2
# What the CPU stand-in may change: the device, and the size of the run (never the model or the recipe).
CPU_KEYS = (
    "trainer.accelerator", "trainer.max_steps", "data.batch_size", "data.num_workers", "data.num_train", "data.num_val",
    "data.num_test", "callbacks.samples.num_images", "eval.judge.epochs", "model.first_stage.fit.steps",
    "model.first_stage.fit.batch_size", "paths.output_dir",
)


def routes(exp: str) -> tuple[str, ...]:
    return ROUTES if exp in DIFFUSION else ("pixel",)


def gpu_overrides(exp: str, budget: str, size: int, trainer: str = "gpu", route: str = "pixel") -> list[str]:
    """The command line of a GPU user's run (``logger=none``: tests talk to no tracker)."""
    return [f"exp={exp}", f"budget={budget}", f"data.image_size={size}", f"trainer={trainer}", f"route={route}", "logger=none"]


def cpu_overrides(exp: str, output_dir: Path | str, batches: int = BATCHES, route: str = "pixel") -> list[str]:
    """The CPU stand-in's changes (``CPU_KEYS``): the CPU device, ``batches`` batches of 2, 8 phantom training images,
    a first stage fitted for 2 steps of 2 images on the latent route."""
    steps = batches * OPTIMIZER_STEPS_PER_BATCH.get(exp, 1)
    return [
        "trainer.accelerator=cpu", f"trainer.max_steps={steps}", "data.batch_size=2", "data.num_workers=0", "data.num_train=8",
        "data.num_val=4", "data.num_test=4", "callbacks.samples.num_images=2", "eval.judge.epochs=1", f"paths.output_dir={output_dir}",
        *(["model.first_stage.fit.steps=2", "model.first_stage.fit.batch_size=2"] if route == "latent" else []),
    ]


def cpu_config(
    exp: str, budget: str, size: int, output_dir: Path, trainer: str = "gpu", *extra: str, batches: int = BATCHES, route: str = "pixel"
) -> DictConfig:
    """The GPU user's config with the CPU stand-in's changes (and ``extra`` overrides)."""
    return compose_config(*gpu_overrides(exp, budget, size, trainer, route), *cpu_overrides(exp, output_dir, batches, route), *extra)


class LossRecorder(Callback):
    """The training loss of every batch, as the step returned it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def fit_and_sample(cfg: DictConfig, num_images: int = 2) -> tuple[GenerativeModule, Any, list[float], torch.Tensor]:
    """Train ``cfg`` as ``experiments.run`` does (its callbacks, checkpoint writer, trainer config), then draw images.

    Returns the model, the trainer, the loss of each batch and ``num_images`` samples (N, 3, H, W).
    """
    L.seed_everything(cfg.seed, workers=True)  # as experiments.run: the same config draws the same run
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_generator(cfg.model, datamodule.info)
    recorder = LossRecorder()
    trainer = instantiate(
        cfg.trainer, callbacks=[*build_callbacks(cfg), recorder], logger=build_loggers(cfg, Path(cfg.paths.output_dir)),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(cfg.paths.output_dir),
    )
    trainer.fit(model, datamodule=datamodule)
    conditions = None if model.conditioning == "none" else datamodule.sample_conditions(num_images, seed=0)
    images = model.generate(
        conditions, num_images, generator=torch.Generator().manual_seed(0), sampling=SamplingSettings(steps=SAMPLE_STEPS)
    )
    return model, trainer, recorder.losses, images
