"""Config values as plain Python containers: for the models' own reading and for checkpoints.

A checkpoint must load with ``torch.load(weights_only=True)``, which accepts only plain types, so
configs, partial objects and tuples are converted before they are saved.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf


def plain_dict(value: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    """A config group as a resolved ``dict`` (None -> empty)."""
    if isinstance(value, DictConfig):
        return dict(OmegaConf.to_container(value, resolve=True))
    return dict(value or {})


def safe_container(value: Any) -> Any:
    """Turn configs, partials and tuples into plain types that ``weights_only`` loading accepts."""
    if isinstance(value, (DictConfig, ListConfig)):  # may hold instantiated objects (Hydra partials)
        return safe_container(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, dict):
        return {str(k): safe_container(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_container(v) for v in value]
    if isinstance(value, functools.partial):
        return {"_partial_of_": f"{value.func.__module__}.{value.func.__qualname__}", **safe_container(value.keywords)}
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return value
    return repr(value)
