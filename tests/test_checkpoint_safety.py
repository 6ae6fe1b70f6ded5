"""A checkpoint may not choose what code runs: only this project's classes and torch optimisers are built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.compose import compose_config
from models.checkpoint import UntrustedConfigError, check_targets, load_generator
from tests.helpers import untrained_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "ddpm.ckpt", "ddpm")
    return torch.load(path, weights_only=True)


def _payloads(folder: Path, model: dict) -> dict[str, dict]:
    """Plain-dict configs that would create ``created`` or copy ``secret`` to ``copied`` if instantiated."""
    opener = {"_target_": "builtins.open", "file": str(folder / "created"), "mode": "w"}
    copier = {"_target_": "shutil.copy", "src": str(folder / "secret"), "dst": str(folder / "copied")}
    return {
        "top_open": {"model": opener},
        "top_copy": {"model": copier},
        "nested_open": {"model": {**model, "unet": {**model["unet"], "norm": opener}}},
        "nested_copy": {"model": {**model, "optimizer": {**copier, "_partial_": False}}},
        "listed_copy": {"model": {**model, "extra": [1, {"inner": copier}]}},
        "data_copy": {"model": model, "data": copier},
    }


def _commands(checkpoint: Path, out: Path) -> dict:
    from experiments.evaluate import evaluate
    from experiments.export import export
    from experiments.generate import generate

    return {
        "generate": lambda: generate(compose_config("generate", [f"ckpt={checkpoint}", f"out={out}", "num_images=1"])),
        "export": lambda: export(compose_config("export", [f"ckpt={checkpoint}", f"out={out}"])),
        "evaluate": lambda: evaluate(compose_config("evaluate", [f"ckpt={checkpoint}", f"out={out}"]), [f"ckpt={checkpoint}", f"out={out}"]),
    }


@pytest.mark.parametrize("payload", ["top_open", "top_copy", "nested_open", "nested_copy", "listed_copy", "data_copy"])
@pytest.mark.parametrize("command", ["generate", "export", "evaluate"])
def test_planted_targets_run_nothing(good: dict, payload: str, command: str, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("private")
    config = {**good["dermsynth_config"], **_payloads(tmp_path, good["dermsynth_config"]["model"])[payload]}
    checkpoint = tmp_path / "shared.ckpt"
    torch.save({**good, "dermsynth_config": config}, checkpoint)  # loads with weights_only=True: plain data
    if payload == "data_copy" and command != "evaluate":
        pytest.skip("generate (without balanced=true) and export never build the data module")
    with pytest.raises(UntrustedConfigError, match="may only name this project's"):
        _commands(checkpoint, tmp_path / "out")[command]()
    assert not (tmp_path / "created").exists() and not (tmp_path / "copied").exists()


def test_the_project_and_torch_optimisers_pass(good: dict, tmp_path: Path) -> None:
    config = good["dermsynth_config"]
    check_targets(config["model"], "generator", "model")  # AdamW as a _partial_ optimiser is allowed
    check_targets(config["data"], "data", "data")
    with pytest.raises(UntrustedConfigError, match="not a GenerativeModule class"):
        check_targets(config["data"], "generator", "model")  # a data module is no generator
    with pytest.raises(UntrustedConfigError):
        check_targets({**config["model"], "optimizer": {"_target_": "torch.save", "_partial_": True}}, "generator", "model")
    torch.save({**good, "dermsynth_config": {**config, "seed": "${oc.env:HOME}"}}, tmp_path / "interp.ckpt")
    with pytest.raises(UntrustedConfigError, match="interpolation"):
        load_generator(tmp_path / "interp.ckpt")
