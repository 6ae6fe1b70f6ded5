"""Diffusion baselines ``ddpm`` (no conditioning) and ``ddpm_class`` (label embedding + CFG).

Same three layers as the hybrid: a diffusers ``UNet2DModel`` of the hybrid's size family
(``models.unets.build_unet``), the shared ``models.diffusion.NoiseProcess`` (schedule, loss,
samplers, reconstruction) and this LightningModule. The two baselines differ only in
``conditioning``: with ``"label"`` a learned embedding of diagnosis + attributes + skin tone
(``baselines.conditioning``) is added to the UNet's timestep embedding (diffusers
``class_embed_type="identity"``), rows are dropped to "all unknown" with ``cfg.drop_prob`` during
training, and sampling uses classifier-free guidance. It answers whether the hybrid's language
model adds anything over a label embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from baselines.conditioning import ConditionEmbedding
from models.schedules import with_warmup_cosine
from datamodules.info import DataInfo
from models.diffusion import DenoiseFn, NoiseProcess, classifier_free_guidance, sampler_name
from models.generative import Conditions, GenerativeModule
from models.unets import build_unet, patchify, unpatchify

CONDITIONINGS = ("none", "label")


def _plain(value: Any) -> dict[str, Any]:
    return dict(OmegaConf.to_container(value, resolve=True)) if isinstance(value, DictConfig) else dict(value or {})


class DiffusionBaseline(GenerativeModule):
    """Pixel-space DDPM, unconditional or conditioned on labels.

    Args (config groups of ``experiments/configs/model/ddpm.yaml``):
        conditioning: ``none`` (``ddpm``) or ``label`` (``ddpm_class``).
        unet: size keys of ``models.unets.build_unet`` (the hybrid's ``unet`` keys, less cross-attention).
        noise: keys of ``NoiseProcess``.
        sampler: ``{name: ddpm|ddim|dpm_solver++, steps}`` for generation and reconstruction.
        guidance_scale: classifier-free guidance weight (``label`` only; 1 = off).
        cfg: ``{drop_prob}``: probability of training a row as unconditional (``label`` only).
        embedding: ``{use_attributes, use_skin_tone}``: fields of the label embedding.
        optimizer: partial optimiser; ``warmup_steps`` of linear warm-up, then cosine to 0.
        recon_strength: noise level s of the reconstruction protocol (set by ``eval``).
    """

    def __init__(
        self,
        data_info: DataInfo | dict[str, Any],
        conditioning: str = "none",
        unet: dict[str, Any] | None = None,
        noise: dict[str, Any] | None = None,
        sampler: dict[str, Any] | None = None,
        guidance_scale: float = 1.0,
        cfg: dict[str, Any] | None = None,
        embedding: dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        warmup_steps: int = 100,
        recon_strength: float = 0.5,
    ) -> None:
        super().__init__(data_info)
        self.save_hyperparameters(ignore=["data_info", "optimizer"])
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"model.conditioning must be one of {list(CONDITIONINGS)}, got '{conditioning}'")
        self.conditioning = conditioning
        sampler_cfg = {"name": "ddim", "steps": 50, **_plain(sampler)}
        self.sampler_name, self.sampler_steps = sampler_name(sampler_cfg["name"]), int(sampler_cfg["steps"])
        self.guidance_scale = float(guidance_scale) if conditioning == "label" else 1.0
        self.drop_prob = float(_plain(cfg).get("drop_prob", 0.1)) if conditioning == "label" else 0.0
        self.optimizer_factory = optimizer
        self.warmup_steps = int(warmup_steps)
        self.recon_strength = float(recon_strength)

        unet_cfg = _plain(unet)
        self.patch_size = int(unet_cfg.get("patch_size", 1))
        labelled = conditioning == "label"
        self.unet = build_unet(image_size=self.image_size, class_embed_type="identity" if labelled else None, **unet_cfg)
        self.noise = NoiseProcess(**_plain(noise))
        # The UNet adds class_labels to its timestep embedding, whose width is 4 x the first channel count.
        time_embed_dim = 4 * int(self.unet.config.block_out_channels[0])
        self.condition_embedding = ConditionEmbedding(self.data_info, time_embed_dim, **_plain(embedding)) if labelled else None

    @property
    def reconstruction_protocol(self) -> str:  # type: ignore[override]
        own = "its own label (CFG as for generation)" if self.conditioning == "label" else "no conditioning"
        return (
            f"img2img: noise each image to t = {self.recon_strength}*T (eval.recon_strength), denoise with {own}; "
            f"{self.sampler_name}, {self.sampler_steps} steps"
        )

    @property
    def nfe(self) -> int:
        guided = self.condition_embedding is not None and self.guidance_scale != 1.0
        return self.noise.nfe(self.sampler_name, self.sampler_steps, guided=guided)

    # ---------------------------------------------------------------------------------------
    # conditioning
    def encode_conditions(self, conditions: Conditions | None, count: int, drop: Tensor | None = None) -> Tensor | None:
        """The UNet's ``class_labels`` (B, time_embed_dim): label embedding, or None when unconditional."""
        if self.condition_embedding is None:
            return None
        return self.condition_embedding(conditions, count, drop=drop)

    def denoiser(self, class_labels: Tensor | None) -> DenoiseFn:
        """Bind conditioning to the UNet: ``fn(x_t (B, 3, H, W), t (B,)) -> model output``."""

        def denoise(sample: Tensor, timestep: Tensor) -> Tensor:
            out = self.unet(patchify(sample, self.patch_size), timestep, class_labels=class_labels).sample
            return unpatchify(out, self.patch_size)

        return denoise

    def forward(self, sample: Tensor, timestep: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.denoiser(class_labels)(sample, timestep)

    def _guided(self, conditions: Conditions | None, count: int) -> DenoiseFn:
        """Denoiser for sampling: conditional with CFG where configured, else plain."""
        if self.condition_embedding is None:
            return self.denoiser(None)
        if conditions is None:  # an unconditional draw of the conditional model: all fields unknown
            return self.denoiser(self.encode_conditions(None, count))
        labels = self.encode_conditions(conditions, count)
        if self.guidance_scale == 1.0:
            return self.denoiser(labels)
        both = torch.cat([labels, self.encode_conditions(None, count)])  # [cond; uncond], (2B, D)
        return classifier_free_guidance(self.denoiser(both), self.guidance_scale)

    # ---------------------------------------------------------------------------------------
    # training
    def _step(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        images = batch["image"]
        count = images.shape[0]
        drop = None
        if self.training and self.drop_prob > 0:
            drop = torch.rand(count, device=self.device) < self.drop_prob
        loss, _ = self.noise.training_loss(self.denoiser(self.encode_conditions(batch, count, drop)), images, generator=generator)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Fixed noise and timesteps per batch, so val/loss moves only when the model does.
        loss = self._step(batch, generator=torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=2e-4))
        return with_warmup_cosine(factory(self.parameters()), self.warmup_steps, self._trainer)

    # ---------------------------------------------------------------------------------------
    # the GenerativeModule contract
    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions | None,
        num_images: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        shape = (num_images, 3, self.image_size, self.image_size)
        return self.noise.sample(
            self._guided(conditions, num_images), shape, sampler=self.sampler_name, steps=self.sampler_steps,
            generator=generator, device=self.device, progress=progress,
        )

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        images = batch["image"].to(self.device)
        conditions = {k: v for k, v in batch.items() if k not in ("image", "reference")}
        return self.noise.reconstruct(
            self._guided(conditions, images.shape[0]), images, strength=self.recon_strength,
            sampler=self.sampler_name, steps=self.sampler_steps, generator=generator,
        )
