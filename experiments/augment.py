"""Downstream benchmark: a classifier trained on real, real + synthetic, and synthetic-only data.

    python -m experiments.augment gen_ckpt=runs/hybrid/<run>/checkpoints/last.ckpt
    python -m experiments.augment gen_ckpt=PATH real_fraction=[0.1,1.0] seeds=[0,1,2] num_synthetic=2000 data.root=/path

The data come from the generator's own run config (the same source and training split it learned
from); ``data.*`` and ``eval.*`` overrides apply on top. Writes ``downstream.json`` (every run and
the mean ± std of the deltas over seeds; default: the generator's run folder, where
``experiments.report`` finds it) and prints its summary as one JSON object on the last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from evaluation.data import cache_root
from evaluation.downstream import run_benchmark, synthetic_dataset
from evaluation.judge import load_or_train_judge
from experiments.evaluate import compose_run_config
from models.checkpoint import load_generator, read_checkpoint

OWN_KEYS = {"gen_ckpt": None, "out": None, "num_synthetic": "num_synthetic", "real_fraction": "real_fractions", "seeds": "seeds", "epochs": "epochs"}


def augment(argv: list[str]) -> dict[str, Any]:
    own = {a.partition("=")[0]: a.partition("=")[2] for a in argv if a.partition("=")[0] in OWN_KEYS}
    overrides = [a for a in argv if a.partition("=")[0] not in OWN_KEYS]
    if "gen_ckpt" not in own:
        raise SystemExit("usage: python -m experiments.augment gen_ckpt=PATH [real_fraction=[0.1,1.0]] [seeds=[0,1,2]] [num_synthetic=N] [out=DIR]")
    cfg = compose_run_config(read_checkpoint(own["gen_ckpt"]).get("dermsynth_config"), overrides)
    settings = cfg.eval.downstream
    for key, target in OWN_KEYS.items():
        if target and key in own:
            value = OmegaConf.from_dotlist([f"v={own[key]}"]).v
            settings[target] = list(value) if target in ("real_fractions", "seeds") and OmegaConf.is_list(value) else ([value] if target in ("real_fractions", "seeds") else value)

    model = load_generator(own["gen_ckpt"], map_location="cuda" if torch.cuda.is_available() else "cpu")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    if datamodule.info.to_dict() != model.data_info.to_dict():
        raise ValueError("the data config does not match the generator's training data (DataInfo differs); the benchmark needs the same split")
    judge = load_or_train_judge(datamodule, cfg.eval.judge, cache_root(cfg.eval), progress=True) if model.conditioning == "none" else None
    synthetic, label_source = synthetic_dataset(model, datamodule, int(settings.num_synthetic), int(cfg.get("seed", 0)), int(cfg.eval.batch_size), judge, progress=True)
    results = run_benchmark(datamodule, synthetic, settings, progress=False)
    results.update(gen_ckpt=str(Path(own["gen_ckpt"]).resolve()), exp=cfg.get("exp_name"), data=cfg.data.get("source"),
                   synthetic_labels=label_source, settings=OmegaConf.to_container(settings, resolve=True))
    out = Path(own.get("out") or Path(own["gen_ckpt"]).resolve().parent.parent)
    out.mkdir(parents=True, exist_ok=True)
    (out / "downstream.json").write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    results = augment(sys.argv[1:])
    print(json.dumps({"exp": results["exp"], "synthetic_labels": results["synthetic_labels"], **results["summary"]}), flush=True)


if __name__ == "__main__":
    main()
