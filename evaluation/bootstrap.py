"""Uncertainty: bootstrap intervals for set-level figures, Wilson intervals for proportions.

A bootstrap replicate resamples each image set with replacement. Here a replicate is a vector of
multiplicities per set (how often each image was drawn: multinomial counts summing to n), so the
figures are recomputed from quantities prepared once per pair of sets instead of from copied
feature matrices:
- FD: the cross Gram matrix ``R F^T``; a replicate costs the spectrum of the drawn rows and
  columns (at most n_r x n_f), which keeps hundreds of replicates of 2048-d FD within seconds on a CPU.
- KID: the three kernel matrices; the unbiased MMD² leaves out pairs of the same original image
  (a duplicate drawn twice is not an independent pair, and counting it would inflate MMD²).
- precision/recall: the k-NN radii are those of the full sets (a duplicate would give a zero
  radius), and a replicate counts the drawn samples inside the balls of the drawn others.
One set of replicates serves every figure and every evaluation seed (replicate r of the real set
is shared), so the interval of a mean over seeds comes from the per-replicate means. Set-level
figures get normal intervals from the replicates' spread (``spread_interval``), accuracies
percentile intervals (``percentile_interval``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from evaluation.fid import nuclear_norm


def draw_weights(size: int, num_resamples: int, seed: int) -> Tensor:
    """(R, size) multiplicities of ``num_resamples`` bootstrap draws of ``size`` items (rows sum to size)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multinomial(size, np.full(size, 1.0 / size), size=num_resamples)).double()


def spread_interval(
    replicates: Sequence[float] | Tensor, estimate: float, level: float, low: float | None = None, high: float | None = None,
) -> list[float] | None:
    """Normal bootstrap interval ``estimate -/+ z * sd(replicates)``, clipped to [low, high].

    It describes how far the figure moves between draws of the sets at this n: the question when
    two runs evaluated at the same n are compared. FD (and precision/recall) also carry a finite-n
    offset shared by every run at that n, which the real-vs-real floor at the same n shows; a
    bias-corrected (basic) interval would target the population value instead and can exclude its
    own point estimate, which reads as an error in a table. None without finite replicates.
    """
    array = np.asarray(replicates, dtype=float)
    array = array[np.isfinite(array)]
    if array.size < 2 or estimate is None or not np.isfinite(estimate):
        return None
    from scipy.stats import norm

    half = float(norm.ppf(0.5 + level / 2)) * float(array.std(ddof=1))
    bounds = np.clip([estimate - half, estimate + half], low if low is not None else -np.inf, high if high is not None else np.inf)
    return [float(bounds[0]), float(bounds[1])]


def percentile_interval(
    replicates: Sequence[float] | Tensor, level: float, low: float | None = None, high: float | None = None,
) -> list[float] | None:
    """Percentile bootstrap interval of an unbiased mean such as an accuracy, clipped to [low, high]."""
    array = np.asarray(replicates, dtype=float)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    bounds = np.clip(np.percentile(array, [tail, 100 - tail]), low if low is not None else -np.inf, high if high is not None else np.inf)
    return [float(bounds[0]), float(bounds[1])]


