"""Config composition for tests: the same YAML the command line uses, shrunk by overrides."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from experiments import CONFIG_DIR
from experiments.compose import compose_config as compose_command_config


def compose_config(*overrides: str) -> DictConfig:
    """The run config (configs/config.yaml) with ``overrides``, as ``python -m experiments.run`` composes it."""
    return compose_command_config("config", overrides)


def experiment_names() -> list[str]:
    """Every experiment overlay, ablations included (``ablation/fusion``)."""
    root = CONFIG_DIR / "exp"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def smoke_overrides(output_dir: Path, exp: str, *extra: str) -> list[str]:
    return [f"exp={exp}", "budget=smoke", "logger=csv", f"paths.output_dir={output_dir}", "trainer.accelerator=cpu", *extra]


def untrained_checkpoint(path: Path, exp: str, *overrides: str) -> Path:
    """A checkpoint ``load_generator`` accepts, with untrained weights (8 px smoke config): enough for the commands."""
    from experiments.bench_suites.common import build_datamodule
    from models.checkpoint import build_generator

    cfg = compose_config(f"exp={exp}", "budget=smoke", "logger=none", "data.image_size=8", *overrides)
    datamodule = build_datamodule(cfg.data)
    model = build_generator(cfg.model, datamodule.info)
    torch.save({"dermsynth_config": OmegaConf.to_container(cfg, resolve=True), "data_info": datamodule.info.to_dict(),
                "state_dict": model.state_dict(), "global_step": 0}, path)
    return path


def load_with_parents(path: Path) -> DictConfig:
    """A config group option merged with the options of its ``defaults`` list, as Hydra composes it: entries of the
    same group (``- _diffusion``) and of a nested group (``- noise: ddpm`` -> ``<group>/noise/ddpm.yaml`` under ``noise``)."""
    config = OmegaConf.load(path)
    defaults = OmegaConf.to_container(config.pop("defaults")) if "defaults" in config else []
    merged = OmegaConf.create()
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, config)
        elif isinstance(entry, dict):
            ((group, option),) = entry.items()
            merged = OmegaConf.merge(merged, {group: load_with_parents(path.parent / group / f"{option}.yaml")})
        else:
            merged = OmegaConf.merge(merged, load_with_parents(path.parent / f"{entry}.yaml"))
    return merged
