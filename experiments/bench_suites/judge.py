"""``judge`` suite: which judge recipe sees the data best, chosen on the validation split.

    python -m experiments.bench judge                                  # phantom, the quick budget's data
    python -m experiments.bench judge overrides="data=ham10000 data.root=DIR"
    python -m experiments.bench judge recipes="scratch:arch=test_resnet;lite0:arch=efficientnet_lite0,pretrained=true,input_size=64,epochs=3"

Each recipe (``name:key=value,...`` over ``eval.judge``; recipes separated by ``;``) trains a judge on
the training split; its accuracy per head on real validation images (Wilson interval) is compared
with always answering the majority value. The recipe with the best mean accuracy over the visual
heads (``eval.non_visual_heads`` excluded) is chosen; put it in ``eval.judge``. The test split is
never read. Training runs are not cached (the timing is part of the result).

Keys:
- ``judge.recipes`` {name: {"settings", "val_accuracy" {head: [acc, low, high]}, "majority" {head: rate},
  "mean_visual", "sees" [heads whose interval's lower bound is above the majority rate], "train_s"}}.
- ``judge.chosen``: the recipe name with the best ``mean_visual``.

Options (configs/bench.yaml ``judge:``): ``recipes``, ``max_train_images``, ``num_val``, sizes, ``overrides``.
"""

from __future__ import annotations

import time
from typing import Any

from omegaconf import OmegaConf, open_dict

from evaluation.bootstrap import wilson_interval
from evaluation.conditioning import majority_rate, readable
from evaluation.data import collect
from evaluation.judge import train_judge
from experiments.bench_suites.common import build_datamodule, compose_run_config, hydra_overrides, log, size_overrides
from models.classifier import batch_targets


def parse_recipes(text: str) -> dict[str, dict[str, Any]]:
    """``name:key=value,key=value;name2:...`` -> {name: {key: value}} (values parsed as YAML)."""
    recipes = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, settings = part.partition(":")
        if not name or not settings:
            raise ValueError(f"bench judge: recipe {part!r} is not name:key=value,...")
        recipes[name] = OmegaConf.to_container(OmegaConf.from_dotlist(settings.split(",")))
    if not recipes:
        raise ValueError("bench judge: no recipes")
    return recipes


def score_recipe(datamodule: Any, judge_cfg: Any, validation: dict[str, Any], non_visual: set[str]) -> dict[str, Any]:
    """Train one recipe and read the validation images with it."""
    start = time.perf_counter()
    model = train_judge(datamodule, judge_cfg, progress=False)
    seconds = time.perf_counter() - start
    targets = batch_targets(validation, model.heads)
    logits = model.predict_logits(validation["image"])
    accuracy, majority, sees = {}, {}, []
    for head, target in targets.items():
        known = target >= 0
        hits, total = int((logits[head].argmax(1)[known] == target[known]).sum()), int(known.sum())
        interval = wilson_interval(hits, total, 0.95)
        name = readable(head)
        accuracy[name] = [hits / total if total else None, *(interval or [None, None])]
        majority[name] = majority_rate(target)
        if interval is not None and majority[name] is not None and interval[0] > majority[name]:
            sees.append(name)
    visual = [v[0] for k, v in accuracy.items() if k not in non_visual and v[0] is not None]
    return {
        "settings": {k: judge_cfg[k] for k in ("arch", "pretrained", "input_size", "epochs", "lr", "max_train_images")},
        "val_accuracy": accuracy, "majority": majority, "sees": sees,
        "mean_visual": sum(visual) / len(visual) if visual else None, "train_s": round(seconds, 3),
    }


def suite(options: dict[str, str]) -> dict[str, Any]:
    cfg = compose_run_config("ddpm", options["budget"], [*size_overrides(options), *hydra_overrides(options)])
    datamodule = build_datamodule(cfg.data)
    validation = collect(datamodule.val_set, int(options["num_val"]) if options["num_val"] else None, seed=0)
    results = {}
    for name, settings in parse_recipes(options["recipes"]).items():
        judge_cfg = cfg.eval.judge.copy()
        with open_dict(judge_cfg):
            judge_cfg.merge_with(settings)
            if options["max_train_images"]:
                judge_cfg.max_train_images = int(options["max_train_images"])
        log.info("judge: training recipe %s (%s)", name, dict(settings))
        results[name] = score_recipe(datamodule, judge_cfg, validation, set(cfg.eval.non_visual_heads))
    ranked = sorted((r["mean_visual"], name) for name, r in results.items() if r["mean_visual"] is not None)
    return {
        "judge.recipes": results,
        "judge.chosen": ranked[-1][1] if ranked else None,
        "judge.settings": {"options": dict(options), "split": "val", "num_val": int(validation["image"].shape[0]),
                           "data": cfg.data.source, "image_size": int(cfg.data.image_size)},
    }
