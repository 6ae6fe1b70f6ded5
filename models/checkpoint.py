"""Rebuild a trained generator from its checkpoint alone, running only this project's code.

A checkpoint carries the resolved run config (``dermsynth_config``) and the data vocabulary
(``data_info``) as plain containers, so it loads with ``torch.load(weights_only=True)``: no
pickled code runs. The config's ``_target_`` entries still name code, and a checkpoint may come
from anyone, so before anything is built every ``_target_`` is checked against an allowlist:
the generator is a ``GenerativeModule`` of this project (``models``, ``baselines``), the data
module a ``LightningDataModule`` of ``datamodules``, and nested targets are this project's
networks or torch optimisers and schedulers (the ``_partial_`` optimisers). Nothing else is
imported, let alone called.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.cache import default_cache_dir
from datamodules.info import DataInfo
from models.generative import GenerativeModule
from models.legacy import is_legacy, upgrade_run_config, upgrade_state_dict
from models.local_paths import local_model_config

# Packages whose classes a stored config may name; importing them runs no user-chosen code.
PROJECT_PACKAGES = ("models", "baselines", "datamodules")
GENERATOR_PACKAGES = ("models", "baselines")
TORCH_PACKAGES = ("torch.optim",)
# Project functions a stored config may name: they only build a network from sizes.
NETWORK_BUILDERS = ("models.unets.build_unet",)


class UntrustedConfigError(ValueError):
    """A stored config names code outside the allowlist (or is not a plain config)."""


def _targets(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(key path, value) of every ``_target_`` below ``node``, lists included."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from _targets(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _targets(value, f"{where}[{index}]")


def _resolve_class(target: Any, packages: tuple[str, ...]) -> type | None:
    """The class ``target`` names if it lies in one of ``packages``; None otherwise, without importing it."""
    if not isinstance(target, str) or "." not in target:
        return None
    module_name, _, name = target.rpartition(".")
    if not any(module_name == p or module_name.startswith(f"{p}.") for p in packages):
        return None  # checked before the import: importing a module runs its code
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def _allowed_nested(target: Any) -> bool:
    if target in NETWORK_BUILDERS:
        return True
    cls = _resolve_class(target, PROJECT_PACKAGES)
    if cls is not None:
        return issubclass(cls, torch.nn.Module)
    cls = _resolve_class(target, TORCH_PACKAGES)
    return cls is not None and issubclass(cls, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))


def check_targets(config: Any, role: str, where: str) -> None:
    """Refuse ``config`` (a stored ``model`` or ``data`` node) unless every ``_target_`` is allowed.

    Args:
        config: the node as plain containers or a DictConfig.
        role: ``"generator"`` or ``"data"``: what the top-level ``_target_`` must build.
        where: where the node came from, for the message (a checkpoint path and key).
    """
    node = OmegaConf.to_container(config, resolve=False) if OmegaConf.is_config(config) else config
    if not isinstance(node, dict):
        raise UntrustedConfigError(f"{where}: expected a config mapping, got {type(node).__name__}")
    base, packages, what = {
        "generator": (GenerativeModule, GENERATOR_PACKAGES, "a GenerativeModule class of models/ or baselines/"),
        "data": (L.LightningDataModule, ("datamodules",), "a LightningDataModule class of datamodules/"),
    }[role]
    top = _resolve_class(node.get("_target_"), packages)
    if top is None or not issubclass(top, base):
        raise UntrustedConfigError(
            f"{where}._target_ is {node.get('_target_')!r}, not {what}; a stored config may only name this "
            "project's classes. Nothing was built. Only use checkpoints you trust."
        )
    for path, target in _targets(node, ""):
        if path != "_target_" and not _allowed_nested(target):
            raise UntrustedConfigError(
                f"{where}.{path} is {target!r}: a stored config may only name this project's networks "
                "(torch.nn.Module classes of models/, baselines/, datamodules/) and torch optimisers or "
                "schedulers. Nothing was built. Only use checkpoints you trust."
            )


def stored_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The run config a checkpoint carries, as plain containers, refused if it is not plain data.

    Checkpoints store the config resolved, so an interpolation (``${...}``) cannot come from a run;
    it would call OmegaConf resolvers (environment variables and the like) on the loader's machine.
    """
    config = checkpoint.get("dermsynth_config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} lacks 'dermsynth_config': it was not written by experiments.run")
    for key, value in _leaves(config, ""):
        if isinstance(value, str) and "${" in value:
            raise UntrustedConfigError(f"{path}: dermsynth_config.{key} holds an interpolation {value!r}; stored configs are resolved")
    return upgrade_run_config(config)  # an earlier layout, read as today's


