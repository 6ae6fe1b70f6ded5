"""Bootstrap and Wilson intervals: coverage on synthetic Gaussians, exactness of the resampling shortcuts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from evaluation.bootstrap import (
    FrechetReplicates,
    KIDReplicates,
    PrecisionRecallReplicates,
    percentile_interval,
    spread_interval,
    draw_weights,
    replicate_values,
    wilson_interval,
)
from evaluation.fid import PassThrough, frechet_distance, kernel_inception_distance, kid_subset_size, precision_recall


def _gaussians(seed: int, n: int, m: int, d: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    real, fake = torch.randn(n, d, generator=generator), torch.randn(m, d, generator=generator)
    fake[:, 0] += shift
    return real, fake


def test_fd_bootstrap_interval_covers_the_true_value_in_most_repetitions() -> None:
    """N(0, I) against N(shift e_1, I) at n = 200: the figure's true value at that n is E[FD_n], the population FD
    shift² plus a finite-n offset of about 2d/n, estimated here from 400 independent draws. The interval from the
    bootstrap replicates' spread covers it in roughly 95 % of repetitions."""
    d, n, shift, repetitions = 8, 200, 1.0, 30
    expected = float(np.mean([frechet_distance(*_gaussians(1000 + draw, n, n, d, shift)) for draw in range(400)]))
    assert expected > shift**2 + d / n  # the offset is real: a population-value target would be another quantity
    covered = 0
    for repetition in range(repetitions):
        real, fake = _gaussians(repetition, n, n, d, shift)
        values = replicate_values(FrechetReplicates(real, fake), draw_weights(n, 150, 2 * repetition), draw_weights(n, 150, 2 * repetition + 1))
        low, high = spread_interval(values, frechet_distance(real, fake), 0.95, 0.0)
        covered += low <= expected <= high
    assert covered >= 0.8 * repetitions, covered


def test_kid_bootstrap_interval_covers_zero_for_equal_distributions() -> None:
    covered = 0
    for repetition in range(20):
        real, fake = _gaussians(100 + repetition, 150, 120, 6, 0.0)
        estimate = KIDReplicates(real, fake)(torch.ones(150, dtype=torch.double), torch.ones(120, dtype=torch.double))
        values = replicate_values(KIDReplicates(real, fake), draw_weights(150, 150, repetition), draw_weights(120, 150, 50 + repetition))
        low, high = spread_interval(values, estimate, 0.95)
        covered += low <= 0.0 <= high
    assert covered >= 16, covered


def test_weighted_figures_equal_the_figures_of_the_resampled_sets() -> None:
    """A replicate's multiplicities give exactly the figure of the duplicated rows (FD), the unbiased MMD² (KID) and
    torch-fidelity's precision/recall (unit weights)."""
    real, fake = _gaussians(7, 90, 70, 12, 0.5)
    w_real, w_fake = draw_weights(90, 1, 1)[0], draw_weights(70, 1, 2)[0]
    repeated_real, repeated_fake = real.repeat_interleave(w_real.long(), 0), fake.repeat_interleave(w_fake.long(), 0)
    assert FrechetReplicates(real, fake)(w_real, w_fake) == pytest.approx(frechet_distance(repeated_real, repeated_fake), rel=1e-6)
    ones_real, ones_fake = torch.ones(90, dtype=torch.double), torch.ones(70, dtype=torch.double)
    assert FrechetReplicates(real, fake)(ones_real, ones_fake) == pytest.approx(frechet_distance(real, fake), rel=1e-6)
    same_size = fake[:70], real[:70]
    kid, _ = kernel_inception_distance(*same_size, subsets=1, subset_size=70)  # one subset of everything = unbiased MMD²
    assert KIDReplicates(*same_size)(torch.ones(70, dtype=torch.double), torch.ones(70, dtype=torch.double)) == pytest.approx(kid, rel=1e-9)
    assert PrecisionRecallReplicates(real, fake, 3)(ones_real, ones_fake) == pytest.approx(precision_recall(real, fake, 3))


def test_kid_leaves_out_pairs_of_one_image() -> None:
    """A set drawn as one image many times has no independent pairs left; others count as usual."""
    real, fake = _gaussians(3, 20, 20, 4, 0.0)
    w = torch.zeros(20, dtype=torch.double)
    w[:2] = torch.tensor([5.0, 15.0])  # two distinct images, drawn 5 and 15 times
    kernel = KIDReplicates(real, fake).k_rr
    assert KIDReplicates._within(kernel, w) == pytest.approx(float(kernel[0, 1]))


def test_fd_matches_torchmetrics_at_2048_dimensions() -> None:
    real, fake = _gaussians(11, 300, 120, 2048, 0.3)
    metric = FrechetInceptionDistance(feature=PassThrough(2048), sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-6)


def test_wilson_interval_by_hand() -> None:
    # 8 of 10 at 95 %: centre (p + z²/2n) / (1 + z²/n), half-width z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    z, n, p = 1.959963984540054, 10, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(8, 10, 0.95) == pytest.approx([centre - half, centre + half], abs=1e-9)
    assert wilson_interval(8, 10, 0.95) == pytest.approx([0.4901625, 0.9433178], abs=1e-6)
    assert wilson_interval(0, 0, 0.95) is None


def test_intervals_by_hand_and_clipped() -> None:
    replicates = np.linspace(11.0, 13.0, 1001)
    low, high = spread_interval(replicates, 10.0, 0.95)  # centred on the estimate, as wide as the replicates' spread
    half = 1.959963984540054 * np.std(replicates, ddof=1)
    assert low == pytest.approx(10.0 - half) and high == pytest.approx(10.0 + half)
    assert spread_interval(replicates, 10.0, 0.95, 9.8)[0] == 9.8
    assert spread_interval([float("nan")], 1.0, 0.95) is None
    assert percentile_interval(replicates, 0.95) == pytest.approx([np.percentile(replicates, 2.5), np.percentile(replicates, 97.5)])
    assert percentile_interval(replicates, 0.95, high=12.5)[1] == 12.5


def test_kid_subsets_are_smaller_than_the_sets() -> None:
    assert kid_subset_size(1000, 256, 2000) == 128 and kid_subset_size(50, 256, 256) == 50
    with pytest.raises(ValueError, match="at least 4"):
        kid_subset_size(1000, 3, 100)


def test_kid_replicates_of_large_sets_use_a_fixed_subset() -> None:
    real, fake = _gaussians(5, 60, 50, 4, 0.0)
    capped = KIDReplicates(real, fake, max_rows=30)
    assert capped.k_rr.shape == (30, 30) and capped.k_ff.shape == (30, 30)
    subset = KIDReplicates(real[capped.real_rows], fake[capped.fake_rows])
    w_real, w_fake = draw_weights(60, 1, 3)[0], draw_weights(50, 1, 4)[0]
    assert capped(w_real, w_fake) == pytest.approx(subset(w_real[capped.real_rows], w_fake[capped.fake_rows]))
