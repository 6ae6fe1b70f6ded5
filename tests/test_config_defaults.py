"""Settings live in YAML: a Python default of one of our ``_target_``s never contradicts the value its config gives.

Every group option under ``experiments/configs`` (model, data, callbacks, ...; not the ``exp``, ``budget``
and ``recipe`` overlays, which override on purpose, nor Hydra's own settings) is read with its ``defaults`` parents, and each
node whose ``_target_`` is project code is checked against the target's signature: a key the YAML
sets must have no Python default or the same one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments import CONFIG_DIR
from tests.helpers import load_with_parents

PROJECT_PACKAGES = {"models", "baselines", "datamodules", "callbacks", "evaluation", "experiments"}
OVERLAY_GROUPS = {"exp", "budget", "recipe", "hydra"}  # overlays override on purpose; hydra/ is Hydra's own


def group_files() -> list[Path]:
    return sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent != CONFIG_DIR and p.relative_to(CONFIG_DIR).parts[0] not in OVERLAY_GROUPS)


def target_nodes(node: Any, where: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield where, node
        for key in node:
            if not OmegaConf.is_interpolation(node, key) and not OmegaConf.is_missing(node, key):
                yield from target_nodes(node[key], f"{where}.{key}")
    elif isinstance(node, ListConfig):
        for index, item in enumerate(node):
            yield from target_nodes(item, f"{where}[{index}]")


def parameters(target: Any) -> dict[str, inspect.Parameter]:
    """Named parameters of a function or class; ``**kwargs`` of a class __init__ lead to its bases'."""
    found: dict[str, inspect.Parameter] = {}
    for owner in target.__mro__ if inspect.isclass(target) else [target]:
        function = owner.__init__ if inspect.isclass(target) else owner
        if inspect.isclass(target) and "__init__" not in vars(owner):
            continue
        signature = inspect.signature(function)
        found.update({k: v for k, v in signature.parameters.items() if k not in found and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)})
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return found


def plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def contradictions(config: DictConfig, name: str) -> list[str]:
    """Each key of a project ``_target_`` node whose Python default differs from the YAML value."""
    problems = []
    for where, node in target_nodes(config, name):
        if node["_target_"].split(".")[0] not in PROJECT_PACKAGES:
            continue
        params = parameters(get_object(node["_target_"]))
        for key in node:
            if key.startswith("_") or OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
                continue
            if key not in params:
                problems.append(f"{where}.{key}: {node['_target_']} has no such argument")
                continue
            default = params[key].default
            if default is not inspect.Parameter.empty and plain(default) != plain(node[key]):
                problems.append(f"{where}.{key}: YAML {plain(node[key])!r}, Python default {default!r} ({node['_target_']})")
    return problems


@pytest.mark.parametrize("path", group_files(), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_python_defaults_match_the_yaml(path: Path) -> None:
    problems = contradictions(load_with_parents(path), str(path.relative_to(CONFIG_DIR).with_suffix("")))
    assert not problems, "\n".join(problems)


def test_every_project_target_is_checked() -> None:
    checked = {node["_target_"] for path in group_files() for _, node in target_nodes(load_with_parents(path), "")}
    expected = {
        "models.hybrid.HybridDiffusion", "baselines.ddpm.DiffusionBaseline", "baselines.vae.VAE", "baselines.gan.GAN",
        "models.unets.build_unet", "models.diffusion.NoiseProcess", "models.flow_matching.FlowMatching", "models.edm.EDM",
        "models.text_fusion.TextFusion",
        "models.text_encoder.TextEncoder", "models.fusion.FusionConditioner", "models.hybrid.AlignmentHead",
        "models.conditioners.Label", "models.conditioners.NoConditioning", "datamodules.SkinDataModule",
        "callbacks.ema.EMA", "callbacks.samples.SampleGrid", "callbacks.evaluate.Evaluate",
    }
    assert expected <= checked


def test_a_contradiction_is_caught() -> None:
    config = OmegaConf.create({
        "noise": {"_target_": "models.diffusion.NoiseProcess", "prediction_type": "epsilon", "min_snr_gamma": None, "snr_floor": 0.0},
        "unet": {"_target_": "models.unets.build_unet", "block_out_channels": [8, 16], "patch_sise": 2, "dropout": 0.0},
    })
    problems = contradictions(config, "model")
    assert len(problems) == 5, problems  # three defaults differ, one list differs, one key is misspelt
    assert "model.noise.prediction_type: YAML 'epsilon', Python default 'sample' (models.diffusion.NoiseProcess)" in problems
    assert "model.unet.patch_sise: models.unets.build_unet has no such argument" in problems
