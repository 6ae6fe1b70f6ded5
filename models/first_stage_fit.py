"""Fitting the latent route's autoencoder on a CPU: the recipe, the latent statistics, the reconstruction figures.

The recipe is Stable Diffusion's first-stage objective without its LPIPS and adversarial terms
(no pretrained perceptual network ships offline, and a discriminator doubles the cost): L1 over
pixels plus ``kl_weight`` times the KL to N(0, I), both summed per image as in SD's
``LPIPSWithDiscriminator`` (kl_weight 1e-6 there), AdamW with a short warm-up and cosine decay.
Training images come augmented from the training split (flips, rotations, brightness), in a
seeded order; every random draw happens inside a forked generator, so fitting (or loading from
the cache) leaves the run's random streams as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor
from torch.utils.data import Dataset
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm.auto import tqdm

from models.schedules import warmup_cosine


@dataclass(frozen=True)
class FitRecipe:
    """``model.first_stage.fit``: optimiser steps, batch size, peak learning rate, KL weight, seed."""

    steps: int
    batch_size: int
    lr: float
    kl_weight: float
    seed: int

    @classmethod
    def from_config(cls, fit: Mapping[str, Any]) -> FitRecipe:
        keys = set(cls.__dataclass_fields__)
        given = dict(fit)
        if set(given) != keys:
            raise ValueError(f"model.first_stage.fit needs the keys {sorted(keys)}: missing {sorted(keys - set(given))}, unknown {sorted(set(given) - keys)}")
        recipe = cls(int(given["steps"]), int(given["batch_size"]), float(given["lr"]), float(given["kl_weight"]), int(given["seed"]))
        if recipe.steps < 1 or recipe.batch_size < 1 or recipe.lr <= 0 or recipe.kl_weight < 0:
            raise ValueError(f"model.first_stage.fit: steps, batch_size and lr must be positive, kl_weight >= 0; got {recipe}")
        return recipe

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def images_of(dataset: Dataset, indices: list[int]) -> Tensor:
    """(N, 3, H, W) images of a dataset whose items are batch-contract dicts."""
    return torch.stack([dataset[i]["image"] for i in indices])


def shuffled_batches(dataset: Dataset, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless seeded epochs of index batches (the last, short batch of each epoch dropped)."""
    count = len(dataset)
    if count < batch_size:
        raise ValueError(f"model.first_stage.fit.batch_size={batch_size} exceeds the {count} training images")
    while True:
        order = torch.randperm(count, generator=generator).tolist()
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def fit_autoencoder(vae: AutoencoderKL, dataset: Dataset, recipe: FitRecipe, progress: bool = False) -> float:
    """Train ``vae`` on ``dataset`` for ``recipe.steps`` steps; returns the seconds it took (frozen again after)."""
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, max(1, recipe.steps // 20), recipe.steps)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(recipe.seed)  # the augmentation draws from torch's global generator
        order = shuffled_batches(dataset, recipe.batch_size, torch.Generator().manual_seed(recipe.seed))
        bar = tqdm(range(recipe.steps), desc="first stage fit", disable=not progress, leave=False)
        for _ in bar:
            images = images_of(dataset, next(order)).to(device)
            posterior = vae.encode(images).latent_dist
            reconstructed = vae.decode(posterior.sample()).sample
            # per image: L1 summed over pixels + kl_weight * KL summed over latent elements; per element for the scale
            loss = ((reconstructed - images).abs().sum(dim=(1, 2, 3)) + recipe.kl_weight * posterior.kl()).mean() / images[0].numel()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.requires_grad_(False).train(was_training)  # in step with the module around it (no dropout or batch norm inside)
    return time.perf_counter() - start


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, dataset: Dataset, recipe: FitRecipe, max_images: int = 2048) -> tuple[float, float]:
    """Mean and standard deviation over all elements of the posterior means of up to ``max_images`` training images."""
    device = next(vae.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(recipe.seed))[:max_images].tolist()
        means = [vae.encode(images_of(dataset, chosen[i : i + recipe.batch_size]).to(device)).latent_dist.mode().cpu()
                 for i in range(0, len(chosen), recipe.batch_size)]
    latents = torch.cat(means).double()
    return float(latents.mean()), float(latents.std())


@torch.no_grad()
def reconstruction_quality(
    round_trip: Callable[[Tensor], Tensor], dataset: Dataset, limit: int | None, batch_size: int, device: torch.device | str = "cpu"
) -> tuple[float, float, int]:
    """Mean per-image PSNR and SSIM of ``round_trip`` on the first ``limit`` images (all if None), in [0, 1].

    The conventions of ``evaluation.reconstruction.image_quality``: 11-px Gaussian SSIM window
    (sigma 1.5), data range 1.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    psnr, ssim = [], []
    for start in range(0, count, batch_size):
        images = images_of(dataset, list(range(start, min(start + batch_size, count))))
        target = (images + 1) / 2
        preds = (round_trip(images.to(device)).float().cpu().clamp(-1, 1) + 1) / 2
        psnr.append(peak_signal_noise_ratio(preds, target, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        ssim.append(structural_similarity_index_measure(preds, target, data_range=1.0, reduction="none"))
    return float(torch.cat(psnr).mean()), float(torch.cat(ssim).mean()), count

