"""Every entry point composes its config with Hydra: strict keys that list the valid ones, one syntax."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from experiments.command import command_line
from experiments.compose import checkpoint_config, compose_config, explain_overrides
from tests.helpers import untrained_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"run": "config", "generate": "generate", "evaluate": "evaluate", "augment": "augment",
            "export": "export", "report": "report", "bench": "bench"}


def _cli(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"experiments.{command}", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "vae.ckpt", "vae")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_rejects_an_unknown_key_and_lists_the_valid_ones(command: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_config(COMMANDS[command], ["no_such_key=1"])
    message = explain_overrides(COMMANDS[command], ["no_such_key=1"])
    assert "unknown key 'no_such_key'" in message and "valid keys at the top level" in message


def test_generate_typo_lists_the_valid_keys() -> None:
    result = _cli("generate", "ckpt=x", "out=y", "num_imgs=3")
    assert result.returncode != 0
    assert "did you mean 'num_images'" in result.stderr and "valid keys at the top level: balanced, batch_size" in result.stderr


def test_evaluate_typos_fail_on_a_checkpoint_and_list_the_valid_keys(vae_checkpoint: Path) -> None:
    result = _cli("evaluate", f"ckpt={vae_checkpoint}", "eval.num_generatd=4", "seeed=3")  # both used to be ignored
    assert result.returncode != 0
    assert "did you mean 'eval.num_generated'" in result.stderr and "valid keys under 'eval':" in result.stderr
    assert "did you mean 'seed'" in result.stderr


def test_checkpoint_overrides_apply_to_the_stored_config_and_stay_strict(vae_checkpoint: Path) -> None:
    stored = torch.load(vae_checkpoint, weights_only=True)["dermsynth_config"]
    cfg = checkpoint_config(stored, [f"ckpt={vae_checkpoint}", "eval.num_generated=5", "data.num_test=9"], "evaluate", ["ckpt"])
    assert cfg.eval.num_generated == 5 and cfg.data.num_test == 9
    assert cfg.model == stored["model"] and cfg.data.image_size == stored["data"]["image_size"] == 8  # the rest as stored
    with pytest.raises(ValueError, match=r"unknown key 'model.guidance.scale' in the checkpoint's run config\nvalid keys under 'model': _target_"):
        checkpoint_config(stored, ["model.guidance.scale=2"], "evaluate")  # valid for the default hybrid, not for this VAE
    with pytest.raises(ValueError, match="the checkpoint fixed 'exp'"):
        checkpoint_config(stored, ["exp=ddpm"], "evaluate")


def test_bare_arguments_and_flags() -> None:
    assert command_line(["runs/"], positional="root") == ["root='runs/'"]
    assert command_line(["data", "train", "out=b.json"], positional="suites", as_list=True) == ["suites=['data','train']", "out=b.json"]
    assert command_line(["--cfg", "job", "prompt=a #1"], verbatim=("prompt",)) == ["--cfg", "job", "prompt='a #1'"]
    assert compose_config("report", command_line(["my runs/"], positional="root")).root == "my runs/"
    assert list(compose_config("bench", command_line(["data", "eval"], positional="suites", as_list=True)).suites) == ["data", "eval"]


def test_cfg_job_prints_the_composed_config_without_running(tmp_path: Path) -> None:
    result = _cli("generate", "--cfg", "job", "ckpt=x", f"out={tmp_path / 'out'}", "prompt=a benign lesion #2")
    assert result.returncode == 0, result.stderr
    assert "prompt: 'a benign lesion #2'" in result.stdout or "prompt: a benign lesion #2" in result.stdout
    assert not (tmp_path / "out").exists()
