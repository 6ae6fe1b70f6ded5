"""Convolutional VAE baseline (``exp=vae``): Kingma & Welling 2014, samples from the N(0, I) prior.

Loss per pixel: ``MSE(x, x_hat) + kl_weight(step) * KL(q(z|x) || N(0, I)) / D`` (D = 3 H W).
That is the negative ELBO of a Gaussian decoder with variance ``kl_weight / 2``, so the one
knob trades sharp reconstructions (small weight, holes in the prior) for coherent prior samples
(large weight, blur). The weight ramps linearly from 0 over ``kl_warmup_steps`` (Bowman et al.
2016) so the encoder learns to carry information before the KL term presses on it.

Optional sharpness terms, free of pretrained perceptual networks (so every row of the table
stays free of ImageNet features that the FD extractor might share):
- ``gradient_weight``: L1 between the finite-difference image gradients of x and x_hat
  (penalises the smoothed edges an MSE decoder prefers);
- ``frequency_weight``: L1 between log-amplitude spectra (a focal-frequency-style term, Jiang
  et al. 2021, without the focal weighting), which restores high-frequency energy.

With ``conditional: true`` it is a conditional VAE (Sohn et al. 2015): the label/attribute
embedding of ``models.conditioners.ConditionEmbedding`` enters encoder and decoder, and ``generate`` follows the
given conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.info import DataInfo
from models.conditioners import ConditionEmbedding
from models.generative import Conditions, ReconstructionSettings, SamplingSettings, SingleLossModule
from models.schedules import with_warmup_cosine


def _block(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(min(groups, out_channels), out_channels), nn.SiLU()
    )


class Encoder(nn.Module):
    """(B, 3, H, W) -> mean and log-variance (B, latent_dim); one stride-2 conv per channel entry."""

    def __init__(self, image_size: int, channels: Sequence[int], latent_dim: int, condition_dim: int, groups: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_block(3, channels[0], groups)]
        previous = channels[0]
        for width in channels:
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.GroupNorm(min(groups, width), width), nn.SiLU(), _block(width, width, groups)]
            previous = width
        self.body = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.head = nn.Linear(previous * side * side + condition_dim, 2 * latent_dim)

    def forward(self, images: Tensor, condition: Tensor | None) -> tuple[Tensor, Tensor]:
        features = self.body(images).flatten(1)  # (B, C * s * s)
        if condition is not None:
            features = torch.cat([features, condition], dim=1)
        mean, log_var = self.head(features).chunk(2, dim=1)  # (B, latent_dim) each
        return mean, log_var.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """(B, latent_dim) -> (B, 3, H, W); conv then nearest upsampling per level (no transposed-conv
    checkerboards), widths change before each upsampling so the full-resolution convs stay narrow."""

    def __init__(self, image_size: int, channels: Sequence[int], latent_dim: int, condition_dim: int, groups: int) -> None:
        super().__init__()
        widths = list(reversed(channels))
        self.side = image_size // 2 ** len(channels)
        self.stem = nn.Linear(latent_dim + condition_dim, widths[0] * self.side * self.side)
        layers: list[nn.Module] = []
        previous = widths[0]
        for width in widths:
            layers += [_block(previous, width, groups), nn.Upsample(scale_factor=2, mode="nearest")]
            previous = width
        self.body = nn.Sequential(*layers, _block(previous, previous, groups), nn.Conv2d(previous, 3, 3, padding=1))

    def forward(self, latent: Tensor, condition: Tensor | None) -> Tensor:
        if condition is not None:
            latent = torch.cat([latent, condition], dim=1)
        features = self.stem(latent).view(latent.shape[0], -1, self.side, self.side)  # (B, C, s, s)
        return self.body(features)  # (B, 3, H, W), unbounded; clamped only for output


def image_gradient_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean L1 between horizontal and vertical finite differences."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(prediction), dx(target)) + F.l1_loss(dy(prediction), dy(target))


def spectrum_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean L1 between log(1 + |FFT|) amplitude spectra (orthonormal 2-D FFT per channel)."""
    amplitude = lambda x: torch.log1p(torch.fft.rfft2(x.float(), norm="ortho").abs())  # noqa: E731
    return F.l1_loss(amplitude(prediction), amplitude(target))


