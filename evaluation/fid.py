"""FD, KID and precision/recall on precomputed features, and cached real-set features.

Features are extracted once per image set (generated, real evaluation split, the floor's split)
and every figure is computed from them. KID is torchmetrics' (its metric fed through a
pass-through "feature network"), precision/recall torch-fidelity's (Kynkäänniemi et al. 2019,
k = 3). The Fréchet distance is computed exactly in the span of the samples:
``tr sqrt(S_r S_f)`` is the nuclear norm of ``L_r L_f^T`` where ``S = L^T L`` (L: the centred
features over sqrt(n - 1), reduced to at most D rows by a QR factorisation), so 2048-d features
cost the spectrum of a min(n_r, n_f)-sized matrix instead of a 2048 x 2048 matrix square root; the tests check it
against torchmetrics' ``FrechetInceptionDistance`` and scipy. Features reach these functions already
gathered from every DDP rank, so the metrics run with ``sync_on_compute=False``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torchmetrics.image.kid import KernelInceptionDistance

from datamodules.atomic import write_bytes_atomic

# torchmetrics warns that KID keeps every feature in memory; here that is the intent.
warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")


class PassThrough(nn.Module):
    """Lets a torchmetrics image metric consume features computed elsewhere."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _covariance_factor(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and a factor L (k, D), k <= min(n, D), with L^T L the sample covariance."""
    x = features.double()
    mean = x.mean(0)
    factor = (x - mean) / (x.shape[0] - 1) ** 0.5
    if factor.shape[0] > factor.shape[1]:  # more samples than dimensions: the D x D triangle carries it all
        factor = torch.linalg.qr(factor, mode="r").R
    return mean, factor


def nuclear_norm(matrix: Tensor) -> Tensor:
    """Sum of singular values, from the eigenvalues of the smaller Gram matrix.

    LAPACK's SVD converges slowly on these centred cross products (their singular values span many
    orders of magnitude); the symmetric eigensolver gives the same sum to ~1e-10 in a fraction of the time.
    """
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    return torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().sum()


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) features."""
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"FD needs at least 2 samples per set, got {real.shape[0]} real and {fake.shape[0]} generated")
    mean_r, factor_r = _covariance_factor(real)
    mean_f, factor_f = _covariance_factor(fake)
    trace_sqrt = nuclear_norm(factor_r @ factor_f.T)  # tr sqrt(S_r S_f)
    value = (mean_r - mean_f).square().sum() + factor_r.square().sum() + factor_f.square().sum() - 2 * trace_sqrt
    return max(0.0, float(value))  # round-off can give -1e-12 for identical sets


def kid_subset_size(configured: int, num_real: int, num_fake: int) -> int:
    """KID subsets hold at most half of the smaller set, so the spread over subsets measures something."""
    size = min(int(configured), num_real // 2, num_fake // 2)
    if size < 2:
        raise ValueError(f"KID needs at least 4 samples per set, got {num_real} real and {num_fake} generated")
    return size


def kernel_inception_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (unbiased MMD², cubic polynomial kernel) mean and std over random subsets (torchmetrics KID).

    ``subset_size`` is used as given; ``kid_subset_size`` chooses it for the protocol.
    """
    metric = KernelInceptionDistance(feature=PassThrough(real.shape[1]), subsets=subsets, subset_size=subset_size, sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global RNG
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


def distribution_figures(real: Tensor, fake: Tensor, kid_subsets: int, kid_size: int, neighborhood: int, seed: int) -> dict[str, float]:
    """FD, KID mean/std, precision and recall between two feature sets."""
    kid_mean, kid_std = kernel_inception_distance(real, fake, kid_subsets, kid_subset_size(kid_size, len(real), len(fake)), seed)
    precision, recall = precision_recall(real, fake, neighborhood)
    return {"fid": frechet_distance(real, fake), "kid_mean": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall}


class RealFeatureCache:
    """Tensors computed from real image sets, stored as safetensors under ``root/real_features``."""

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
