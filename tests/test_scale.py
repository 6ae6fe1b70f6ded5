"""Long checks of scale and reliability: DDP over gloo, lossless resume, multirun + report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.run import run
from tests.helpers import compose_config, smoke_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)


def _resume_overrides(output_dir: Path, steps: int) -> list[str]:
    return smoke_overrides(
        output_dir, "ddpm", f"trainer.max_steps={steps}", "callbacks.checkpoint.every_n_train_steps=5",
        "budget_steps.smoke=20", "data.num_workers=0", "eval.num_generated=8",
    )


def test_resume_equals_straight_run(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    run(compose_config(*_resume_overrides(straight, 20)))
    resumed = tmp_path / "resumed"
    run(compose_config(*_resume_overrides(resumed, 10)))
    run(compose_config(*_resume_overrides(resumed, 20)))
    a, b = _weights(straight / "checkpoints" / "last.ckpt"), _weights(resumed / "checkpoints" / "last.ckpt")
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    assert _max_abs_difference(a, b) <= 1e-5


def test_ddp_two_processes_on_cpu_write_one_run_folder(tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run", "exp=ddpm", "budget=smoke", "logger=csv", "trainer=ddp",
         "trainer.accelerator=cpu", "trainer.devices=2", f"paths.runs_root={runs_root}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folders = [p for p in (runs_root / "ddpm").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["train_steps"] > 0 and metrics["fid"] is not None
