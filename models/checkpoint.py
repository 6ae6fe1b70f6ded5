"""Rebuild a trained generator from its checkpoint alone.

A checkpoint carries the resolved run config (``dermsynth_config``) and the data vocabulary
(``data_info``) as plain containers, so it loads with ``torch.load(weights_only=True)``: no
pickled code runs. ``load_generator`` instantiates ``config.model`` again and loads the EMA
weights (or the trained ones).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules.info import DataInfo
from models.generative import GenerativeModule


def safe_container(value: Any) -> Any:
    """Turn configs, partials and tuples into plain types that ``weights_only`` loading accepts."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {str(k): safe_container(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_container(v) for v in value]
    if isinstance(value, functools.partial):
        return {"_partial_of_": f"{value.func.__module__}.{value.func.__qualname__}", **safe_container(value.keywords)}
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return value
    return repr(value)


def build_generator(model_cfg: Any, data_info: DataInfo) -> GenerativeModule:
    """Instantiate a ``model`` config for a data vocabulary (``DataInfo`` is passed as is, not merged)."""
    model = instantiate(model_cfg, _partial_=True)(data_info=data_info)
    if not isinstance(model, GenerativeModule):
        raise TypeError(f"{model_cfg['_target_']} is not a models.generative.GenerativeModule")
    return model


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file without running pickled code; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError depending on the cause
        raise ValueError(
            f"{path} is not a DermSynth checkpoint loadable with weights_only=True ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}). Only load checkpoints you trust."
        ) from error


def load_generator(
    path: str | Path, use_ema: bool = True, map_location: str | torch.device = "cpu"
) -> GenerativeModule:
    """Rebuild the generator saved at ``path`` (a ``.ckpt`` written by ``experiments.run``)."""
    checkpoint = read_checkpoint(path, map_location)
    for key in ("dermsynth_config", "data_info", "state_dict"):
        if key not in checkpoint:
            raise ValueError(f"{path} lacks '{key}': it was not written by experiments.run")
    config = OmegaConf.create(checkpoint["dermsynth_config"])
    model = build_generator(config.model, DataInfo.from_dict(checkpoint["data_info"]))
    state = checkpoint.get("ema_state_dict") if use_ema else None
    state = state if state is not None else checkpoint["state_dict"]
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit the model its config builds ({config.model._target_}): "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model.run_config = checkpoint["dermsynth_config"]
    return model.eval().to(map_location)
