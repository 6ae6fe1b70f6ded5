"""Tiny stand-ins for the evaluation tests: a blob data set with known attributes and fake generators.

The blob images follow the batch-dict contract: the diagnosis sets the blob colour, the ``border``
attribute its size, the skin tone the background brightness, so a tiny judge learns them in seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.info import DataInfo
from models.generative import GenerativeModule

CLASS_COLOURS = torch.tensor([[0.9, -0.6, -0.6], [-0.6, 0.8, -0.6], [-0.6, -0.6, 0.9]])


def render(label: int, border: int, skin_tone: int, size: int, generator: torch.Generator) -> Tensor:
    """One (3, size, size) image in [-1, 1]."""
    background = 0.7 - 0.25 * (skin_tone - 1)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = size / 2 + torch.randn(2, generator=generator) * size * 0.05
    radius = size * (0.18 if border == 0 else 0.32)
    inside = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) < radius**2).float()
    image = background * (1 - inside) + CLASS_COLOURS[label].view(3, 1, 1) * inside
    return (image + 0.05 * torch.randn(3, size, size, generator=generator)).clamp(-1, 1)


class BlobDataset(Dataset):
    def __init__(self, num: int, size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 3, num)
        self.borders = rng.integers(0, 2, num)
        self.tones = rng.integers(1, 7, num)
        self.size, self.seed = size, seed
        self.image_ids = [f"blob_{seed}_{i}" for i in range(num)]
        self.lesion_ids = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed * 100_000 + index)
        label, border, tone = int(self.labels[index]), int(self.borders[index]), int(self.tones[index])
        return {
            "image": render(label, border, tone, self.size, generator),
            "caption": f"blob {label} border {border} tone {tone}",
            "label": label,
            "attributes": {"border": border},
            "skin_tone": tone,
        }


class BlobDataModule:
    """Just enough of SkinDataModule for evaluation: info, splits, sample_conditions (with held-out prompts).

    Held-out prompts: ``paraphrase`` captions the same rows with a template training never used;
    ``combo`` draws only the combination (blue, large) from the evaluation split's rows.
    """

    HELDOUT_COMBO = (2, 1)

    def __init__(self, size: int = 16, num_train: int = 384, num_eval: int = 128) -> None:
        self.info = DataInfo("blobs", size, ("red", "green", "blue"), {"border": ("small", "large")}, True, f"blobs{size}")
        self.train_set = BlobDataset(num_train, size, seed=1)
        self.val_set = BlobDataset(num_eval, size, seed=2)
        self.test_set = BlobDataset(num_eval, size, seed=3)

    def setup(self, stage: str | None = None) -> None:
        pass

    def sample_conditions(self, n: int, seed: int, *, split: str = "train", holdout: str | None = None) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        label, border, tone = rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(1, 7, n)
        if holdout == "combo":
            label, border = np.full(n, self.HELDOUT_COMBO[0]), np.full(n, self.HELDOUT_COMBO[1])
        elif holdout == "balanced":
            label = rng.permutation(np.arange(n) % 3)
        elif holdout not in (None, "paraphrase"):
            raise ValueError(f"unknown holdout {holdout!r}")
        template = "a {} blob, its border {}, on tone {}" if holdout == "paraphrase" else "blob {} border {} tone {}"
        return {
            "caption": [template.format(a, b, c) for a, b, c in zip(label, border, tone)],
            "label": torch.as_tensor(label), "attributes": {"border": torch.as_tensor(border)},
            "skin_tone": torch.as_tensor(tone),
        }


class BlobGenerator(GenerativeModule):
    """Draws blobs for the requested conditions (a perfect conditional generator), plus optional noise.

    ``reconstruct`` returns the input plus ``recon_noise`` Gaussian noise (seeded by the generator).
    It records the sampling settings it was handed (``received``): evaluation passes them in.
    """

    conditioning = "label"

    def __init__(self, data_info: DataInfo, noise: float = 0.0, recon_noise: float = 0.1) -> None:
        super().__init__(data_info)
        self.noise, self.recon_noise = noise, recon_noise
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.received: list[Any] = []

    def reconstruction_protocol(self, settings=None, sampling=None) -> str:  # type: ignore[override]
        return "identity-plus-noise"

    def nfe(self, sampling=None) -> int:  # type: ignore[override]
        return 1

    def sampling_description(self, sampling=None) -> dict[str, Any]:
        steps = sampling.steps if sampling is not None and sampling.steps is not None else 1
        return {"sampler": "blob", "steps": steps, "guidance_scale": None}

    @torch.no_grad()
    def generate(self, conditions, num_images, *, generator=None, progress=False, sampling=None) -> Tensor:
        self.received.append(sampling)
        generator = generator or torch.Generator().manual_seed(0)
        size = self.image_size
        images = torch.stack([
            render(int(conditions["label"][i]), int(conditions["attributes"]["border"][i]), int(conditions["skin_tone"][i]), size, generator)
            for i in range(num_images)
        ])
        return (images + self.noise * torch.randn(images.shape, generator=generator)).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, batch, settings=None, *, generator=None, sampling=None) -> Tensor:
        noise = torch.randn(batch["image"].shape, generator=generator or torch.Generator().manual_seed(0))
        return (batch["image"] + self.recon_noise * noise).clamp(-1, 1)


class NoiseGenerator(GenerativeModule):
    """An unconditional generator of pure noise, without a reconstruction protocol."""

    def __init__(self, data_info: DataInfo) -> None:
        super().__init__(data_info)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def generate(self, conditions, num_images, *, generator=None, progress=False, sampling=None) -> Tensor:
        size = self.image_size
        return torch.randn(num_images, 3, size, size, generator=generator).clamp(-1, 1)


class CopyGenerator(NoiseGenerator):
    """Returns training images verbatim (a memorizing generator), cycling through the first ``count``."""

    def __init__(self, data_info: DataInfo, images: Tensor) -> None:
        super().__init__(data_info)
        self.images = images

    @torch.no_grad()
    def generate(self, conditions, num_images, *, generator=None, progress=False, sampling=None) -> Tensor:
        return self.images[torch.arange(num_images) % self.images.shape[0]]
