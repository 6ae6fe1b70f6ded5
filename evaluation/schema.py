"""The ``metrics.json`` schema: every key always present, null where a model cannot have the figure.

The report, the runner and external scripts read these files; a missing key would silently turn a
column into "—", so writing refuses incomplete or unknown keys, unexplained nulls, malformed
intervals and an incomplete provenance instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from datamodules.atomic import write_text_atomic

# DESIGN section 3, in this order (json keeps it, so files diff cleanly between runs). ``fd_domain``
# sits beside ``fid``; ``nulls`` says why each null figure is null.
METRIC_KEYS: tuple[str, ...] = (
    "exp",
    "data",
    "image_size",
    "seed",
    "eval_split",
    "num_real",
    "num_generated",
    "feature_extractor",
    "fid",
    "fd_domain",
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
    "intervals",
    "floor",
    "provenance",
    "nulls",
)
# Figures whose null must be explained in ``nulls`` (a silent null reads as "not computed, no idea why").
EXPLAINED_KEYS: tuple[str, ...] = (
    "fid", "fd_domain", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "ssim", "psnr",
    "reconstruction_protocol", "cond_accuracy", "memorization", "per_skin_tone", "floor",
)
EVAL_SPLITS = ("val", "test")
# ``intervals`` maps a figure to [low, high] (or null); these keys hold the rest of the uncertainty report.
INTERVAL_EXTRAS = ("method", "per_seed", "seed_spread")
PROVENANCE_KEYS = ("git", "versions", "data_fingerprint", "judge", "feature_extractors", "checkpoint", "eval", "overrides", "setup")


def empty_metrics() -> dict[str, Any]:
    """A metrics dict with every key of the schema set to None (``nulls`` to an empty dict)."""
    return {**{key: None for key in METRIC_KEYS}, "nulls": {}}


def validate_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Return ``metrics`` ordered by the schema; raise if a key is missing, unknown or malformed."""
    missing = [key for key in METRIC_KEYS if key not in metrics]
    unknown = [key for key in metrics if key not in METRIC_KEYS]
    if missing or unknown:
        raise ValueError(f"metrics.json schema violated: missing {missing}, unknown {unknown}")
    problems = _shape_problems(metrics)
    if problems:
        raise ValueError("metrics.json schema violated: " + "; ".join(problems))
    return {key: _json_safe(metrics[key]) for key in METRIC_KEYS}


def _is_interval(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value))


def _shape_problems(metrics: dict[str, Any]) -> list[str]:
    problems = []
    nulls = metrics["nulls"]
    if not isinstance(nulls, dict) or not all(isinstance(v, str) and v for v in nulls.values()):
        return ["nulls must map keys to non-empty reasons"]
    unexplained = [key for key in EXPLAINED_KEYS if metrics[key] is None and key not in nulls]
    if unexplained:
        problems.append(f"null without a reason in nulls: {unexplained}")
    if metrics["eval_split"] not in (*EVAL_SPLITS, None):
        problems.append(f"eval_split must be one of {EVAL_SPLITS}, got {metrics['eval_split']!r}")
    intervals = metrics["intervals"]
    if intervals is not None:
        bad = [k for k, v in intervals.items() if k not in INTERVAL_EXTRAS and not _is_interval(v)]
        if bad:
            problems.append(f"intervals must be [low, high] or null: {bad}")
    provenance = metrics["provenance"]
    if provenance is not None:
        absent = [key for key in PROVENANCE_KEYS if key not in provenance]
        if absent:
            problems.append(f"provenance lacks {absent}")
    floor = metrics["floor"]
    if floor is not None and not isinstance(floor, dict):
        problems.append("floor must be an object")
    return problems


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
    """Read a metrics.json, filling keys written by older versions with None (``nulls``: {})."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a metrics object")
    metrics = {**empty_metrics(), **{k: v for k, v in data.items() if k in METRIC_KEYS}}
    metrics["nulls"] = metrics["nulls"] or {}
    return metrics
