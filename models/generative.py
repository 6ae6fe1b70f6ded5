"""The one interface every generator offers, so callbacks and evaluation treat them alike.

A model is a LightningModule that can (1) draw images for given conditions and (2) optionally
reconstruct real images for the SSIM/PSNR protocol. Conditions are a batch without its images:
``{"caption": list[str], "label": (N,), "attributes": {name: (N,)}, "skin_tone": (N,)}``.
Unconditional models ignore them.

How a model draws (sampler, steps, guidance) and the reconstruction protocol's knobs are passed
in as :class:`SamplingSettings` and :class:`ReconstructionSettings`; a model never has its
settings changed from outside.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor

from datamodules.info import DataInfo
from models.containers import safe_container

Conditions = dict[str, Any]


@dataclass(frozen=True)
class SamplingSettings:
    """How a generator draws; a None field keeps the model's configured value."""

    sampler: str | None = None  # ddpm | ddim | dpm_solver++ (aliases as models.diffusion.sampler_name accepts)
    steps: int | None = None
    guidance_scale: float | None = None


@dataclass(frozen=True)
class ReconstructionSettings:
    """The SSIM/PSNR reconstruction protocol's knobs (from the eval config; no defaults)."""

    strength: float  # diffusion img2img noise level s (t = s*T)
    projection_steps: int  # GAN latent-projection Adam steps


class GenerativeModule(L.LightningModule):
    """Base class of the hybrid and the baselines.

    Subclasses set ``conditioning`` (``"none"``, ``"label"`` or ``"text"``) and implement
    ``generate``; those with a reconstruction protocol implement ``reconstruct`` and describe it
    in ``reconstruction_protocol``. Models that draw in one network pass keep the defaults of
    ``nfe`` and ``sampling_description``; diffusion models override them.
    """

    conditioning: ClassVar[str] = "none"

    def __init__(self, data_info: DataInfo | dict[str, Any]) -> None:
        super().__init__()
        self.data_info = data_info if isinstance(data_info, DataInfo) else DataInfo.from_dict(data_info)
        # The resolved run config; the runner sets it so a checkpoint can rebuild its model.
        self.run_config: dict[str, Any] | None = None

    @property
    def image_size(self) -> int:
        return self.data_info.image_size

    def nfe(self, sampling: SamplingSettings | None = None) -> int | None:
        """Network evaluations per generated image (None where it does not apply)."""
        return 1

    def provenance(self) -> dict[str, Any]:
        """What the figures depend on beyond the config, for metrics.json (a fitted first stage's record); {} if nothing."""
        return {}

    def sampling_description(self, sampling: SamplingSettings | None = None) -> dict[str, Any]:
        """The effective ``{"sampler", "steps", "guidance_scale"}`` for provenance; empty without a sampler."""
        return {}

    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions | None,
        num_images: int,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
        sampling: SamplingSettings | None = None,
    ) -> Tensor:
        """Draw ``num_images`` images, shape (N, 3, H, W), values in [-1, 1], on ``self.device``.

        ``conditions`` holds ``num_images`` entries per key, or is None (unconditional draw).
        ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible.
        """
        raise NotImplementedError

    def reconstruct(
        self,
        batch: dict[str, Any],
        settings: ReconstructionSettings,
        *,
        generator: torch.Generator | None = None,
        sampling: SamplingSettings | None = None,
    ) -> Tensor | None:
        """Reconstruct ``batch["image"]`` by the model's protocol; None if it has none."""
        return None

    def reconstruction_protocol(self, settings: ReconstructionSettings, sampling: SamplingSettings | None = None) -> str | None:
        """One line naming how ``reconstruct`` works under ``settings`` (metrics.json); None without a protocol."""
        return None

    def training_losses(self, batch: dict[str, Any]) -> Iterator[Tensor]:
        """The loss of each backward pass one training step makes on ``batch``, in order.

        The memory estimate (``models.memory``) back-propagates them to measure a step's activations.
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose its training losses")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        checkpoint["data_info"] = self.data_info.to_dict()
        if self.run_config is not None:
            checkpoint["dermsynth_config"] = safe_container(self.run_config)
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = safe_container(dict(checkpoint[key]))


class SingleLossModule(GenerativeModule):
    """A generator whose training step is one backward pass of ``_step(batch)["loss"]``; the step logs the
    loss on the progress bar and every other term of ``_step`` under ``train/`` (the VAE, the diffusion models)."""

    def _step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def training_losses(self, batch: dict[str, Any]) -> Iterator[Tensor]:
        yield self._step(batch)["loss"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self._step(batch)
        size = batch["image"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        terms = {f"train/{k}": v for k, v in out.items() if k != "loss"}
        if terms:
            self.log_dict(terms, batch_size=size)
        return out["loss"]

