"""Figures per skin-tone group and the worst group (metrics.json ``per_skin_tone``).

Generative models are known to serve dark skin worse; a single FD hides that. The groups are the
data's tones (``DataInfo.tone_field``): Fitzpatrick types I-VI where the data records them (the
phantom), else the ITA tone groups very light .. dark read from the healthy skin (``datamodules.tone``).
Real images are grouped by their own tone; generated images by the tone they were asked for
(conditional models) or, for unconditional ones, by the tone read from them (the ITA group; the
judge's skin-tone head on Fitzpatrick data, where the ITA groups are not the types).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from datamodules.info import DataInfo
from datamodules.phrasing import ROMAN
from datamodules.tone import TONE_GROUPS
from evaluation.fid import frechet_distance, kernel_inception_distance, kid_subset_size


def group_names(info: DataInfo) -> tuple[str, ...]:
    """Names of tones 1-6: Fitzpatrick types (I .. VI) or ITA groups (very light .. dark)."""
    return ROMAN if info.tone_field == "skin_tone" else TONE_GROUPS


def per_skin_tone(
    real_features: Tensor,
    real_tones: Tensor,
    fake_features: Tensor,
    fake_tones: Tensor,
    tone_source: str,
    names: tuple[str, ...] = ROMAN,
    cond_accuracy_of: Any = None,
    min_fid_images: int = 100,
    kid_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """FD, KID and conditioning accuracy per tone (1-6, named by ``names``; 0 unknown is left out) and the worst group.

    ``cond_accuracy_of(rows) -> float | None`` gives the conditioning accuracy over generated rows
    (None for unconditional models); ``kid_size`` is the configured KID subset size (capped by
    ``kid_subset_size``). A group with fewer than ``min_fid_images`` real or generated images gets a null FD
    and KID, with the reason in its ``nulls`` (an FD of 2048-d features from a few dozen images is mostly
    its finite-sample offset). ``n`` is the group's real images.
    """
    groups: dict[str, dict[str, Any]] = {}
    for tone, name in enumerate(names, start=1):
        real_rows, fake_rows = real_tones.long() == tone, fake_tones.long() == tone
        entry: dict[str, Any] = {"n": int(real_rows.sum()), "num_generated": int(fake_rows.sum()), "fid": None, "kid_mean": None,
                                 "nulls": {}}
        if min(entry["n"], entry["num_generated"]) >= max(4, min_fid_images):
            real_group, fake_group = real_features[real_rows], fake_features[fake_rows]
            entry["fid"] = frechet_distance(real_group, fake_group)
            size = kid_subset_size(kid_size, len(real_group), len(fake_group))
            entry["kid_mean"], _ = kernel_inception_distance(real_group, fake_group, subsets=50, subset_size=size, seed=seed)
        else:
            reason = f"{entry['n']} real and {entry['num_generated']} generated images in the group; FD needs {min_fid_images} of each"
            entry["nulls"].update(fid=reason, kid_mean=reason)
        entry["cond_accuracy"] = cond_accuracy_of(fake_rows) if cond_accuracy_of is not None and fake_rows.any() else None
        if entry["cond_accuracy"] is None:
            entry["nulls"]["cond_accuracy"] = ("an unconditional model" if cond_accuracy_of is None else "no generated image in the group"
                                               if not fake_rows.any() else "no visual judge head has an accuracy (see cond_accuracy)")
        groups[name] = entry
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
        "unknown_real": int((real_tones.long() == 0).sum()),
    }


def tones_of(batch: dict[str, Any], info: DataInfo) -> Tensor:
    """(N,) tone 1-6 (0 unknown) of a batch or conditions dict in ``info.tone_field``."""
    field = info.tone_field
    if field is None or field not in batch:
        count = len(batch["caption"]) if "caption" in batch else int(torch.as_tensor(batch["label"]).shape[0])
        return torch.zeros(count, dtype=torch.long)
    return torch.as_tensor(batch[field]).long()
