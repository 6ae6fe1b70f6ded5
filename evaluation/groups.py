"""Figures per Fitzpatrick skin-tone group (I-II, III-IV, V-VI) and the worst group.

Generative models are known to serve dark skin worse; a single FD hides that. Real images are
grouped by their recorded skin tone; generated images by the tone they were asked for
(conditional models) or, for unconditional ones, by the tone the domain judge sees.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from evaluation.fid import frechet_distance, kernel_inception_distance, kid_subset_size

GROUPS: dict[str, tuple[int, ...]] = {"I-II": (1, 2), "III-IV": (3, 4), "V-VI": (5, 6)}


def group_mask(tones: Tensor, group: str) -> Tensor:
    """(N,) bool: which Fitzpatrick tones (1-6, 0 unknown) fall in ``group``."""
    return torch.isin(tones.long(), torch.tensor(GROUPS[group]))


def per_skin_tone(
    real_features: Tensor,
    real_tones: Tensor,
    fake_features: Tensor,
    fake_tones: Tensor,
    tone_source: str,
    cond_accuracy_of: Any = None,
    min_group_size: int = 10,
    kid_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """FD, KID and conditioning accuracy per group, and the worst group by FD and by accuracy.

    ``cond_accuracy_of(rows) -> float | None`` gives the conditioning accuracy over generated rows
    (None for unconditional models); ``kid_size`` is the configured KID subset size (capped by
    ``kid_subset_size``). Groups with fewer than ``min_group_size`` images on either side
    get null figures (an FD from a handful of samples would be noise).
    """
    groups: dict[str, dict[str, Any]] = {}
    for group in GROUPS:
        real_rows, fake_rows = group_mask(real_tones, group), group_mask(fake_tones, group)
        entry: dict[str, Any] = {"num_real": int(real_rows.sum()), "num_generated": int(fake_rows.sum()), "fid": None, "kid_mean": None}
        if min(entry["num_real"], entry["num_generated"]) >= max(4, min_group_size):
            real_group, fake_group = real_features[real_rows], fake_features[fake_rows]
            entry["fid"] = frechet_distance(real_group, fake_group)
            size = kid_subset_size(kid_size, len(real_group), len(fake_group))
            entry["kid_mean"], _ = kernel_inception_distance(real_group, fake_group, subsets=50, subset_size=size, seed=seed)
        entry["cond_accuracy"] = cond_accuracy_of(fake_rows) if cond_accuracy_of is not None and fake_rows.any() else None
        groups[group] = entry
    with_fd = {g: e["fid"] for g, e in groups.items() if e["fid"] is not None}
    with_acc = {g: e["cond_accuracy"] for g, e in groups.items() if e["cond_accuracy"] is not None}
    worst_fd_group = max(with_fd, key=with_fd.get) if with_fd else None
    worst_acc_group = min(with_acc, key=with_acc.get) if with_acc else None
    return {
        "groups": groups,
        "worst_group_fid": worst_fd_group,
        "worst_fid": with_fd.get(worst_fd_group) if worst_fd_group else None,
        "worst_group_cond_accuracy": worst_acc_group,
        "worst_cond_accuracy": with_acc.get(worst_acc_group) if worst_acc_group else None,
        "generated_tone_source": tone_source,
    }
