"""The runner refuses what cannot make a sound run, and keeps a resumed run's folder whole."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from callbacks.health import FiniteLoss, NonFiniteLossError
from experiments.checks import check_run_config
from experiments.resume import config_differences
from experiments.run import run
from tests.helpers import compose_config, smoke_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]


def _steps(output_dir: Path) -> list[int]:
    with (output_dir / "logs" / "metrics.csv").open(newline="") as handle:
        return sorted({int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")})


# ---- resume compares configs ----------------------------------------------------------------------


def test_config_differences_ignore_run_length_and_bookkeeping() -> None:
    stored = {"trainer": {"max_steps": 2, "max_time": None, "devices": 1}, "model": {"optimizer": {"lr": 1e-3}},
              "paths": {"output_dir": "a"}, "budget_steps": {"smoke": 2}, "eval": {"num_generated": 16}}
    current = {"trainer": {"max_steps": 42, "max_time": "00:01:00:00", "devices": 2}, "model": {"optimizer": {"lr": 0.05}},
               "paths": {"output_dir": "b"}, "budget_steps": {"smoke": 3}, "eval": {"num_generated": 64}, "seed": 1}
    assert config_differences(stored, current) == {
        "model.optimizer.lr": (1e-3, 0.05), "seed": ("<absent>", 1), "trainer.devices": (1, 2)}


def test_resume_with_a_changed_config_is_refused_unless_forced(tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    run(compose_config(*smoke_overrides(output_dir, "ddpm", "logger=none")))
    written = (output_dir / "config.yaml").read_text()
    changed = smoke_overrides(output_dir, "ddpm", "logger=none", "model.optimizer.lr=0.05", "trainer.max_steps=4")
    with pytest.raises(ValueError, match=r"model\.optimizer\.lr: 0\.001 -> 0\.05") as refused:
        run(compose_config(*changed))
    assert "trainer.max_steps:" not in str(refused.value) and "resume=force" in str(refused.value)
    assert (output_dir / "config.yaml").read_text() == written  # nothing of the refused run was written
    metrics = run(compose_config(*changed, "resume=force"))
    assert metrics["train_steps"] == 4


# ---- bad values fail before the run folder exists -------------------------------------------------


def test_bad_values_are_named_before_the_run_folder_exists(tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run", *smoke_overrides(output_dir, "ddpm"), "trainer.max_steps=0", "data.batch_size=-4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode != 0
    assert "trainer.max_steps=0 trains nothing" in result.stderr and "data.batch_size=-4: must be a positive integer" in result.stderr
    assert not output_dir.exists()  # Hydra makes the run folder; the check runs before it


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_steps=0", "trains nothing"),
    ("trainer.max_steps=-3", "trainer.max_steps=-3"),
    ("data.num_workers=-1", "data.num_workers=-1"),
    ("resume=sometimes", "resume=sometimes: must be one of auto, never, force"),
    ("eval.num_generated=0", "eval.num_generated=0"),
])
def test_check_run_config(override: str, message: str) -> None:
    check_run_config(compose_config("exp=ddpm", "budget=smoke"))
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        check_run_config(compose_config("exp=ddpm", "budget=smoke", override))


# ---- logs and temporaries -------------------------------------------------------------------------


def test_resumed_run_keeps_its_log_whole_and_clears_stale_temporaries(tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    leg = smoke_overrides(output_dir, "ddpm", "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2")
    run(compose_config(*leg))
    assert _steps(output_dir) == [0, 1, 2, 3]
    stale = output_dir / "checkpoints" / ".last.ckpt.k2x_9q0a.tmp"  # what a kill mid-save leaves
    stale.write_bytes(b"")
    run(compose_config(*leg[:-2], "trainer.max_steps=6", "callbacks.checkpoint.every_n_train_steps=2"))
    assert _steps(output_dir) == [0, 1, 2, 3, 4, 5]  # Lightning's CSV writer deleted the first leg's rows
    assert not stale.exists()


class _Regression(L.LightningModule):
    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.nan_at = nan_at

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).pow(2).mean()
        if self.global_step == self.nan_at:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(64, 1), batch_size=4)


def _trainer(folder: Path, *callbacks: Callback, steps: int = 6) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                     logger=CSVLogger(folder, name="logs", version=""), log_every_n_steps=1,
                     callbacks=[ModelCheckpoint(dirpath=folder / "checkpoints", every_n_train_steps=2, save_last=True, save_top_k=0), *callbacks])


def test_nan_guard_names_the_checkpoint_or_its_absence(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="no checkpoint has been written yet"):
        _trainer(tmp_path / "early", FiniteLoss("stop")).fit(_Regression(nan_at=1))
    with pytest.raises(NonFiniteLossError, match=r"last\.ckpt holds the last good state"):
        _trainer(tmp_path / "late", FiniteLoss("stop")).fit(_Regression(nan_at=3))


@pytest.mark.parametrize(("exp", "override", "message"), [
    ("gan", "model.optimizer_g.lr=nan", "model.optimizer_g.lr=nan: must be a finite number"),  # the GAN's own optimisers
    ("gan", "model.optimizer_d.lr=0", "model.optimizer_d.lr=0: a learning rate must be > 0"),
    ("ddpm", "eval.recon_strength=inf", "eval.recon_strength=inf: must be a finite number"),
    ("ddpm", "model.sampler.steps=5000", "model.sampler.steps=5000: must be an integer in [1, 1000]"),
])
def test_every_non_finite_value_and_learning_rate_is_refused(exp: str, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")) as refused:
        check_run_config(compose_config(f"exp={exp}", "budget=smoke", override))
    assert str(refused.value).count(override.split("=")[0]) == 1  # named once, not again where it is interpolated
