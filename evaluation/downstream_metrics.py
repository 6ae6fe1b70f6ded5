"""Figures of a downstream classifier on the real test split, their intervals, and paired deltas between arms.

Figures: balanced accuracy (the mean recall over the classes of the test split: the headline, since
plain accuracy is dominated by the majority class, nv being 67% of HAM10000), macro-F1 over those
classes, recall and one-vs-rest AUROC per class (the class's softmax probability as its score) and
their macro mean, and plain accuracy for reference.

Every figure is computed from weighted counts, so a bootstrap replicate over test images (a vector of
multiplicities, ``evaluation.bootstrap.draw_weights``) costs a few array operations, and unit weights
give the figure itself (checked against scikit-learn in the tests). One set of replicates, drawn once
per protocol, serves every cell: replicate ``r`` resamples the same test images for every arm, seed
and fraction, so differences between cells are paired image by image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from evaluation.bootstrap import percentile_interval

SCALARS = ("balanced_accuracy", "macro_f1", "auroc", "accuracy")
PER_CLASS = ("recall", "auroc")


def weighted_figures(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Figures of one classifier under each row of ``weights``.

    Args:
        probabilities: (n, K) class probabilities of the n test images.
        labels: (n,) true classes.
        weights: (R, n) multiplicity of each image per replicate (a row of ones: the figures themselves).

    Returns:
        ``SCALARS`` as (R,) arrays and ``recall`` / ``auroc_per_class`` as (R, K); classes absent from
        the test split (and figures undefined in a replicate) are NaN.
    """
    n, num_classes = probabilities.shape
    weights = np.asarray(weights, dtype=np.float64)
    truth, predicted, support, hits, calls = _weighted_counts(labels, probabilities.argmax(1), num_classes, weights)
    present = truth.sum(0) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present & (support > 0), hits / support, np.nan)
        f1 = np.where(present & (support + calls > 0), 2 * hits / (support + calls), np.nan)
        accuracy = hits.sum(1) / weights.sum(1)
    auroc = np.stack([_weighted_auroc(probabilities[:, c], labels == c, weights) for c in range(num_classes)], axis=1)
    auroc[:, ~present] = np.nan
    return {
        "balanced_accuracy": _nanmean(recall), "macro_f1": _nanmean(f1), "auroc": _nanmean(auroc), "accuracy": accuracy,
        "recall": recall, "auroc_per_class": auroc,
    }


def _weighted_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """One-hot truth and predictions (n, K), and per replicate the support, hits and calls of each class (R, K)."""
    truth, calls_onehot = np.eye(num_classes)[labels], np.eye(num_classes)[predicted]
    return truth, calls_onehot, weights @ truth, weights @ (truth * calls_onehot), weights @ calls_onehot


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, num_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean recall over the classes present in ``labels`` under each row of ``weights`` (R,); without weights, (1,).
    Classes a replicate does not draw are left out of its mean."""
    weights = np.ones((1, len(labels))) if weights is None else np.asarray(weights, dtype=np.float64)
    truth, _, support, hits, _ = _weighted_counts(np.asarray(labels), np.asarray(predicted), num_classes, weights)
    present = truth.sum(0) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nanmean(np.where(present & (support > 0), hits / support, np.nan))


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Row means over the finite entries; NaN for a row without any."""
    finite = np.isfinite(values)
    counts = finite.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(finite, values, 0.0).sum(1) / counts, np.nan)


def _weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R,) AUROC of ``scores`` for the ``positive`` rows: P(score of a positive > a negative's), ties count half.

    Sorting once and cumulating the negatives' weights makes a replicate O(n): each positive adds its
    weight times the negative weight strictly below its score plus half the negative weight tied with it.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order]
    negatives = weights[:, order] * ~sorted_positive  # (R, n)
    below = np.concatenate([np.zeros((weights.shape[0], 1)), np.cumsum(negatives, axis=1)], axis=1)  # (R, n + 1)
    start = np.searchsorted(sorted_scores, sorted_scores, side="left")  # each row's tie group [start, end)
    end = np.searchsorted(sorted_scores, sorted_scores, side="right")
    credit = below[:, start] + 0.5 * (below[:, end] - below[:, start])  # (R, n)
    positives = weights[:, order] * sorted_positive
    pairs = positives.sum(1) * negatives.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (positives * credit).sum(1) / pairs, np.nan)


