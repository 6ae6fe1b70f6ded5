"""What the suites share: the run config composed as the command line does, devices, timing, parsing."""

from __future__ import annotations

import logging
import statistics
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from experiments.compose import compose_config

log = logging.getLogger("experiments.bench")


def compose_run_config(exp: str, budget: str, overrides: list[str]) -> DictConfig:
    """The config ``python -m experiments.run exp=<exp> budget=<budget> logger=none <overrides>`` would run."""
    return compose_config("config", [f"exp={exp}", f"budget={budget}", "logger=none", *overrides])


def build_datamodule(data_cfg: Any) -> Any:
    """The run's data module, set up (cheap once its cache exists)."""
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def hydra_overrides(options: dict[str, str]) -> list[str]:
    """The suite's ``overrides=`` option: space-separated Hydra overrides for every config it composes."""
    return options.get("overrides", "").split()


def size_overrides(options: dict[str, str]) -> list[str]:
    """Hydra overrides for the size options a suite shares (empty option = the budget's value)."""
    mapping = {"image_size": "data.image_size", "batch_size": "data.batch_size", "num_train": "data.num_train"}
    return [f"{key}={options[name]}" for name, key in mapping.items() if options.get(name)]


def flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(where: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it."""
    if where.type == "cuda":
        torch.cuda.synchronize(where)


def median(values: list[float]) -> float:
    """Median step time: one slow step (another process taking the core) does not move it."""
    if not values:
        raise ValueError("no timed steps: raise steps= or lower warmup=")
    return float(statistics.median(values))


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)