def wilson_interval(successes: int, total: int, level: float) -> list[float] | None:
    """Wilson score interval of a proportion (scipy); None for an empty sample."""
    if total <= 0:
        return None
    from scipy.stats import binomtest

    interval = binomtest(int(successes), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return [float(interval.low), float(interval.high)]


class FrechetReplicates:
    """FD between weighted real (N, D) and generated (M, D) features, for multiplicity vectors."""

    def __init__(self, real: Tensor, fake: Tensor) -> None:
        self.real, self.fake = real.double(), fake.double()
        self.cross = self.real @ self.fake.T  # (N, M) Gram matrix r_i . f_j
        self.real_norms, self.fake_norms = self.real.square().sum(1), self.fake.square().sum(1)

    def __call__(self, w_real: Tensor, w_fake: Tensor) -> float:
        n, m = w_real.sum(), w_fake.sum()
        mean_r, mean_f = (w_real @ self.real) / n, (w_fake @ self.fake) / m
        rows, cols = w_real > 0, w_fake > 0
        # Centred cross products (r_i - mean_r) . (f_j - mean_f) for the drawn rows and columns.
        centred = (
            self.cross[rows][:, cols]
            - (self.real[rows] @ mean_f)[:, None]
            - (self.fake[cols] @ mean_r)[None, :]
            + mean_r @ mean_f
        )
        weighted = w_real[rows].sqrt()[:, None] * centred * w_fake[cols].sqrt()[None, :]
        trace_sqrt = nuclear_norm(weighted) / ((n - 1) * (m - 1)).sqrt()
        trace_r = (w_real @ self.real_norms - n * mean_r.square().sum()) / (n - 1)
        trace_f = (w_fake @ self.fake_norms - m * mean_f.square().sum()) / (m - 1)
        return max(0.0, float((mean_r - mean_f).square().sum() + trace_r + trace_f - 2 * trace_sqrt))


def _rows(size: int, limit: int) -> Tensor:
    """All rows, or a fixed (seed 0) random subset of ``limit`` of them."""
    if size <= limit:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:limit].sort().values


def _polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3  # KID's kernel (Binkowski et al. 2018), as torchmetrics'


class KIDReplicates:
    """Unbiased MMD² (KID's kernel) between weighted sets; pairs of the same original image are left out.

    Sets larger than ``max_rows`` are represented by a fixed random subset of that many rows (the
    kernel matrices grow as n²: 10,000 samples would take 800 MB each), which widens the interval.
    """

    def __init__(self, real: Tensor, fake: Tensor, max_rows: int = 4096) -> None:
        self.real_rows, self.fake_rows = _rows(real.shape[0], max_rows), _rows(fake.shape[0], max_rows)
        real, fake = real[self.real_rows].double(), fake[self.fake_rows].double()
        self.k_rr, self.k_ff, self.k_rf = _polynomial_kernel(real, real), _polynomial_kernel(fake, fake), _polynomial_kernel(real, fake)

    @staticmethod
    def _within(kernel: Tensor, weights: Tensor) -> Tensor:
        pairs = weights.sum() ** 2 - weights.square().sum()
        return (weights @ kernel @ weights - (weights.square() * kernel.diagonal()).sum()) / pairs

    def __call__(self, w_real: Tensor, w_fake: Tensor) -> float:
        w_real, w_fake = w_real[self.real_rows], w_fake[self.fake_rows]
        cross = w_real @ self.k_rf @ w_fake / (w_real.sum() * w_fake.sum())
        return float(self._within(self.k_rr, w_real) + self._within(self.k_ff, w_fake) - 2 * cross)


class PrecisionRecallReplicates:
    """Improved precision and recall between weighted sets, with the full sets' k-NN radii."""

    def __init__(self, real: Tensor, fake: Tensor, neighborhood: int) -> None:
        from torch_fidelity.metric_prc import calc_cdist_full

        real, fake = real.float(), fake.float()  # torch-fidelity's distances, so unit weights give its figures
        k = min(neighborhood, real.shape[0] - 1, fake.shape[0] - 1)
        radius_real = calc_cdist_full(real, real).kthvalue(k + 1).values
        radius_fake = calc_cdist_full(fake, fake).kthvalue(k + 1).values
        fake_to_real = calc_cdist_full(fake, real)
        self.fake_in_real_ball = fake_to_real <= radius_real[None, :]  # (M, N)
        self.real_in_fake_ball = fake_to_real.T <= radius_fake[None, :]  # (N, M)

    def __call__(self, w_real: Tensor, w_fake: Tensor) -> tuple[float, float]:
        inside = self.fake_in_real_ball[:, w_real > 0].any(1).double()
        covered = self.real_in_fake_ball[:, w_fake > 0].any(1).double()
        return float(w_fake @ inside / w_fake.sum()), float(w_real @ covered / w_real.sum())


def replicate_values(statistic: Callable[[Tensor, Tensor], float], w_real: Tensor, w_fake: Tensor) -> list[float]:
    """``statistic`` over paired rows of two (R, n) weight matrices."""
    return [statistic(w_real[r], w_fake[r]) for r in range(w_real.shape[0])]
