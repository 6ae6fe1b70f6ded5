"""The runner's contract: configs compose, every experiment runs end to end, errors are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from evaluation.schema import METRIC_KEYS
from experiments.run import resolve_output_dir, run
from models.checkpoint import load_generator
from tests.helpers import compose_config, experiment_names, smoke_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN_EXPERIMENTS = ["hybrid", "ddpm", "ddpm_class", "vae", "gan"]


def test_main_experiments_exist() -> None:
    assert set(MAIN_EXPERIMENTS) <= set(experiment_names())


@pytest.mark.parametrize("exp", experiment_names())
def test_every_experiment_composes(exp: str) -> None:
    cfg = compose_config(f"exp={exp}", "budget=smoke")
    assert cfg.exp_name, exp
    assert cfg.model._target_.split(".")[0] in {"models", "baselines"}
    assert cfg.trainer.max_steps == cfg.budget_steps.smoke


def _assert_run_folder(output_dir: Path, metrics: dict, conditional: bool) -> None:
    assert (output_dir / "config.yaml").is_file()
    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
    grids = sorted((output_dir / "samples").glob("step_*.png"))
    assert grids, "no sample grid written"
    if conditional:
        captions = json.loads(grids[-1].with_suffix(".json").read_text())["captions"]
        assert captions and all(isinstance(c, str) and c for c in captions)
    assert (output_dir / "logs").is_dir()
    written = json.loads((output_dir / "metrics.json").read_text())
    assert list(written) == list(METRIC_KEYS)
    assert written["train_steps"] == metrics["train_steps"] > 0
    training = written["provenance"]["training"]
    assert {k: training[k] for k in ("max_steps", "steps", "stopped_by", "max_time")} == {
        "max_steps": written["train_steps"], "steps": written["train_steps"], "stopped_by": "max_steps", "max_time": None}
    assert training["train_cpu_s"] > 0 and training["cpu_budget_minutes"] is None  # every run's CPU clock (callbacks/cpu_budget.py)
    assert written["fid"] is not None and written["fid"] >= 0
    memory = OmegaConf.load(output_dir / "config.yaml").provenance.memory_estimate  # printed before training, kept here
    assert memory.activations_per_image_mib > 0 and memory.total_mib >= memory.weights_mib > 0


@pytest.mark.parametrize("exp", MAIN_EXPERIMENTS)
def test_smoke_run_writes_run_folder(exp: str, tmp_path: Path) -> None:
    cfg = compose_config(*smoke_overrides(tmp_path / exp, exp))
    metrics = run(cfg)
    model_conditional = cfg.exp_name in {"hybrid", "ddpm_class"}
    _assert_run_folder(tmp_path / exp, metrics, conditional=model_conditional)
    assert (metrics["cond_accuracy"] is not None) == model_conditional

    # The checkpoint loads without pickled code and rebuilds a generator that samples.
    checkpoint = torch.load(tmp_path / exp / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == metrics["train_steps"]
    model = load_generator(tmp_path / exp / "checkpoints" / "last.ckpt")
    images = model.generate(None if model.conditioning == "none" else _conditions(cfg), 2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, cfg.data.image_size, cfg.data.image_size)
    assert torch.isfinite(images).all()


def _conditions(cfg) -> dict:
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule.sample_conditions(2, seed=0)


def test_resume_continues_from_last_checkpoint(tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    run(compose_config(*smoke_overrides(output_dir, "ddpm")))
    metrics = run(compose_config(*smoke_overrides(output_dir, "ddpm", "trainer.max_steps=4")))
    assert metrics["train_steps"] == 4
    # Stopped between checkpoint steps: last.ckpt still holds the evaluated model.
    metrics = run(compose_config(*smoke_overrides(output_dir, "ddpm", "trainer.max_steps=7", "callbacks.checkpoint.every_n_train_steps=100")))
    assert metrics["train_steps"] == 7 == torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def test_a_run_the_wall_clock_cap_cuts_short_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config(*smoke_overrides(tmp_path / "capped", "ddpm", "trainer.max_steps=1000000", "trainer.max_time=00:00:00:02"))
    metrics = run(cfg)
    training = metrics["provenance"]["training"]
    assert training["stopped_by"] == "max_time" and 0 < training["steps"] == metrics["train_steps"] < training["max_steps"] == 1000000
    assert "not at equal steps" in caplog.text


def test_a_run_that_ends_with_its_epochs_under_a_cap_that_did_not_bite_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config(*smoke_overrides(tmp_path / "epochs", "vae", "trainer.max_steps=-1", "trainer.max_epochs=1",
                                          "trainer.max_time=00:01:00:00"))
    training = run(cfg)["provenance"]["training"]
    assert training["stopped_by"] == "max_epochs" and training["max_steps"] == -1 and training["steps"] > 0
    assert "not at equal steps" not in caplog.text


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.run", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def test_unknown_experiment_lists_the_valid_ones() -> None:
    result = _cli("exp=nope")
    assert result.returncode != 0
    assert "nope" in result.stderr
    for name in MAIN_EXPERIMENTS:
        assert name in result.stderr


def test_unknown_key_is_rejected() -> None:
    result = _cli("exp=ddpm", "trainer.max_stpes=3")
    assert result.returncode != 0
    assert "max_stpes" in result.stderr


def test_wandb_offline_without_network_or_credentials(tmp_path: Path) -> None:
    """No credentials, no WANDB_MODE, an unreachable server: the run logs offline and succeeds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_BASE_URL="http://127.0.0.1:9", NETRC=str(tmp_path / "none"))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run", *smoke_overrides(out, "ddpm", "logger=wandb")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run folder"
    assert "wandb sync" in result.stderr + result.stdout
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("launcher_env", [
    {"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "job"},
    {"SLURM_NTASKS": "8", "SLURM_PROCID": "3"},
])
def test_externally_launched_ranks_need_a_pinned_output_dir(
    launcher_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in launcher_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DERMSYNTH_OUTPUT_DIR", raising=False)
    cfg = compose_config("exp=ddpm", "budget=smoke")
    monkeypatch.setattr(sys, "argv", ["run.py", "exp=ddpm"])
    with pytest.raises(SystemExit, match="paths.output_dir"):
        resolve_output_dir(cfg)
    monkeypatch.setattr(sys, "argv", ["run.py", "exp=ddpm", f"paths.output_dir={tmp_path}"])
    cfg.paths.output_dir = str(tmp_path)
    assert resolve_output_dir(cfg) == tmp_path
