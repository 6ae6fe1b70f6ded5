"""Shared test set-up: no network, one cache per session, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests never talk to W&B servers; the one test of offline logging sets its own mode.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for rendered data, embeddings and judges, shared by the session's tests."""
    cache = Path(os.environ.get("DERMSYNTH_TEST_CACHE") or tmp_path_factory.mktemp("dermsynth_cache"))
    os.environ["DERMSYNTH_CACHE"] = str(cache)
    return cache


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repo; tests that need it skip on a user's clone without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is not part of the repository)")
    return SHARED_DATA