class VAE(SingleLossModule):
    """Convolutional VAE; unconditional by default, a conditional VAE with ``conditional: true``.

    Args:
        channels: encoder widths, one stride-2 level each (the decoder mirrors them); the
            latent is a vector, the smallest feature map is image_size / 2^len(channels).
        latent_dim: width of z.
        kl_weight: beta of the per-pixel loss (module docstring); 2 sigma^2 of the decoder.
        kl_warmup_steps: linear ramp of the KL weight from 0.
        gradient_weight, frequency_weight: optional sharpness terms (0 = off).
        conditional: condition encoder and decoder on label, attributes and skin tone.
        condition_dim: width of that embedding.
        norm_num_groups: GroupNorm groups.
        optimizer: partial optimiser; ``warmup_steps`` of linear warm-up, then cosine to 0.
    """

    def __init__(
        self,
        data_info: DataInfo | dict[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        channels: Sequence[int] = (32, 64, 128),
        latent_dim: int = 128,
        kl_weight: float = 0.02,
        kl_warmup_steps: int = 500,
        gradient_weight: float = 0.5,
        frequency_weight: float = 0.0,
        conditional: bool = False,
        condition_dim: int = 32,
        norm_num_groups: int = 8,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__(data_info)
        self.save_hyperparameters(ignore=["data_info", "optimizer"])
        if self.image_size % 2 ** len(channels):
            raise ValueError(f"image size {self.image_size} is not divisible by 2^{len(channels)} (vae.channels has {len(channels)} levels)")
        self.conditioning = "label" if conditional else "none"
        self.latent_dim = latent_dim
        self.kl_weight = kl_weight
        self.kl_warmup_steps = kl_warmup_steps
        self.gradient_weight = gradient_weight
        self.frequency_weight = frequency_weight
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.condition_embedding = ConditionEmbedding(self.data_info, condition_dim) if conditional else None
        extra = condition_dim if conditional else 0
        self.encoder = Encoder(self.image_size, channels, latent_dim, extra, norm_num_groups)
        self.decoder = Decoder(self.image_size, channels, latent_dim, extra, norm_num_groups)

    def _condition(self, conditions: Conditions | None, count: int) -> Tensor | None:
        if self.condition_embedding is None:
            return None
        return self.condition_embedding(conditions, count)

    def forward(self, images: Tensor, condition: Tensor | None = None, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruction (B, 3, H, W), posterior mean and log-variance (B, latent_dim)."""
        mean, log_var = self.encoder(images, condition)
        latent = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if sample else mean  # reparameterisation
        return self.decoder(latent, condition), mean, log_var

    def current_kl_weight(self) -> float:
        ramp = min(1.0, (self.global_step + 1) / self.kl_warmup_steps) if self.kl_warmup_steps > 0 else 1.0
        return self.kl_weight * ramp

    def _step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = batch["image"]
        reconstruction, mean, log_var = self(images, self._condition(batch, images.shape[0]))
        pixels = images[0].numel()
        mse = F.mse_loss(reconstruction, images)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1).mean()  # nats per image
        out = {"mse": mse, "kl": kl, "kl_weight": torch.tensor(self.current_kl_weight())}
        loss = mse + out["kl_weight"] * kl / pixels
        if self.gradient_weight > 0:
            out["gradient_loss"] = image_gradient_loss(reconstruction, images)
            loss = loss + self.gradient_weight * out["gradient_loss"]
        if self.frequency_weight > 0:
            out["frequency_loss"] = spectrum_loss(reconstruction, images)
            loss = loss + self.frequency_weight * out["frequency_loss"]
        # The unweighted negative ELBO per pixel (beta at its final value): comparable across steps.
        out["elbo_loss"] = mse + self.kl_weight * kl / pixels
        out["loss"] = loss
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with torch.random.fork_rng(devices=[]):  # fixed posterior noise: val/loss moves only with the model
            torch.manual_seed(batch_idx)
            out = self._step(batch)
        self.log("val/loss", out["elbo_loss"], prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        self.log("val/mse", out["mse"], batch_size=batch["image"].shape[0], sync_dist=True)

    def configure_optimizers(self) -> Any:
        return with_warmup_cosine(self.optimizer_factory(self.parameters()), self.warmup_steps, self.trainer.max_steps)

    # ---------------------------------------------------------------------------------------
    # the GenerativeModule contract
    @torch.no_grad()
    def generate(self, conditions: Conditions | None, num_images: int, *, generator: torch.Generator | None = None,
                 progress: bool = False, sampling: SamplingSettings | None = None) -> Tensor:
        # z ~ N(0, I) drawn on the CPU generator: the same seed gives the same images on any device
        latent = torch.randn(num_images, self.latent_dim, generator=generator).to(self.device)
        return self.decoder(latent, self._condition(conditions, num_images)).clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, Any], settings: ReconstructionSettings, *, generator: torch.Generator | None = None,
                    sampling: SamplingSettings | None = None) -> Tensor:
        images = batch["image"].to(self.device)
        reconstruction, _, _ = self(images, self._condition(batch, images.shape[0]), sample=False)
        return reconstruction.clamp(-1.0, 1.0)

    def reconstruction_protocol(self, settings: ReconstructionSettings, sampling: SamplingSettings | None = None) -> str:
        return "vae: encode/decode of test images (posterior mean)"
