"""FD, KID, Inception Score and precision/recall on precomputed features, and cached real statistics.

Features are extracted once per image set (generated, real test, per skin-tone group) and each
figure is computed from them by torchmetrics (FD, KID, IS: its metrics fed through a pass-through
"feature network") or torch-fidelity (precision/recall, Kynkäänniemi et al. 2019, k = 3).
Features reach these functions already gathered from every DDP rank (``evaluation.protocol``), so
the metrics run with ``sync_on_compute=False``: a second sync would count every sample twice.
Real-set features are cached on disk keyed by data, split, size and extractor, so evaluating a
run costs only its own samples.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from datamodules.atomic import write_bytes_atomic

# torchmetrics warns that KID/IS keep every feature in memory; here that is the intent.
warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")


class PassThrough(nn.Module):
    """Lets a torchmetrics image metric consume features computed elsewhere."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) features (torchmetrics FID)."""
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"FD needs at least 2 samples per set, got {real.shape[0]} real and {fake.shape[0]} generated")
    metric = FrechetInceptionDistance(feature=PassThrough(real.shape[1]), sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return max(0.0, float(metric.compute()))  # eigenvalue round-off can give -1e-9 for identical sets


def kernel_inception_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (unbiased MMD², cubic polynomial kernel) mean and std over random subsets (torchmetrics KID)."""
    subset_size = min(subset_size, real.shape[0], fake.shape[0])
    if subset_size < 2:
        raise ValueError("KID needs at least 2 samples per set")
    metric = KernelInceptionDistance(
        feature=PassThrough(real.shape[1]), subsets=subsets, subset_size=subset_size, sync_on_compute=False
    )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) mean and std over ``splits`` (torchmetrics IS on given logits)."""
    splits = max(1, min(splits, logits.shape[0] // 2))
    metric = InceptionScore(feature=PassThrough(logits.shape[1]), splits=splits, sync_on_compute=False)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]):  # torchmetrics shuffles before splitting
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def precision_recall(real: Tensor, fake: Tensor, neighborhood: int = 3) -> tuple[float, float]:
    """Improved precision (share of samples inside the real manifold) and recall (the converse), k-NN balls."""
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    neighborhood = min(neighborhood, real.shape[0] - 1, fake.shape[0] - 1)
    if neighborhood < 1:
        raise ValueError("precision/recall need at least 2 samples per set")
    # torch-fidelity's convention: first argument generated, second real.
    precision, recall = calculate_precision_recall_full(fake.float(), real.float(), neighborhood=neighborhood)
    return float(precision), float(recall)


def all_figures(real: Tensor, fake: Tensor, kid_subsets: int, kid_subset_size: int, neighborhood: int, seed: int) -> dict[str, float]:
    """FD, KID mean/std, precision and recall between two feature sets."""
    kid_mean, kid_std = kernel_inception_distance(real, fake, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(real, fake, neighborhood)
    return {"fid": frechet_distance(real, fake), "kid_mean": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall}


class RealFeatureCache:
    """Features and logits of real image sets, stored as safetensors under ``root/real_features``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root) / "real_features"

    @staticmethod
    def key(**parts: object) -> str:
        return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load(self, key: str) -> dict[str, Tensor] | None:
        path = self.root / f"{key}.safetensors"
        return load_file(path) if path.is_file() else None

    def save(self, key: str, tensors: dict[str, Tensor]) -> None:
        write_bytes_atomic(self.root / f"{key}.safetensors", save({k: v.contiguous() for k, v in tensors.items()}))