def _leaves(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{where}[{index}]")
    else:
        yield where, node


def build_generator(model_cfg: Any, data_info: DataInfo) -> GenerativeModule:
    """Instantiate a ``model`` config for a data vocabulary (``DataInfo`` is passed as is, not merged)."""
    model = instantiate(model_cfg, _partial_=True)(data_info=data_info)
    if not isinstance(model, GenerativeModule):
        raise TypeError(f"{model_cfg['_target_']} is not a models.generative.GenerativeModule")
    return model


def build_stored_datamodule(data_cfg: Any, where: str) -> L.LightningDataModule:
    """Instantiate a ``data`` config that came from a checkpoint, after checking its targets; set up."""
    check_targets(data_cfg, "data", where)
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file without running pickled code; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError depending on the cause
        first_line = next(iter(str(error).splitlines()), "") or "no detail"  # an empty file's error has no text
        raise ValueError(
            f"{path} is not a DermSynth checkpoint loadable with weights_only=True ({type(error).__name__}: "
            f"{first_line}). Only load checkpoints you trust."
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def load_generator(
    path: str | Path, use_ema: bool = True, map_location: str | torch.device = "cpu",
    cache_dir: str | Path | None = None, local_files: Mapping[str, Any] | None = None,
) -> GenerativeModule:
    """Rebuild the generator saved at ``path`` (a ``.ckpt`` written by ``experiments.run``).

    The stored config's paths are provenance only (``models.local_paths``): caches go to ``cache_dir``
    (default ``$DERMSYNTH_CACHE`` or ``~/.cache/dermsynth``), and a file the model reads (a local text
    encoder folder, backbone weights) must be given in ``local_files`` (``text_encoder``, ``backbone``).
    """
    checkpoint = read_checkpoint(path, map_location)
    for key in ("data_info", "state_dict"):
        if key not in checkpoint:
            raise ValueError(f"{path} lacks '{key}': it was not written by experiments.run")
    stored = stored_config(checkpoint, path)
    legacy = is_legacy(checkpoint["dermsynth_config"].get("model") or {})
    if "model" not in stored:
        raise ValueError(f"{path}: dermsynth_config has no 'model' entry")
    check_targets(stored["model"], "generator", f"{path}: dermsynth_config.model")
    model_cfg = local_model_config(stored["model"], f"{path}: dermsynth_config.model", cache_dir or default_cache_dir(), local_files)
    config = OmegaConf.create({**stored, "model": model_cfg})
    try:
        data_info = DataInfo.from_dict(checkpoint["data_info"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: its data_info is damaged ({type(error).__name__}: {error}); the checkpoint cannot be rebuilt") from None
    try:
        model = build_generator(config.model, data_info)
    except (InstantiationException, KeyError, TypeError) as error:
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ValueError(f"{path}: dermsynth_config.model does not build a model ({reason}); the checkpoint's config is "
                         "damaged or from an incompatible version") from None
    state = checkpoint.get("ema_state_dict") if use_ema else None
    state = state if isinstance(state, dict) else checkpoint["state_dict"]
    result = model.load_state_dict(upgrade_state_dict(state) if legacy else state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit the model its config builds ({config.model._target_}): "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model.run_config = stored
    return model.eval().to(map_location)
