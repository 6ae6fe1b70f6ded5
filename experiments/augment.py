"""Downstream benchmark: a classifier trained on real, real + synthetic, and synthetic-only data.

    python -m experiments.augment gen_ckpt=runs/hybrid/<run>/checkpoints/last.ckpt
    python -m experiments.augment gen_ckpt=PATH real_fraction=[0.1,1.0] seeds=[0,1,2] num_synthetic=2000 data.root=/path

The data come from the generator's own run config (the same source and training split it learned
from); ``data.*`` and ``eval.*`` overrides apply on top (settings: configs/augment.yaml). Writes
``downstream.json`` (every run and the mean ± std of the deltas over seeds; default: the
generator's run folder, where ``experiments.report`` finds it) and prints its summary as one JSON
object on the last line.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.atomic import write_text_atomic
from evaluation.data import cache_root
from evaluation.downstream import run_benchmark, synthetic_dataset
from evaluation.judge import load_or_train_judge
from experiments.command import command, task_overrides
from experiments.compose import checkpoint_config, with_checkpoint_data
from models.checkpoint import build_stored_datamodule, load_generator, read_checkpoint, stored_config

OWN_KEYS = ("gen_ckpt", "out", "num_synthetic", "real_fraction", "seeds", "epochs")  # configs/augment.yaml's own
# Shortcuts for eval.downstream settings: command-line key -> downstream key.
SHORTCUTS = {"num_synthetic": "num_synthetic", "real_fraction": "real_fractions", "seeds": "seeds", "epochs": "epochs"}


def augment(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """The command (``cfg`` composed from configs/augment.yaml); ``overrides`` as for ``evaluate``."""
    overrides = task_overrides() if overrides is None else list(overrides)
    run_cfg = checkpoint_config(stored_config(read_checkpoint(cfg.gen_ckpt), cfg.gen_ckpt), overrides, "augment", OWN_KEYS)
    settings = run_cfg.eval.downstream
    for key, target in SHORTCUTS.items():
        if cfg[key] is not None:
            value = cfg[key]
            settings[target] = list(value) if OmegaConf.is_list(value) else ([value] if target in ("real_fractions", "seeds") else value)

    model = load_generator(cfg.gen_ckpt, map_location="cuda" if torch.cuda.is_available() else "cpu")
    datamodule = build_stored_datamodule(run_cfg.data, f"{cfg.gen_ckpt}: dermsynth_config.data")
    if datamodule.info.to_dict() != model.data_info.to_dict():
        raise ValueError("the data config does not match the generator's training data (DataInfo differs); the benchmark needs the same split")
    judge = load_or_train_judge(datamodule, run_cfg.eval.judge, cache_root(run_cfg.eval), progress=True) if model.conditioning == "none" else None
    synthetic, label_source = synthetic_dataset(model, datamodule, int(settings.num_synthetic), int(run_cfg.get("seed", 0)), int(run_cfg.eval.batch_size), judge, progress=True)
    results = run_benchmark(datamodule, synthetic, settings, progress=False)
    results.update(gen_ckpt=str(Path(cfg.gen_ckpt).resolve()), exp=run_cfg.get("exp_name"), data=run_cfg.data.get("source"),
                   synthetic_labels=label_source, settings=OmegaConf.to_container(settings, resolve=True))
    out = Path(cfg.out or Path(cfg.gen_ckpt).resolve().parent.parent)
    write_text_atomic(out / "downstream.json", json.dumps(results, indent=1))
    return results


@command("augment", prepare=functools.partial(with_checkpoint_data, ckpt_key="gen_ckpt"))
def main(cfg: DictConfig) -> None:
    results = augment(cfg)
    print(json.dumps({"exp": results["exp"], "synthetic_labels": results["synthetic_labels"], **results["summary"]}), flush=True)


if __name__ == "__main__":
    main()
