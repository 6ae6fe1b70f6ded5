"""Where a figure came from: code version, package versions, data, judge, feature network, checkpoint, settings.

``code_provenance`` is written into config.yaml when a run starts and into every metrics.json;
``evaluation_provenance`` adds what one evaluation used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "lightning", "diffusers", "transformers", "timm", "torchmetrics")


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The commit checked out in ``root`` and whether tracked files differ from it (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
    """Python and the packages whose versions change the figures."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def code_provenance() -> dict[str, Any]:
    return {"git": git_state(), "versions": versions()}


def file_hash(path: str | Path) -> str:
    """SHA-1 of a file (checkpoints: which weights were evaluated)."""
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def evaluation_provenance(
    *, data_fingerprint: str, judge: Any, extractors: list[Any], settings: dict[str, Any], setup: dict[str, Any],
    checkpoint: str | Path | None = None, overrides: list[str] | None = None, model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``provenance`` block of metrics.json (DESIGN section 3); ``model`` is the generator's own
    (``GenerativeModule.provenance``: the route, a first stage's fit and reconstruction figures)."""
    return {
        **code_provenance(),
        "data_fingerprint": data_fingerprint,
        "judge": judge.name,
        "judge_key": judge.key,
        "feature_extractors": [extractor.provenance() for extractor in extractors],
        "checkpoint": None if checkpoint is None else {"path": str(checkpoint), "sha1": file_hash(checkpoint)},
        "eval": settings,
        "overrides": list(overrides or []),
        "setup": setup,
        "model": dict(model or {}),
    }
