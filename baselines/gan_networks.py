"""Generator and discriminator of the GAN baseline (SNGAN "standard CNN", Miyato et al. 2018).

arXiv:1802.05957 (spectral norm) and arXiv:1802.05637 (projection discriminator). Sizes follow
the image: the generator starts at 4 x 4 and doubles log2(H / 4) times; the discriminator halves
as often. Widths are ``width * 2^level`` capped at ``max_width``, so one config serves 16 px
(smoke), 32 px (quick) and 64 px (full).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from models.conditioners import ConditionEmbedding
from datamodules.info import DataInfo

BASE_SIDE = 4  # side of the generator's first feature map and the discriminator's last


def num_levels(image_size: int) -> int:
    """Resolution doublings between 4 px and ``image_size``; a clear error for sizes that do not fit."""
    levels = int(round(math.log2(image_size / BASE_SIDE))) if image_size >= 2 * BASE_SIDE else 0
    if levels < 1 or BASE_SIDE * 2**levels != image_size:
        raise ValueError(f"the GAN needs a power-of-two image size >= {2 * BASE_SIDE}, got {image_size}")
    return levels


def level_widths(levels: int, width: int, max_width: int) -> list[int]:
    """Widths at full resolution first: [width, 2 width, ..., ] capped at ``max_width``."""
    return [min(width * 2**i, max_width) for i in range(levels + 1)]


class Generator(nn.Module):
    """z (B, latent_dim) [+ condition (B, condition_dim)] -> images (B, 3, H, W) in [-1, 1].

    Nearest upsampling + 3x3 conv + BatchNorm + ReLU per level (no transposed-conv checkerboards),
    tanh output, as the SNGAN standard-CNN generator.
    """

    def __init__(self, image_size: int, latent_dim: int, width: int, max_width: int, condition_dim: int = 0) -> None:
        super().__init__()
        widths = list(reversed(level_widths(num_levels(image_size), width, max_width)))  # 4 px first
        self.stem = nn.Linear(latent_dim + condition_dim, widths[0] * BASE_SIDE * BASE_SIDE)
        layers: list[nn.Module] = [nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for previous, current in zip(widths[:-1], widths[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(previous, current, 3, padding=1), nn.BatchNorm2d(current), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(widths[-1], 3, 3, padding=1), nn.Tanh())
        self.first_width = widths[0]

    def forward(self, latent: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is not None:
            latent = torch.cat([latent, condition], dim=1)
        features = self.stem(latent).view(latent.shape[0], self.first_width, BASE_SIDE, BASE_SIDE)  # (B, C, 4, 4)
        return self.body(features)  # (B, 3, H, W)


class Discriminator(nn.Module):
    """Images (B, 3, H, W) -> realness scores (B,); every layer spectrally normalised.

    Per level a 3x3 conv and a 4x4 stride-2 conv (LeakyReLU 0.1), a last 3x3 conv at 4 px, global
    sum pooling, then ``linear(h) + <embed(y), h>`` when conditional (projection discriminator).
    """

    def __init__(self, image_size: int, width: int, max_width: int, data_info: DataInfo | None = None) -> None:
        super().__init__()
        widths = level_widths(num_levels(image_size), width, max_width)
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(3, widths[0], 3, padding=1)), nn.LeakyReLU(0.1)]
        for previous, current in zip(widths[:-1], widths[1:]):
            layers += [
                spectral_norm(nn.Conv2d(previous, previous, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),
                spectral_norm(nn.Conv2d(previous, current, 3, padding=1)), nn.LeakyReLU(0.1),
            ]
        self.body = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.projection = None
        if data_info is not None:
            self.projection = ConditionEmbedding(data_info, widths[-1])
            for name in list(self.projection.tables):
                self.projection.tables[name] = spectral_norm(self.projection.tables[name])

    def forward(self, images: Tensor, conditions: dict | None = None) -> Tensor:
        features = self.body(images).sum(dim=(2, 3))  # (B, C): global sum pooling
        score = self.linear(features).squeeze(1)  # (B,)
        if self.projection is not None:
            embedding = self.projection(conditions, images.shape[0])  # (B, C)
            score = score + (embedding * features).sum(dim=1)
        return score
