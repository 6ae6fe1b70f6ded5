"""GAN baseline (``exp=gan``): SNGAN with hinge loss, DiffAugment and an EMA generator.

Training follows Lightning's manual-optimisation recipe: one generator forward per batch; the
discriminator steps on ``fake.detach()`` under ``toggled_optimizer(opt_d)``, then the generator
steps through the updated discriminator under ``toggled_optimizer(opt_g)``; gradients clipped
with ``self.clip_gradients``; schedulers stepped by hand. Lightning counts every optimiser step,
so ``trainer.global_step`` (and ``budget_steps``) advance by two per batch.

EMA: the generator's average lives here (``generator_ema``, a ``torch.optim.swa_utils
.AveragedModel`` with ``use_buffers=True``), not in the shared ``callbacks.ema.EMA``, because the
generator has BatchNorm: the running statistics must be averaged together with the weights,
which the shared callback (parameters only) does not do. ``exp/gan.yaml`` therefore switches the
shared callback off; ``generate`` and ``reconstruct`` always use ``generator_ema``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from baselines.diffaugment import diff_augment
from baselines.gan_networks import Discriminator, Generator
from datamodules.info import DataInfo
from models.conditioners import ConditionEmbedding
from models.generative import Conditions, GenerativeModule, ReconstructionSettings, SamplingSettings
from models.schedules import linear_decay

NUM_FIXED_SAMPLES = 64


def ema_average(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """EMA update for ``AveragedModel``: decay ramps as min(decay, (1 + n) / (10 + n)) over early updates."""

    def average(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        n = float(num_averaged)
        rate = min(decay, (1.0 + n) / (10.0 + n))
        return averaged + (current - averaged) * (1.0 - rate)

    return average


class GAN(GenerativeModule):
    """SNGAN-style generator/discriminator pair; optional label conditioning.

    Args:
        latent_dim: width of z ~ N(0, I).
        generator_width, discriminator_width: widths at full resolution (doubling per level).
        max_width: cap on any layer's width.
        conditional: a generator that reads the label/attribute embedding (concatenated to z)
            and a projection discriminator (Miyato & Koyama 2018).
        condition_dim: width of the generator's condition embedding.
        diffaugment: DiffAugment policy, e.g. ``color,translation,cutout`` ("" = off).
        ema_decay: decay of ``generator_ema`` per batch.
        gradient_clip: max gradient norm of each network (0 = off), via ``self.clip_gradients``.
        optimizer_g, optimizer_d: partial optimisers; learning rates decay linearly to
            ``final_lr_fraction`` of their start over the run (SNGAN).
        projection_lr: Adam rate of the latent projection that reconstructs real images (its
            number of steps comes from the evaluation: ``ReconstructionSettings.projection_steps``).
    """

    def __init__(
        self,
        data_info: DataInfo | dict[str, Any],
        optimizer_g: Callable[..., torch.optim.Optimizer],
        optimizer_d: Callable[..., torch.optim.Optimizer],
        latent_dim: int = 128,
        generator_width: int = 32,
        discriminator_width: int = 32,
        max_width: int = 128,
        conditional: bool = False,
        condition_dim: int = 64,
        diffaugment: str = "color,translation,cutout",
        ema_decay: float = 0.999,
        gradient_clip: float = 1.0,
        final_lr_fraction: float = 0.0,
        projection_lr: float = 0.05,
    ) -> None:
        super().__init__(data_info)
        self.save_hyperparameters(ignore=["data_info", "optimizer_g", "optimizer_d"])
        self.automatic_optimization = False
        self.conditioning = "label" if conditional else "none"
        self.latent_dim = latent_dim
        self.diffaugment = diffaugment
        self.gradient_clip = gradient_clip
        self.optimizer_g_factory, self.optimizer_d_factory = optimizer_g, optimizer_d
        self.final_lr_fraction = final_lr_fraction
        self.projection_lr = projection_lr

        self.condition_embedding = ConditionEmbedding(self.data_info, condition_dim) if conditional else None
        self.generator = Generator(self.image_size, latent_dim, generator_width, max_width, condition_dim if conditional else 0)
        self.discriminator = Discriminator(self.image_size, discriminator_width, max_width, self.data_info if conditional else None)
        self.generator_ema = AveragedModel(self.generator, avg_fn=ema_average(ema_decay), use_buffers=True)
        self.generator_ema.requires_grad_(False)
        # Fixed latents: generate(generator=None) draws these, so progress grids compare like with like.
        self.register_buffer("sample_noise", torch.randn(NUM_FIXED_SAMPLES, latent_dim, generator=torch.Generator().manual_seed(0)))

    def reconstruction_protocol(self, settings: ReconstructionSettings, sampling: SamplingSettings | None = None) -> str:
        return (
            f"gan: latent projection, {settings.projection_steps} Adam steps (lr {self.projection_lr}) "
            "minimising pixel MSE from z ~ N(0, I), EMA generator"
        )

    # ---------------------------------------------------------------------------------------
    # networks
    def _condition(self, conditions: Conditions | None, count: int) -> Tensor | None:
        return None if self.condition_embedding is None else self.condition_embedding(conditions, count)

    def forward(self, latent: Tensor, conditions: Conditions | None = None) -> Tensor:
        """Images (B, 3, H, W) of the trained (non-averaged) generator."""
        return self.generator(latent, self._condition(conditions, latent.shape[0]))

    def _augment(self, images: Tensor) -> Tensor:
        return diff_augment(images, self.diffaugment) if self.diffaugment else images

    def _discriminate(self, images: Tensor, conditions: Conditions | None) -> Tensor:
        return self.discriminator(self._augment(images), conditions if self.conditioning != "none" else None)

    @staticmethod
    def discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        """Hinge loss (Lim & Ye 2017): E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
        return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()

    @staticmethod
    def generator_loss(fake_scores: Tensor) -> Tensor:
        return -fake_scores.mean()

    # ---------------------------------------------------------------------------------------
    # training
    def _generate_for_step(self, batch: dict[str, Any]) -> tuple[Tensor, Conditions | None, Tensor]:
        """``(real, conditions, fake)``: the one generator forward of a training step, (B, 3, H, W) fakes."""
        real = batch["image"]
        conditions = batch if self.conditioning != "none" else None
        latent = torch.randn(real.shape[0], self.latent_dim, device=self.device)
        return real, conditions, self(latent, conditions)

    def training_losses(self, batch: dict[str, Any]) -> Iterator[Tensor]:
        """The discriminator's loss, then the generator's, as ``training_step`` back-propagates them."""
        real, conditions, fake = self._generate_for_step(batch)
        yield self.discriminator_loss(self._discriminate(real, conditions), self._discriminate(fake.detach(), conditions))
        yield self.generator_loss(self._discriminate(fake, conditions))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        opt_g, opt_d = self.optimizers()
        real, conditions, fake = self._generate_for_step(batch)

        # 1. discriminator: real vs the detached fake, same augmentation family for both
        with self.toggled_optimizer(opt_d):
            real_scores = self._discriminate(real, conditions)
            fake_scores = self._discriminate(fake.detach(), conditions)
            loss_d = self.discriminator_loss(real_scores, fake_scores)
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            if self.gradient_clip > 0:
                self.clip_gradients(opt_d, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
            opt_d.step()

        # 2. generator: through the updated discriminator, reusing the same fake
        with self.toggled_optimizer(opt_g):
            loss_g = self.generator_loss(self._discriminate(fake, conditions))
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            if self.gradient_clip > 0:
                self.clip_gradients(opt_g, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
            opt_g.step()

        # 3. schedulers by hand (one step per batch) and the EMA generator
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()
        self.generator_ema.update_parameters(self.generator)

        size = real.shape[0]
        logs = {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "real_score": real_scores.detach().mean(),
            "fake_score": fake_scores.detach().mean(),
        }
        self.log("train/loss", loss_d.detach() + loss_g.detach(), prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, batch_size=size)
        return {"loss": loss_d.detach() + loss_g.detach()}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """val/loss: the discriminator's hinge loss on held-out reals vs EMA fakes (fixed noise, no augmentation)."""
        real = batch["image"]
        conditions = batch if self.conditioning != "none" else None
        latent = torch.randn(real.shape[0], self.latent_dim, generator=torch.Generator().manual_seed(batch_idx)).to(self.device)
        fake = self.generator_ema.module(latent, self._condition(conditions, real.shape[0]))
        real_scores = self.discriminator(real, conditions)
        fake_scores = self.discriminator(fake, conditions)
        size = real.shape[0]
        self.log("val/loss", self.discriminator_loss(real_scores, fake_scores), batch_size=size, sync_dist=True)
        self.log("val/score_gap", (real_scores.mean() - fake_scores.mean()), batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> Any:
        generator_params = list(self.generator.parameters())
        if self.condition_embedding is not None:
            generator_params += list(self.condition_embedding.parameters())
        opt_g = self.optimizer_g_factory(generator_params)
        opt_d = self.optimizer_d_factory(self.discriminator.parameters())
        batches = max(0, self.trainer.max_steps) // 2  # two optimiser steps per batch; 0 (unset) keeps the rates
        schedulers = [linear_decay(opt, batches, self.final_lr_fraction) for opt in (opt_g, opt_d)]
        return [opt_g, opt_d], schedulers

    # ---------------------------------------------------------------------------------------
    # the GenerativeModule contract
    def _latents(self, num_images: int, generator: torch.Generator | None) -> Tensor:
        if generator is None and num_images <= NUM_FIXED_SAMPLES:
            return self.sample_noise[:num_images]
        return torch.randn(num_images, self.latent_dim, generator=generator).to(self.device)

    @torch.no_grad()
    def generate(self, conditions: Conditions | None, num_images: int, *, generator: torch.Generator | None = None,
                 progress: bool = False, sampling: SamplingSettings | None = None) -> Tensor:
        """EMA-generator samples; without a ``generator`` the first images use the fixed ``sample_noise``."""
        latent = self._latents(num_images, generator)
        ema = self.generator_ema.module
        was_training = ema.training
        ema.eval()  # BatchNorm with the averaged running statistics: one image does not depend on its batch
        try:
            return ema(latent, self._condition(conditions, num_images)).clamp(-1.0, 1.0)
        finally:
            ema.train(was_training)

    def reconstruct(self, batch: dict[str, Any], settings: ReconstructionSettings, *, generator: torch.Generator | None = None,
                    sampling: SamplingSettings | None = None) -> Tensor:
        """Project real images into the EMA generator's latent space: argmin_z ||G(z, y) - x||^2 by Adam.

        Not under ``no_grad``: the projection needs gradients with respect to z (only z).
        """
        images = batch["image"].to(self.device)
        count = images.shape[0]
        ema = self.generator_ema.module
        was_training = ema.training
        ema.eval()
        with torch.enable_grad(), torch.inference_mode(False):
            with torch.no_grad():
                condition = self._condition(batch if self.conditioning != "none" else None, count)
            latent = torch.randn(count, self.latent_dim, generator=generator).to(self.device).requires_grad_(True)
            optimizer = torch.optim.Adam([latent], lr=self.projection_lr)
            for _ in range(int(settings.projection_steps)):
                # per-image mean, summed: each latent gets its own image's gradient
                loss = F.mse_loss(ema(latent, condition), images, reduction="none").mean(dim=(1, 2, 3)).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                reconstruction = ema(latent, condition).clamp(-1.0, 1.0)
        ema.train(was_training)
        return reconstruction.detach()
