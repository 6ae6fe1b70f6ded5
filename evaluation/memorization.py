"""Memorization: is a generated image closer to a training image than real unseen images ever are?

The reference is the whole training split as stored, reduced once to thumbnails and judge features
and cached by data fingerprint. The model trained on the eight poses the augmentation produces (flips
and 90-degree rotations), so it can return a training image in any of them: in pixels, every query is
compared in all eight poses and its nearest training image is the nearest over them. For every
generated image the distance to its nearest training image is measured in pixels (RMS over
``pixel_size`` thumbnails, so sizes compare) and in the judge's feature space (the stored pose); the
same is measured for the real images of the evaluation split (the baseline: what "close" means for
images the model never saw; ``real_copy_rate``). A generated image counts as a copy when its
nearest-neighbour distance is below ``threshold_ratio`` times the baseline's median; the baseline's
own copy rate at that threshold says whether the threshold is safe (it should be zero).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from evaluation.data import cache_root, split_hash, unaugmented
from evaluation.distributed import rank_and_world
from evaluation.fid import RealFeatureCache


def pixel_vectors(images: Tensor, size: int) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3 * s * s) thumbnails at side s = min(size, H), scaled so L2 is an RMS."""
    side = min(size, images.shape[-1])
    if side != images.shape[-1]:
        images = F.interpolate(images.float(), size=(side, side), mode="area")
    flat = images.float().flatten(1)
    return flat / math.sqrt(flat.shape[1])


def poses(images: Tensor) -> list[Tensor]:
    """The eight poses of (N, C, H, W) square images: four 90-degree rotations, each also flipped left-right."""
    rotations = [torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [torch.flip(rotated, dims=(-1,)) for rotated in rotations]


def nearest_in_any_pose(images: Tensor, references: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Distance to and index of the nearest reference thumbnail over the eight poses of each image (N, 3, H, W)."""
    best_distance, best_index = nearest(pixel_vectors(images, size), references)
    for posed in poses(images)[1:]:
        distance, index = nearest(pixel_vectors(posed, size), references)
        closer = distance < best_distance
        best_distance, best_index = torch.where(closer, distance, best_distance), torch.where(closer, index, best_index)
    return best_distance, best_index


def nearest(queries: Tensor, references: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Euclidean distance to, and index of, the nearest reference row for each query row.

    In double precision: cdist's matrix-product shortcut leaves ~1e-3 of round-off in float32,
    which would hide how exact a copy is.
    """
    distances, indices = [], []
    references = references.double()
    for start in range(0, queries.shape[0], chunk):
        block = torch.cdist(queries[start : start + chunk].double(), references)
        value, index = block.min(dim=1)
        distances.append(value.float())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def training_reference(datamodule: Any, judge: Any, eval_cfg: Any, progress: bool) -> dict[str, Tensor]:
    """Thumbnails (N, 3*s*s) and judge features (N, D) of the whole un-augmented training split, cached."""
    settings = eval_cfg["memorization"]
    dataset = unaugmented(datamodule.train_set)
    info = datamodule.info
    key = RealFeatureCache.key(
        purpose="memorization", data=info.fingerprint or info.to_dict(), members=split_hash(dataset),
        size=info.image_size, pixel_size=int(settings["pixel_size"]), judge=judge.key,
    )
    cache = RealFeatureCache(cache_root(eval_cfg))
    stored = cache.load(key)
    if stored is not None:
        return stored
    pixels, features = [], []
    loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0)
    for batch in tqdm(loader, desc="training split (memorization reference)", disable=not progress, leave=False):
        pixels.append(pixel_vectors(batch["image"], int(settings["pixel_size"])).half())
        features.append(judge.features(batch["image"]))
    reference = {"pixels": torch.cat(pixels), "features": torch.cat(features)}
    if rank_and_world()[0] == 0:
        cache.save(key, reference)
    return reference


def _summary(generated: Tensor, baseline: Tensor, ratio: float) -> dict[str, Any]:
    threshold = ratio * float(baseline.median())
    quantiles = torch.tensor([0.01, 0.05, 0.5])
    return {
        "copy_rate": float((generated < threshold).float().mean()),
        "threshold": threshold,
        "nn_distance_median": float(generated.median()),
        "real_copy_rate": float((baseline < threshold).float().mean()),
        "real_nn_distance_median": float(baseline.median()),
        "nn_distance_quantiles": [float(q) for q in torch.quantile(generated.double(), quantiles.double())],
        "real_nn_distance_quantiles": [float(q) for q in torch.quantile(baseline.double(), quantiles.double())],
    }


def memorization_report(
    generated: Tensor, generated_features: Tensor, held_out: Tensor, held_out_features: Tensor,
    reference: dict[str, Tensor], settings: Any, split: str,
) -> tuple[dict[str, Any], Tensor, Tensor]:
    """The ``memorization`` entry (pixel space; ``feature``: the judge's space) and, per generated image,
    the distance to and index of its nearest training image in feature space (the closest-pairs grid).

    ``generated`` and ``held_out`` are images (N, 3, H, W) in [-1, 1]; ``held_out`` are real images of
    the evaluation split ``split``.
    """
    size, ratio = int(settings["pixel_size"]), float(settings["threshold_ratio"])
    pixels = reference["pixels"].float()
    generated_nn, _ = nearest_in_any_pose(generated, pixels, size)
    baseline_nn, _ = nearest_in_any_pose(held_out, pixels, size)
    feature_nn, feature_index = nearest(generated_features, reference["features"])
    feature_baseline, _ = nearest(held_out_features, reference["features"])
    report = {
        **_summary(generated_nn, baseline_nn, ratio),
        "reference": f"train split, un-augmented, {pixels.shape[0]} images",
        "space": f"pixel RMS on {min(size, generated.shape[-1])}-px thumbnails in [-1, 1], nearest over the 8 poses "
                 "(flips, 90-degree rotations) of the training augmentation",
        "threshold_rule": f"{ratio:g} x median nearest-training-image distance of real {split} images",
        "baseline": f"real {split} images ({held_out.shape[0]})",
        "num_generated": int(generated.shape[0]),
        "feature": _summary(feature_nn, feature_baseline, ratio),
    }
    return report, feature_nn, feature_index
