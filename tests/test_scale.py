"""Long checks of scale and reliability: DDP over gloo, lossless resume, multirun + report."""

from __future__ import annotations

import csv
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


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # not written yet
        return -1


def test_killed_run_resumes_to_the_straight_result(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    run(compose_config(*_resume_overrides(straight, 20)))
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.run", *_resume_overrides(killed, 20)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while _checkpoint_step(last) < 10 and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed; lower the checkpoint interval"
    process.send_signal(signal.SIGKILL)  # no clean-up, as a pre-empted node
    process.wait()
    assert 10 <= _checkpoint_step(last) < 20
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _checkpoint_step(last) == 20
    assert _max_abs_difference(_weights(straight / "checkpoints" / "last.ckpt"), _weights(last)) <= 1e-5
    assert _logged_steps(killed) == _logged_steps(straight) == list(range(20))  # the first leg's rows survive the resume
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # what the kill left mid-save is cleared


def _logged_steps(output_dir: Path) -> list[int]:
    with (output_dir / "logs" / "metrics.csv").open(newline="") as handle:
        return sorted(int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss"))


def test_multirun_sweep_feeds_the_report(tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    sweep = subprocess.run(
        # data.seed fixed: the phantom otherwise renders new data per training seed, and the report never averages runs
        # evaluated on different data (another fingerprint, another real set)
        [sys.executable, "-m", "experiments.run", "-m", "exp=ddpm,vae", "seed=0,1", "data.seed=0", "budget=smoke", "logger=csv",
         "trainer.accelerator=cpu", f"paths.runs_root={runs_root}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, env=env,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    metrics = sorted(runs_root.rglob("metrics.json"))
    assert len(metrics) == 4
    assert {(json.loads(p.read_text())["exp"], json.loads(p.read_text())["seed"]) for p in metrics} == {
        ("ddpm", 0), ("ddpm", 1), ("vae", 0), ("vae", 1)
    }
    report = subprocess.run([sys.executable, "-m", "experiments.report", str(runs_root)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    table = (runs_root / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ddpm") or line.startswith("| vae")]
    assert len(rows) == 2 and all("±" in row for row in rows), table
