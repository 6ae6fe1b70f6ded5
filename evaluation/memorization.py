"""Memorization: how close is each generated image to its nearest training image?

Distances are measured in pixel space (RMS over a thumbnail, so sizes compare) and in feature
space. A sample counts as a copy when it is closer to a training image than the 1st percentile of
training-to-training nearest-neighbour distances: closer than almost any two real images are to
each other. The closest pairs are saved as a grid for a human to look at.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image


def thumbnails(images: Tensor, size: int) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3 * s * s) pixel vectors at side s = min(size, H)."""
    side = min(size, images.shape[-1])
    if side != images.shape[-1]:
        images = F.interpolate(images.float(), size=(side, side), mode="area")
    return images.float().flatten(1)


def nearest(queries: Tensor, references: Tensor, exclude_self: bool = False, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Euclidean distance to, and index of, the nearest reference row for each query row."""
    distances, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        block = torch.cdist(queries[start : start + chunk].double(), references.double())
        if exclude_self:
            rows = torch.arange(block.shape[0])
            block[rows, rows + start] = math.inf
        value, index = block.min(dim=1)
        distances.append(value.float())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def distance_summary(fake_to_train: Tensor, train_to_train: Tensor, percentile: float) -> dict[str, float]:
    """Distribution of nearest-neighbour distances and the copy rate under the train-to-train threshold."""
    threshold = float(torch.quantile(train_to_train.double(), percentile / 100))
    quantiles = torch.quantile(fake_to_train.double(), torch.tensor([0.01, 0.05, 0.5], dtype=torch.double))
    return {
        "copy_rate": float((fake_to_train < threshold).float().mean()),
        "threshold": threshold,
        "min": float(fake_to_train.min()),
        "p01": float(quantiles[0]),
        "p05": float(quantiles[1]),
        "median": float(quantiles[2]),
        "mean": float(fake_to_train.mean()),
        "train_to_train_median": float(train_to_train.median()),
    }


def memorization_report(
    fake_images: Tensor,
    fake_features: Tensor,
    train_images: Tensor,
    train_features: Tensor,
    grid_path: Path | None = None,
    pixel_size: int = 32,
    percentile: float = 1.0,
    num_pairs: int = 16,
) -> dict[str, Any]:
    """Nearest training image of every generated one, in pixels and features; copy rates; pairs grid.

    The grid shows the ``num_pairs`` generated images closest (in features) to a training image,
    each beside that training image (generated left, training right).
    """
    if train_images.shape[0] < 2:
        raise ValueError("memorization needs at least 2 training images")
    fake_pixels, train_pixels = thumbnails(fake_images, pixel_size), thumbnails(train_images, pixel_size)
    scale = math.sqrt(fake_pixels.shape[1])  # RMS distance: independent of the thumbnail size
    pixel_nn, _ = nearest(fake_pixels, train_pixels)
    pixel_train_nn, _ = nearest(train_pixels, train_pixels, exclude_self=True)
    feature_nn, feature_index = nearest(fake_features, train_features)
    feature_train_nn, _ = nearest(train_features, train_features, exclude_self=True)
    report: dict[str, Any] = {
        "pixel": distance_summary(pixel_nn / scale, pixel_train_nn / scale, percentile),
        "feature": distance_summary(feature_nn, feature_train_nn, percentile),
        "num_train": int(train_images.shape[0]),
        "percentile": percentile,
        "pairs_grid": None,
    }
    if grid_path is not None:
        order = feature_nn.argsort()[:num_pairs]
        pairs = torch.stack([fake_images[order], train_images[feature_index[order]]], dim=1).flatten(0, 1)
        save_pairs(pairs, grid_path)
        report["pairs_grid"] = grid_path.name
    return report


def save_pairs(pairs: Tensor, path: Path, min_tile: int = 64) -> None:
    """Save (2K, 3, H, W) images in [-1, 1] as a grid of K pairs, four pairs per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = pairs.float().clamp(-1, 1)
    if pairs.shape[-1] < min_tile:
        pairs = F.interpolate(pairs, scale_factor=math.ceil(min_tile / pairs.shape[-1]), mode="nearest")
    save_image(make_grid((pairs + 1) / 2, nrow=8, padding=2, pad_value=1.0), path)
