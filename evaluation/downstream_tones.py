"""Downstream recall per diagnosis within each skin-tone group: does synthetic data help the groups it is meant for?

    per_tone = recall_by_tone(probabilities, labels, tones, class_names, group_names(info), level=0.95)
    # {"dark": {"n": 12, "balanced_accuracy": 0.61, "per_class": {"mel": {"n": 3, "recall": 0.67, "recall_interval": [..]}}}}

``tones`` are the test images' tones in ``DataInfo.tone_field`` (Fitzpatrick types, or ITA groups read
from the healthy skin; 0 unknown, left out). Recall intervals are Wilson intervals (few images per
cell: a bootstrap of three images says little); a cell under ``min_images`` images has a null recall.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.bootstrap import wilson_interval


def recall_by_tone(probabilities: np.ndarray, labels: np.ndarray, tones: np.ndarray, class_names: tuple[str, ...] | list[str],
                   tone_names: tuple[str, ...], level: float = 0.95, min_images: int = 1) -> dict[str, Any]:
    """Per tone (1-6 named by ``tone_names``): its n, balanced accuracy and per-diagnosis recall with Wilson intervals.

    ``probabilities`` (N, K) or predicted classes (N,); ``labels`` (N,); ``tones`` (N,) 1-6, 0 unknown.
    """
    predicted = np.asarray(probabilities).argmax(1) if np.ndim(probabilities) == 2 else np.asarray(probabilities)
    labels, tones = np.asarray(labels), np.asarray(tones)
    out: dict[str, Any] = {}
    for tone, name in enumerate(tone_names, start=1):
        rows = tones == tone
        per_class, recalls = {}, []
        for c, class_name in enumerate(class_names):
            cell = rows & (labels == c)
            n, hits = int(cell.sum()), int((predicted[cell] == c).sum())
            recall = hits / n if n >= max(1, min_images) else None
            per_class[class_name] = {"n": n, "recall": recall, "recall_interval": wilson_interval(hits, n, level) if recall is not None else None}
            if recall is not None:
                recalls.append(recall)
        out[name] = {"n": int(rows.sum()), "balanced_accuracy": float(np.mean(recalls)) if recalls else None, "per_class": per_class}
    out["unknown_tone"] = int((tones == 0).sum())
    return out
