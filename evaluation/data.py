"""Real images for evaluation: stacked subsets of a split, split hashes and the cache folder.

Evaluation works on tensors held in memory (a few thousand images at evaluation size), gathered
once per split from the data module's datasets, which yield the batch-dict contract per item.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from datamodules.cache import default_cache_dir


def cache_root(eval_cfg: Any = None) -> Path:
    """``eval.cache_dir`` if set, else ``$DERMSYNTH_CACHE``, else ``~/.cache/dermsynth``."""
    configured = eval_cfg.get("cache_dir") if eval_cfg is not None and hasattr(eval_cfg, "get") else None
    return Path(configured) if configured else default_cache_dir()


def split_hash(dataset: Any) -> str:
    """Short hash of a split's membership (image ids where the dataset has them, else labels and size)."""
    ids = getattr(dataset, "image_ids", None)
    if ids is not None:
        text = "\n".join(map(str, ids))
    else:
        labels = getattr(dataset, "labels", None)
        text = f"{len(dataset)}:" + (",".join(map(str, np.asarray(labels).tolist())) if labels is not None else "")
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def subset_indices(size: int, num: int | None, seed: int) -> list[int]:
    """``num`` distinct indices of ``range(size)`` drawn with ``seed`` (all, in order, if num is None or >= size)."""
    if num is None or num >= size:
        return list(range(size))
    return sorted(torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:num].tolist())


def collect(dataset: Any, num: int | None = None, seed: int = 0, batch_size: int = 128, progress: bool = False) -> dict[str, Any]:
    """Stack up to ``num`` items of ``dataset`` into one batch dict (images (N, 3, H, W) in [-1, 1])."""
    indices = subset_indices(len(dataset), num, seed)
    if not indices:
        raise ValueError(f"cannot evaluate on an empty split ({type(dataset).__name__} has no items)")
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=0)
    parts = list(tqdm(loader, desc="real images", disable=not progress, leave=False))
    return concat_batches(parts)


def unaugmented(dataset: Any) -> Any:
    """The same split without training-time augmentation or extras, so an item is always its stored image."""
    plain = copy.copy(dataset)
    for name, value in (("augment", None), ("with_reference", False), ("with_index", False), ("with_pose", False)):
        if hasattr(plain, name):
            setattr(plain, name, value)
    return plain


def concat_batches(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate batch dicts key by key (tensors, lists, and nested attribute dicts)."""
    first = parts[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([p[key] for p in parts])
        elif isinstance(value, dict):
            out[key] = concat_batches([p[key] for p in parts])
        elif isinstance(value, (list, tuple)):
            out[key] = [item for p in parts for item in p[key]]
    return out


def take(batch: dict[str, Any], index: torch.Tensor | list[int] | slice) -> dict[str, Any]:
    """Rows ``index`` of a batch or conditions dict."""
    if isinstance(index, slice):
        index = list(range(*index.indices(batch_length(batch))))
    index = torch.as_tensor(index, dtype=torch.long)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[index]
        elif isinstance(value, dict):
            out[key] = take(value, index)
        elif isinstance(value, (list, tuple)):
            out[key] = [value[i] for i in index.tolist()]
    return out


def batch_length(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, (torch.Tensor, list, tuple)):
            return len(value)
        if isinstance(value, dict):
            return batch_length(value)
    return 0
