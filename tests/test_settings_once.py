"""Every setting is written once: no YAML file repeats a value that a file it overrides (or that overrides it)
already sets, and a budget does not silently override what a data file sets.

The files a composed run config is made of are found as Hydra finds them (the run's group choices, each
option's own ``defaults`` list), then walked in merge order; a key set again with the same value is written
twice, and a budget replacing a data file's value makes the data file lie. ``budget=smoke`` is exempt from
the second rule: shrinking the data for tests is what it is for.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import CONFIG_DIR
from tests.helpers import experiment_names


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "recipe").glob("*.yaml"))

GROUPS_IN_ORDER = ("data", "model/noise", "model", "trainer", "logger", "callbacks", "paths", "eval", "exp", "budget", "route", "recipe")


@functools.cache
def _yaml(path: Path) -> tuple[str, Any]:
    """A file's text and its plain content (read once: the combinations share files)."""
    return path.read_text(), OmegaConf.to_container(OmegaConf.load(path))


def _package(path: Path, text: str) -> str:
    if "# @package _global_" in text:
        return ""
    return str(path.parent.relative_to(CONFIG_DIR)).replace("/", ".")


def _files(path: Path, package: str | None = None) -> list[tuple[Path, str]]:
    """``path`` and the files its ``defaults`` list pulls in, in merge order, with the package each lands in."""
    text, config = _yaml(path)
    package = _package(path, text) if package is None else package
    defaults = config.get("defaults", []) if isinstance(config, dict) else []
    ordered: list[tuple[Path, str]] = []
    self_done = False
    for entry in [*defaults, *([] if "_self_" in defaults else ["_self_"])]:
        if entry == "_self_":
            ordered.append((path, package))
            self_done = True
        elif isinstance(entry, str) and entry.startswith("/") and entry.endswith("@_here_"):
            ordered += _files(CONFIG_DIR / f"{entry[1:-len('@_here_')]}.yaml", package)
        elif isinstance(entry, str) and "/" not in entry and not entry.startswith("override"):
            ordered += _files(path.parent / f"{entry}.yaml", package)
        # group choices (``override /model: x``, ``data: phantom``) come from the composed config's choices
    assert self_done
    return ordered


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key != "defaults":
                out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def composition(choices: dict[str, str]) -> list[tuple[Path, str]]:
    """The files of a run config with these group choices, in merge order."""
    files = [(CONFIG_DIR / "config.yaml", "")]
    for group in GROUPS_IN_ORDER:
        if group in choices:  # a group only some models have (model/noise: the diffusion models)
            files += _files(CONFIG_DIR / group / f"{choices[group]}.yaml")
    return files


# Deliberately written twice, with why. trainer.precision: trainer=gpu trains in bf16 on any budget, and budget=full is
# the paper recipe in bf16 on any trainer (trainer=ddp, trainer=default on a GPU); neither file can lean on the other.
BOTH_MEAN_IT = {("trainer.precision", "trainer/gpu.yaml", "budget/full.yaml")}


def problems(files: list[tuple[Path, str]], root: Path = CONFIG_DIR) -> list[str]:
    """Keys set twice to the same value, and data keys a budget replaces (file paths relative to ``root``)."""
    set_by: dict[str, tuple[Path, Any]] = {}
    found = []
    for path, package in files:
        values = _flat(_yaml(path)[1], f"{package}." if package else "")
        name = path.relative_to(root)
        for key, value in values.items():
            if key in set_by:
                earlier_name, before = set_by[key]
                if before == value and (key, str(earlier_name), str(name)) not in BOTH_MEAN_IT:
                    found.append(f"{key} = {value!r} in {earlier_name} and again in {name}")
                elif earlier_name.parts[0] == "data" and name.parts[0] == "budget" and name.stem != "smoke":
                    found.append(f"{key}: budget {name} silently replaces {earlier_name}'s {before!r} with {value!r}")
            set_by[key] = (name, value)
    return found


# Every experiment with every option of the groups a command line picks (budget, data, route, trainer): each file of
# the tree meets each file it can be merged with.
VARIED = ("budget", "data", "route", "trainer")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_composition_sets_each_key_once() -> None:
    found: set[str] = set()
    combinations = list(itertools.product(*(_options(group) for group in VARIED)))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        for index, exp in enumerate(experiment_names()):
            # The exp file's own group choices (model) from Hydra; the command line's choices of the varied groups win
            # over any default, as they do in a run (checked against Hydra on one combination per exp).
            exp_choices = dict(compose("config", overrides=[f"exp={exp}"], return_hydra_config=True).hydra.runtime.choices)
            picked = dict(zip(VARIED, combinations[index * 7 % len(combinations)]))
            hydra_choices = compose("config", overrides=[f"exp={exp}", *(f"{g}={o}" for g, o in picked.items())],
                                    return_hydra_config=True).hydra.runtime.choices
            assert {**exp_choices, **picked} == dict(hydra_choices)
            for options in combinations:
                found.update(problems(composition({**exp_choices, **dict(zip(VARIED, options))})))
        for exp in ("ddpm_class", "hybrid"):  # every training recipe on the diffusion core, on HAM10000's quick budget
            exp_choices = dict(compose("config", overrides=[f"exp={exp}"], return_hydra_config=True).hydra.runtime.choices)
            for recipe in recipe_names():
                found.update(problems(composition({**exp_choices, "budget": "quick", "data": "ham10000", "recipe": recipe})))
    assert not found, "settings written twice:\n" + "\n".join(sorted(found))


def test_the_check_sees_a_repeated_value_and_a_budget_overriding_data(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "budget").mkdir()
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "data" / "mine.yaml").write_text("split_seed: 0\nnum_workers: 2\n")
    repeat = tmp_path / "budget" / "repeat.yaml"
    repeat.write_text("# @package _global_\nseed: 0\n")
    override = tmp_path / "budget" / "quick.yaml"
    override.write_text("# @package _global_\ndata:\n  split_seed: 7\n")
    smoke = tmp_path / "budget" / "smoke.yaml"
    smoke.write_text("# @package _global_\ndata:\n  num_workers: 0\n")
    config, data = (tmp_path / "config.yaml", ""), (tmp_path / "data" / "mine.yaml", "data")
    assert problems([config, (repeat, "")], tmp_path) == ["seed = 0 in config.yaml and again in budget/repeat.yaml"]
    assert problems([config, data, (override, "")], tmp_path) == [
        "data.split_seed: budget budget/quick.yaml silently replaces data/mine.yaml's 0 with 7"]
    assert problems([config, data, (smoke, "")], tmp_path) == []
