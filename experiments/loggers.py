"""Experiment loggers: W&B by default (offline without credentials), CSV always beside it."""

from __future__ import annotations

import logging
import netrc
import os
import uuid
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True when W&B could log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str | None) -> str:
    """The mode W&B runs in: the config's, else WANDB_MODE, else online only with credentials."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_has_credentials() else "offline"


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as one flat dict (``model.optimizer.lr`` style keys) for W&B."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return flat


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Logger]:
    """Instantiate ``cfg.logger`` entries; a CSV logger is added when none is configured."""
    loggers: list[Logger] = []
    for name, logger_cfg in (cfg.logger or {}).items():
        if "WandbLogger" in str(logger_cfg.get("_target_", "")):
            loggers.append(_build_wandb(cfg, logger_cfg, output_dir))
        else:
            loggers.append(instantiate(logger_cfg))
    if not any(isinstance(logger, CSVLogger) for logger in loggers):
        loggers.append(CSVLogger(save_dir=str(output_dir), name="logs", version=""))
    return loggers


def _build_wandb(cfg: DictConfig, logger_cfg: DictConfig, output_dir: Path) -> WandbLogger:
    mode = wandb_mode(logger_cfg.get("mode"))
    os.environ.setdefault("WANDB_SILENT", "true")
    # The same run id across resumes, so a resumed run continues its W&B curves.
    id_file = output_dir / "wandb_run_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:8]
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    tags = [f"seed:{cfg.seed}", f"data:{cfg.data.source}", f"budget:{cfg.budget_name}", *cfg.get("tags", [])]
    sweep_id = os.environ.get("DERMSYNTH_SWEEP_ID")
    if sweep_id:
        tags.append(f"sweep:{sweep_id}")
    kwargs = OmegaConf.to_container(logger_cfg, resolve=True)
    kwargs.pop("mode", None)
    name = kwargs.pop("name", None) or f"{cfg.exp_name}-s{cfg.seed}-{output_dir.name}"
    logger = instantiate(
        {**kwargs, "name": name, "id": run_id, "resume": "allow", "mode": mode, "tags": tags},
        settings={"init_timeout": 60, "console": "off", "x_disable_stats": True},
    )
    if mode == "offline":
        log.warning("W&B runs offline (no credentials found). Sync later with: wandb sync %s/wandb/offline-run-*", output_dir)
    return logger
