"""Config composition for tests: the same YAML the command line uses, shrunk by overrides."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

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
