"""The ``metrics.json`` schema: every key always present, null where a model cannot have the figure.

The report, the runner and external scripts read these files; a missing key would silently turn a
column into "—", so writing refuses incomplete or unknown keys instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from datamodules.atomic import write_text_atomic

# DESIGN section 3, in this order (json keeps it, so files diff cleanly between runs).
METRIC_KEYS: tuple[str, ...] = (
    "exp",
    "data",
    "image_size",
    "seed",
    "num_real",
    "num_generated",
    "feature_extractor",
    "fid",
    "kid_mean",
    "kid_std",
    "is_mean",
    "is_std",
    "precision",
    "recall",
    "ssim",
    "psnr",
    "reconstruction_protocol",
    "cond_accuracy",
    "memorization",
    "per_skin_tone",
    "train_steps",
    "train_time_s",
    "sample_time_s_per_image",
    "nfe",
)


def empty_metrics() -> dict[str, Any]:
    """A metrics dict with every key of the schema set to None."""
    return {key: None for key in METRIC_KEYS}


def validate_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Return ``metrics`` ordered by the schema; raise if a key is missing or unknown."""
    missing = [key for key in METRIC_KEYS if key not in metrics]
    unknown = [key for key in metrics if key not in METRIC_KEYS]
    if missing or unknown:
        raise ValueError(f"metrics.json schema violated: missing {missing}, unknown {unknown}")
    return {key: _json_safe(metrics[key]) for key in METRIC_KEYS}


def _json_safe(value: Any) -> Any:
    """NaN/Inf become null (JSON has no NaN); numpy and torch scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics_json(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Validate and write ``metrics`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(validate_metrics(metrics), indent=2, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def read_metrics_json(path: str | Path) -> dict[str, Any]:
    """Read a metrics.json, filling keys written by older versions with None."""
    data = json.loads(Path(path).read_text())
    return {**empty_metrics(), **{k: v for k, v in data.items() if k in METRIC_KEYS}}
