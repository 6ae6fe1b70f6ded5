"""Differentiable augmentation for data-efficient GAN training (DiffAugment, Zhao et al. 2020).

arXiv:2006.10738. The same random colour, translation and cutout transforms are applied to real
and generated images before the discriminator sees them, in both the D and the G step, and they
are differentiable, so G's gradient passes through them. This keeps D from memorising a small
training set (a few thousand dermoscopy images) without leaking the augmentation into samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("color", "translation", "cutout")


def _uniform(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B, 1, 1, 1) uniform draws in [0, 1) on the images' device."""
    return torch.rand(images.shape[0], 1, 1, 1, generator=generator, device="cpu").to(images.device, images.dtype)


def color(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random brightness (+-0.5), saturation (x0-2) and contrast (x0.5-1.5) per image, for [-1, 1] images."""
    images = images + (_uniform(images, generator) - 0.5)
    mean = images.mean(dim=1, keepdim=True)
    images = (images - mean) * (_uniform(images, generator) * 2.0) + mean
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * (_uniform(images, generator) + 0.5) + mean


def translation(images: Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by up to ``ratio`` of its side, zero-padded (integer pixels, gradient-preserving)."""
    batch, _, height, width = images.shape
    max_y, max_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    shift_y = torch.randint(-max_y, max_y + 1, (batch, 1, 1), generator=generator).to(images.device)
    shift_x = torch.randint(-max_x, max_x + 1, (batch, 1, 1), generator=generator).to(images.device)
    grid_b, grid_y, grid_x = torch.meshgrid(
        torch.arange(batch, device=images.device), torch.arange(height, device=images.device), torch.arange(width, device=images.device), indexing="ij"
    )
    # Gather from the padded image: output pixel (y, x) reads input pixel (y - shift_y, x - shift_x).
    grid_y = (grid_y - shift_y + 1).clamp(0, height + 1)
    grid_x = (grid_x - shift_x + 1).clamp(0, width + 1)
    padded = F.pad(images, [1, 1, 1, 1])  # (B, C, H + 2, W + 2); the zero border fills what moved in
    return padded.permute(0, 2, 3, 1)[grid_b, grid_y, grid_x].permute(0, 3, 1, 2).contiguous()


def cutout(images: Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Zero one square of ``ratio`` x side per image at a random centre."""
    batch, _, height, width = images.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    centre_y = torch.randint(0, height + (1 - size_y % 2), (batch, 1, 1), generator=generator).to(images.device)
    centre_x = torch.randint(0, width + (1 - size_x % 2), (batch, 1, 1), generator=generator).to(images.device)
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    inside_y = (rows >= centre_y - size_y // 2) & (rows < centre_y - size_y // 2 + size_y)
    inside_x = (cols >= centre_x - size_x // 2) & (cols < centre_x - size_x // 2 + size_x)
    keep = ~(inside_y & inside_x)  # (B, H, W)
    return images * keep.unsqueeze(1).to(images.dtype)


def diff_augment(images: Tensor, policy: str | list[str] | tuple[str, ...] = POLICIES, generator: torch.Generator | None = None) -> Tensor:
    """Apply the named transforms in order (``"color,translation,cutout"`` or a list; empty = identity)."""
    names = [p for p in (policy.split(",") if isinstance(policy, str) else policy) if p]
    for name in names:
        if name == "color":
            images = color(images, generator)
        elif name == "translation":
            images = translation(images, generator=generator)
        elif name == "cutout":
            images = cutout(images, generator=generator)
        else:
            raise ValueError(f"unknown DiffAugment policy '{name}'; valid: {list(POLICIES)}")
    return images
