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
    """An untrained label-conditional checkpoint: every command accepts it as it is."""
    path = untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "ddpm_class.ckpt", "ddpm_class", "model.sampler.steps=2")
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
        "data_copy": {"data": copier},
        "data_nested_open": {"data": {**copier, "_target_": "datamodules.SkinDataModule", "source": opener}},
    }


def _commands(checkpoint: Path, out: Path) -> dict:
    from experiments.augment import augment
    from experiments.evaluate import evaluate
    from experiments.export import export
    from experiments.generate import generate

    ckpt, target = f"ckpt={checkpoint}", f"out={out}"
    given = [target, "budget=smoke", "train_generators=false", "real_fractions=[1.0]", "arms=[syn]", f"generators.syn.checkpoints={{1.0: {checkpoint}}}"]
    return {
        "generate": lambda: generate(compose_config("generate", [ckpt, target, "num_images=1", "prompt=a benign lesion"])),
        "generate_balanced": lambda: generate(compose_config("generate", [ckpt, target, "num_images=1", "balanced=true"])),
        "export": lambda: export(compose_config("export", [ckpt, target])),
        "evaluate": lambda: evaluate(compose_config("evaluate", [ckpt, target]), [ckpt, target]),
        "augment": lambda: augment(compose_config("augment", given), given),
    }


def _plant_and_run(good: dict, payload: str, command: str, folder: Path) -> None:
    (folder / "secret").write_text("private")
    config = {**good["dermsynth_config"], **_payloads(folder, good["dermsynth_config"]["model"])[payload]}
    checkpoint = folder / "shared.ckpt"
    torch.save({**good, "dermsynth_config": config}, checkpoint)  # loads with weights_only=True: plain data
    with pytest.raises(UntrustedConfigError, match="may only name this project's"):
        _commands(checkpoint, folder / "out")[command]()
    assert not (folder / "created").exists() and not (folder / "copied").exists()


@pytest.mark.parametrize("payload", ["top_open", "top_copy", "nested_open", "nested_copy", "listed_copy"])
@pytest.mark.parametrize("command", ["generate", "export", "evaluate"])
def test_planted_model_targets_run_nothing(good: dict, payload: str, command: str, tmp_path: Path) -> None:
    _plant_and_run(good, payload, command, tmp_path)


@pytest.mark.parametrize("payload", ["data_copy", "data_nested_open"])
@pytest.mark.parametrize("command", ["generate_balanced", "evaluate", "augment"])
def test_planted_data_targets_run_nothing(good: dict, payload: str, command: str, tmp_path: Path) -> None:
    _plant_and_run(good, payload, command, tmp_path)


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
