"""The generators of the downstream benchmark, one per kind and real fraction, that saw only that fraction.

``train_generators=true`` trains each (``experiments.run.run``) with the command's data, budget and
run overrides plus ``data.train_fraction=<fraction>``, in ``<out>/generators/<exp>_f<fraction>/``; a
finished folder is reused and an interrupted one resumes. ``train_generators=false`` takes
``generators.<kind>.checkpoints[<fraction>]``. Either way the generator's data fingerprint must equal
the fingerprint of the arm's real subset: a generator trained on more images (a larger fraction, the
whole split) would let the scarce arm peek at data it should not have, and one trained on other data
is another experiment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from evaluation.provenance import file_hash
from experiments.compose import compose_config, parse_overrides
from models.checkpoint import check_targets, read_checkpoint, stored_config
from models.generative import SamplingSettings

log = logging.getLogger(__name__)
KINDS = ("syn", "syn_class")


def run_overrides(overrides: list[str], own_keys: set[str]) -> list[str]:
    """The command-line overrides that configure a run (data, budget, trainer, eval, seed ...), not the command itself."""
    parsed = parse_overrides(overrides)
    return [o.input_line for o in parsed if o.key_or_group.split(".")[0] not in own_keys and not o.key_or_group.startswith("hydra")]


def generator_spec(cfg: DictConfig, kind: str, fraction: float, forwarded: list[str]) -> dict[str, Any]:
    """What makes a generator (for the cells' keys): the recipe when trained here, the file's hash when given."""
    if cfg.train_generators:
        settings = [o for o in forwarded if o.split("=")[0] != "data" and not o.startswith("data.")]  # data: its fingerprint
        return {"exp": cfg.generators[kind].exp, "steps": cfg.generators.steps, "overrides": [*cfg.generators.overrides, *settings]}
    path = given_checkpoint(cfg, kind, fraction)
    return {"checkpoint": str(path), "sha1": file_hash(path)}


def given_checkpoint(cfg: DictConfig, kind: str, fraction: float) -> Path:
    """``generators.<kind>.checkpoints[fraction]``, with an error naming the key when missing."""
    table = cfg.generators[kind].checkpoints or {}
    match = [path for key, path in table.items() if abs(float(key) - fraction) < 1e-9]
    if not match:
        raise ValueError(
            f"train_generators=false needs generators.{kind}.checkpoints[{fraction}] (a checkpoint trained with "
            f"data.train_fraction={fraction}); given fractions: {sorted(float(k) for k in table)}"
        )
    return Path(str(match[0])).expanduser()


def generator_run_config(cfg: DictConfig, kind: str, fraction: float, forwarded: list[str], folder: Path) -> DictConfig:
    """The run config ``python -m experiments.run`` would compose for this generator."""
    steps = cfg.generators.steps
    overrides = [
        f"exp={cfg.generators[kind].exp}", *cfg.generators.overrides, *forwarded,
        f"data.train_fraction={fraction}", f"paths.output_dir={folder}", *([f"trainer.max_steps={int(steps)}"] if steps else []),
        "overwrite=true",  # the folder is this command's: a generator stopped before its first checkpoint starts again
    ]
    return compose_config("config", overrides)


def trained_checkpoint(cfg: DictConfig, kind: str, fraction: float, forwarded: list[str], out: Path) -> Path:
    """Train the generator of ``kind`` on ``fraction`` (or reuse its finished run folder); its last.ckpt."""
    from experiments.run import run

    folder = out / "generators" / f"{cfg.generators[kind].exp}_f{fraction:g}"
    run_cfg = generator_run_config(cfg, kind, fraction, forwarded, folder)
    last = folder / "checkpoints" / "last.ckpt"
    if (folder / "metrics.json").is_file() and last.is_file():
        step = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        if step == run_cfg.trainer.max_steps:
            log.info("Reusing the generator trained in %s", folder)
            return last
    log.info("Training %s on real_fraction=%g in %s", cfg.generators[kind].exp, fraction, folder)
    run(run_cfg)
    return last


def check_generator_data(path: Path, fingerprint: str, fraction: float) -> None:
    """Refuse a generator whose training data are not exactly the arm's real subset (its data fingerprint)."""
    checkpoint = read_checkpoint(path)
    stored = stored_config(checkpoint, path)
    check_targets(stored.get("data"), "data", f"{path}: dermsynth_config.data")
    seen = (checkpoint.get("data_info") or {}).get("fingerprint")
    if seen == fingerprint:
        return
    trained_on = float((stored.get("data") or {}).get("train_fraction", 1.0))
    how = (f"it saw more training images (data.train_fraction={trained_on:g})" if trained_on > fraction
           else f"its data differ (data.train_fraction={trained_on:g}, source {stored['data'].get('source')!r})")
    raise ValueError(
        f"{path}: the generator was trained on data fingerprint {seen}, but the real subset of real_fraction={fraction:g} "
        f"has fingerprint {fingerprint}; {how}. A generator of a scarce arm may see only that arm's real images: "
        f"train it with data.train_fraction={fraction:g} and the same data settings, or use train_generators=true"
    )


def generator_checkpoint(cfg: DictConfig, kind: str, fraction: float, fingerprint: str, forwarded: list[str], out: Path) -> Path:
    """The checkpoint of the ``kind`` generator for ``fraction``, trained or given, checked against the arm's data."""
    path = trained_checkpoint(cfg, kind, fraction, forwarded, out) if cfg.train_generators else given_checkpoint(cfg, kind, fraction)
    check_generator_data(path, fingerprint, fraction)
    return path


def sampling_settings(cfg: DictConfig) -> SamplingSettings:
    """``generators.sampling`` as ``SamplingSettings`` (a null field keeps the model's configured value)."""
    return SamplingSettings(**OmegaConf.to_container(cfg.generators.sampling, resolve=True))
