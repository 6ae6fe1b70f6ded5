"""The downstream benchmark's summary: per real fraction and arm, each figure over seeds and paired deltas.

Each arm's figure is its mean over training seeds with ``seed_and_test_interval``; a delta against
``real`` or ``real_balanced`` is the mean over seeds of the same-seed difference, with the same
interval applied to the differences (per seed and per shared test-image replicate, so the pairing
is by seed and by image). Per-class recall and AUROC get the same treatment.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from evaluation.downstream_metrics import SCALARS, seed_and_test_interval, weighted_figures

REFERENCES = ("real", "real_balanced")


def cell_replicates(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per figure, the point value (row 0) followed by its replicates (rows 1..R) for one cell."""
    stacked = np.concatenate([np.ones((1, len(labels))), weights])
    return weighted_figures(probabilities, labels, stacked)


def _figure_table(figures: dict[int, dict[str, np.ndarray]], seeds: list[int], key: str, column: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(S,) point values and (S, R) replicates of one figure (a class column of a per-class figure)."""
    rows = [figures[s][key] if column is None else figures[s][key][:, column] for s in seeds]
    table = np.stack(rows)  # (S, 1 + R)
    return table[:, 0], table[:, 1:]


def _block(cells: dict[int, dict[str, np.ndarray]], reference: dict[int, dict[str, np.ndarray]] | None,
           class_names: list[str], level: float) -> dict[str, Any]:
    """Figures of one arm (``reference`` None) or its paired deltas against a reference arm."""
    seeds = sorted(cells if reference is None else set(cells) & set(reference))
    if not seeds:
        return {}

    def interval(key: str, column: int | None = None) -> dict[str, Any]:
        values, replicates = _figure_table(cells, seeds, key, column)
        if reference is not None:
            ref_values, ref_replicates = _figure_table(reference, seeds, key, column)
            values, replicates = values - ref_values, replicates - ref_replicates
        return seed_and_test_interval(values, replicates, level, (0.0, 1.0) if reference is None else (-1.0, 1.0))

    block: dict[str, Any] = {key: interval(key) for key in SCALARS}
    block["recall"] = {name: interval("recall", c) for c, name in enumerate(class_names)}
    block["auroc_per_class"] = {name: interval("auroc_per_class", c) for c, name in enumerate(class_names)}
    block["seeds"] = seeds
    return block


def summarize(cells: list[dict[str, Any]], labels: np.ndarray, weights: np.ndarray, class_names: list[str], level: float) -> dict[str, Any]:
    """``{fraction: {arm: {figures..., "delta_vs_real": {...}, "delta_vs_real_balanced": {...}}}}``.

    Args:
        cells: dicts with ``real_fraction``, ``arm``, ``seed`` and ``probabilities`` (n, K) on the test split.
        labels: (n,) test labels, the same for every cell.
        weights: (R, n) the shared test-image bootstrap multiplicities.
    """
    by_fraction: dict[float, dict[str, dict[int, dict[str, np.ndarray]]]] = defaultdict(lambda: defaultdict(dict))
    for cell in cells:
        figures = cell_replicates(np.asarray(cell["probabilities"], dtype=np.float64), labels, weights)
        by_fraction[float(cell["real_fraction"])][cell["arm"]][int(cell["seed"])] = figures
    summary: dict[str, Any] = {}
    for fraction in sorted(by_fraction):
        arms = by_fraction[fraction]
        entry: dict[str, Any] = {}
        for arm, seeds in arms.items():
            entry[arm] = _block(seeds, None, class_names, level)
            # Against real: every other arm. Against real_balanced: the arms that add synthetic images.
            for reference in REFERENCES[: REFERENCES.index(arm) if arm in REFERENCES else len(REFERENCES)]:
                if reference in arms:
                    entry[arm][f"delta_vs_{reference}"] = _block(seeds, arms[reference], class_names, level)
        summary[str(fraction)] = entry
    return summary
