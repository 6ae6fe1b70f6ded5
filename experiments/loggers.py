"""Experiment loggers: W&B by default (offline without credentials), CSV always beside it."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import uuid
import warnings
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


def build_loggers(cfg: DictConfig, output_dir: Path, resume_step: int = 0) -> list[Logger]:
    """Instantiate ``cfg.logger`` entries; a CSV logger is added when none is configured.

    ``resume_step``: the step a resumed run continues from; its CSV rows before that step are kept.
    """
    loggers: list[Logger] = []
    for name, logger_cfg in (cfg.logger or {}).items():
        if "WandbLogger" in str(logger_cfg.get("_target_", "")):
            loggers.append(_build_wandb(cfg, logger_cfg, output_dir))
        else:
            loggers.append(instantiate(logger_cfg))
    if not any(isinstance(logger, CSVLogger) for logger in loggers):
        loggers.append(CSVLogger(save_dir=str(output_dir), name="logs", version=""))
    for logger in loggers:
        if isinstance(logger, CSVLogger) and resume_step > 0:
            keep_csv_rows(logger, resume_step)
    return loggers


def keep_csv_rows(logger: CSVLogger, before_step: int) -> int:
    """Carry the rows of a CSV log below ``before_step`` into a resumed run; returns how many.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, which would leave a
    resumed run's log with only its last leg. Rows from ``before_step`` on are dropped: the resumed
    run logs those steps again.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return 0
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("step") and int(row["step"]) < before_step]
    with warnings.catch_warnings():  # "previous log files will be deleted": they are logged again below
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        logger.experiment  # noqa: B018 - the writer starts (and deletes the old file) here, after it was read
    for row in rows:
        logger.log_metrics({k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)}, step=int(row["step"]))
    logger.save()
    return len(rows)


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
