"""SSIM, PSNR and MS-SSIM of a model's own reconstructions of real images of the evaluation split.

Each model defines how it reconstructs (``GenerativeModule.reconstruction_protocol``): the VAE
encodes and decodes; diffusion models noise to strength ``eval.recon_strength`` and denoise with
the image's own caption/label; the GAN projects into its latent space by
``eval.gan_projection_steps`` Adam steps. The settings reach the model as
``ReconstructionSettings``. Figures are means over images of per-image values, on images mapped
to [0, 1].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from tqdm.auto import tqdm

from evaluation.data import take
from models.generative import ReconstructionSettings, SamplingSettings

MS_SSIM_MIN_SIZE = 161  # 5 scales of an 11-px window: the side must exceed (11 - 1) * 2**4


def image_quality(reconstructed: Tensor, target: Tensor) -> dict[str, float | None]:
    """Mean per-image SSIM (11-px Gaussian window, sigma 1.5), PSNR and MS-SSIM; images in [-1, 1]."""
    preds = ((reconstructed.float().clamp(-1, 1) + 1) / 2).cpu()
    target = ((target.float().clamp(-1, 1) + 1) / 2).cpu()
    ssim = structural_similarity_index_measure(preds, target, data_range=1.0, reduction="none")
    psnr = peak_signal_noise_ratio(preds, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ms_ssim = None
    if min(preds.shape[-2:]) >= MS_SSIM_MIN_SIZE:
        ms_ssim = float(multiscale_structural_similarity_index_measure(preds, target, data_range=1.0))
    return {"ssim": float(ssim.mean()), "psnr": float(psnr.mean()), "ms_ssim": ms_ssim}


@torch.no_grad()
def reconstruction_metrics(
    model: Any, real: dict[str, Any], settings: ReconstructionSettings, sampling: SamplingSettings | None,
    batch_size: int, seed: int, progress: bool = False,
) -> dict[str, float | None] | None:
    """Reconstruct ``real`` (a stacked batch) by the model's protocol; None if the model has none."""
    if model.reconstruction_protocol(settings, sampling) is None:
        return None
    outputs = []
    count = int(real["image"].shape[0])
    for index, start in enumerate(tqdm(range(0, count, batch_size), desc="reconstruct", disable=not progress, leave=False)):
        batch = take(real, slice(start, start + batch_size))
        batch["image"] = batch["image"].to(model.device)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        with torch.inference_mode(False), torch.enable_grad():  # GAN projection optimises a latent
            reconstructed = model.reconstruct(batch, settings, generator=generator, sampling=sampling)
        if reconstructed is None:
            return None
        outputs.append(reconstructed.detach().cpu())
    return image_quality(torch.cat(outputs), real["image"])
