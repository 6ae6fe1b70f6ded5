"""Whether a run continues from ``checkpoints/last.ckpt``, and only with the config it was trained with.

Re-running a run folder resumes it (``resume=auto``). If the config differs from the one the
checkpoint was trained with in anything but the run's length or its bookkeeping, resuming would
mix two runs while ``config.yaml`` records only the second, so it is refused, naming the keys;
``resume=force`` continues anyway (and says so), ``resume=never overwrite=true`` starts afresh.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# How long the run goes on: extending a run is what resuming is for.
RUN_LENGTH = ("trainer.max_steps", "trainer.max_time", "budget_steps", "budget_name")
# Where things are written, how often, and how they are reported: none of it touches the weights.
BOOKKEEPING = (
    "resume", "overwrite", "paths", "logger", "tags", "memory_estimate", "eval", "callbacks.evaluate", "callbacks.samples",
    "callbacks.checkpoint.every_n_train_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "trainer.val_check_interval", "trainer.limit_val_batches",
    "trainer.check_val_every_n_epoch", "data.num_workers", "data.persistent_workers", "data.pin_memory",
    "data.cache_dir", "model.text_encoder.cache_dir", "model.first_stage.cache_dir",
)
MAY_CHANGE = RUN_LENGTH + BOOKKEEPING


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored, current)}`` for the keys outside ``MAY_CHANGE`` whose values differ (or exist in one only)."""
    old, new = _flatten(stored), _flatten(current)
    missing = "<absent>"
    return {
        key: (old.get(key, missing), new.get(key, missing))
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
        and not any(key == k or key.startswith(f"{k}.") for k in MAY_CHANGE)
    }


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> tuple[str | None, int]:
    """``(path of last.ckpt, its global step)`` when the run continues from it, else ``(None, 0)``.

    Raises ``ValueError`` naming the keys that differ from the checkpoint's config (``resume=auto``).
    """
    last = output_dir / "checkpoints" / "last.ckpt"
    if cfg.resume == "never" or not last.exists():
        return None, 0
    checkpoint = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    stored = checkpoint.get("dermsynth_config")
    current = OmegaConf.to_container(cfg, resolve=True)
    differences = config_differences(stored, current) if isinstance(stored, dict) else {"dermsynth_config": ("<absent>", "...")}
    if differences:
        listed = "\n  ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(differences.items())[:20])
        more = f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
        if cfg.resume != "force":
            raise ValueError(
                f"{last} was trained with another config; resuming would mix two runs. Keys that differ "
                f"(checkpoint -> now):\n  {listed}{more}\nUndo the change, start a new run folder (paths.output_dir=...), "
                "resume=never overwrite=true to start this folder afresh, or resume=force to continue with the new values. "
                f"Only the run length ({', '.join(RUN_LENGTH)}) and bookkeeping keys may change on resume."
            )
        log.warning("resume=force: continuing %s with a changed config (checkpoint -> now):\n  %s%s", last, listed, more)
    return str(last), int(checkpoint.get("global_step", 0))