def cell_figures(
    probabilities: np.ndarray, labels: np.ndarray, replicate_weights: np.ndarray, class_names: list[str] | tuple[str, ...], level: float,
) -> dict[str, Any]:
    """One cell's figures with percentile bootstrap intervals over test images (``evaluation.bootstrap``)."""
    point = weighted_figures(probabilities, labels, np.ones((1, len(labels))))
    replicates = weighted_figures(probabilities, labels, replicate_weights)
    out: dict[str, Any] = {key: _finite(point[key][0]) for key in SCALARS}
    out["intervals"] = {key: _interval(replicates[key], point[key][0], level) for key in SCALARS}
    counts = np.bincount(labels, minlength=len(class_names))
    out["per_class"] = {
        name: {
            "n": int(counts[c]),
            "recall": _finite(point["recall"][0, c]), "recall_interval": _interval(replicates["recall"][:, c], point["recall"][0, c], level),
            "auroc": _finite(point["auroc_per_class"][0, c]),
            "auroc_interval": _interval(replicates["auroc_per_class"][:, c], point["auroc_per_class"][0, c], level),
        }
        for c, name in enumerate(class_names)
    }
    return out


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _interval(replicates: np.ndarray, estimate: float, level: float) -> list[float] | None:
    return percentile_interval(replicates, level, 0.0, 1.0) if np.isfinite(estimate) else None


def seed_and_test_interval(
    values: np.ndarray, replicates: np.ndarray, level: float, bounds: tuple[float, float] = (-np.inf, np.inf),
) -> dict[str, Any]:
    """Mean over training seeds of a figure (or of a paired difference), with an interval for the recipe's mean.

    Two sources of error move the mean of S seeds: which seeds were drawn (training randomness) and
    which test images were drawn (the test split is a sample). The interval is a t-interval

        mean ± t_{S-1, (1+level)/2} * sqrt(s²/S + v_test)

    where ``s`` is the standard deviation over seeds (ddof 1) and ``v_test`` the variance, over
    the shared test-image bootstrap replicates, of the seed-mean. The components are independent
    (seeds vary the classifier, replicates the test set), so their variances add. A t-interval over
    seeds alone would miss the test-set error, and a bootstrap over only five seeds has too few
    distinct resamples (126) and is known to be too narrow at that size; the t quantile with S - 1
    degrees of freedom keeps the interval conservative when the seed term dominates and is slightly
    wide when the test term does. With one seed the interval is the test-image one (normal quantile).
    Paired deltas pass ``arm - reference`` per seed and per replicate (same seed, same images).

    Args:
        values: (S,) the figure per seed.
        replicates: (S, R) the figure per seed under each shared test-image replicate.
        bounds: the range of the figure (a proportion: (0, 1); a difference of two: (-1, 1)); the interval is clipped to it.
    """
    values = np.asarray(values, dtype=np.float64)
    replicates = np.asarray(replicates, dtype=np.float64)
    keep = np.isfinite(values)
    values, replicates = values[keep], replicates[keep]
    seeds = len(values)
    if seeds == 0:
        return {"mean": None, "std": None, "interval": None, "seeds": 0}
    mean = float(values.mean())
    seed_variance = float(values.var(ddof=1)) if seeds > 1 else 0.0
    replicate_means = replicates.mean(0)
    replicate_means = replicate_means[np.isfinite(replicate_means)]
    test_variance = float(replicate_means.var(ddof=1)) if replicate_means.size > 1 else 0.0
    quantile = stats.t.ppf((1 + level) / 2, seeds - 1) if seeds > 1 else stats.norm.ppf((1 + level) / 2)
    half = float(quantile * np.sqrt(seed_variance / seeds + test_variance))
    interval = [float(max(bounds[0], mean - half)), float(min(bounds[1], mean + half))]
    return {
        "mean": mean, "std": float(np.sqrt(seed_variance)), "interval": interval, "seeds": seeds,
        "se_seeds": float(np.sqrt(seed_variance / seeds)), "se_test": float(np.sqrt(test_variance)),
    }
