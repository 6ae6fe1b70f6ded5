"""Config composition for tests: the same YAML the command line uses, shrunk by overrides."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments import CONFIG_DIR


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def experiment_names() -> list[str]:
    """Every experiment overlay, ablations included (``ablation/fusion``)."""
    root = CONFIG_DIR / "exp"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def smoke_overrides(output_dir: Path, exp: str, *extra: str) -> list[str]:
    return [f"exp={exp}", "budget=smoke", "logger=csv", f"paths.output_dir={output_dir}", "trainer.accelerator=cpu", *extra]
