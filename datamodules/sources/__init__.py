"""Data sources: each module's ``load(SourceRequest) -> SourceTable``; add one here to add a source."""

from __future__ import annotations

import importlib
from typing import Callable

from datamodules.sources.base import SourceRequest, SourceTable

SOURCES: dict[str, str] = {
    "phantom": "datamodules.sources.phantom:load",
    "ham10000": "datamodules.sources.ham10000:load",
    "isic": "datamodules.sources.ham10000:load_isic",
    "dermamnist": "datamodules.sources.dermamnist:load",
    "folder": "datamodules.sources.folder:load",
}


def get_source(name: str) -> Callable[[SourceRequest], SourceTable]:
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; valid sources: {sorted(SOURCES)}")
    module, function = SOURCES[name].split(":")
    return getattr(importlib.import_module(module), function)


__all__ = ["SOURCES", "SourceRequest", "SourceTable", "get_source"]
