"""``judge`` suite: which judge recipe sees the data best, chosen on the validation split.

    python -m experiments.bench judge                                  # phantom, the quick budget's data
    python -m experiments.bench judge overrides="data=ham10000 data.root=DIR"
    python -m experiments.bench judge recipes="scratch:arch=test_resnet;lite0:arch=efficientnet_lite0,pretrained=true,input_size=64,epochs=3"

Each recipe (``name:key=value,...`` over ``eval.judge``; recipes separated by ``;``) trains a judge on
the training split. The validation images are cut in two disjoint halves (a seeded permutation): on the
*selection* half each recipe's accuracy and balanced accuracy (mean recall over the values a head
takes) per head are compared with always answering the majority value, and the recipe with the best
mean balanced accuracy over the visual heads (``eval.non_visual_heads`` excluded) is chosen: plain
accuracy would favour a judge that leans to the majority class (nv is two thirds of HAM10000). The
chosen recipe's figures on the *ceiling* half, which the choice never saw, are what it can be trusted
to read; put it in ``eval.judge``. The test split is never read. Training runs are not cached (the
timing is part of the result).

Keys:
- ``judge.recipes`` {name: {"settings", "val_accuracy" {head: [acc, low, high]}, "val_balanced_accuracy"
  {head: value}, "majority" {head: rate}, "mean_visual", "mean_visual_balanced", "sees" [heads whose
  accuracy interval's lower bound is above the majority rate], "train_s"}}: on the selection half.
- ``judge.chosen``: the recipe with the best ``mean_visual_balanced``; ``judge.ceiling``: its figures on
  the ceiling half (the same keys).

Options (configs/bench.yaml ``judge:``): ``recipes``, ``max_train_images``, ``num_val``, sizes, ``overrides``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict
from torch import Tensor

from evaluation.bootstrap import wilson_interval
from evaluation.conditioning import majority_rate, readable
from evaluation.data import collect, take
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


def halves(count: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Two disjoint halves of ``range(count)`` (a seeded permutation): selection, ceiling."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[: count // 2]), sorted(order[count // 2 :])


def balanced_accuracy(predicted: Tensor, target: Tensor) -> float | None:
    """Mean recall over the values ``target`` takes (unknown targets, -1, left out)."""
    known = target >= 0
    recalls = [float((predicted[known & (target == value)] == value).float().mean()) for value in target[known].unique()]
    return sum(recalls) / len(recalls) if recalls else None


def read_images(model: Any, images: dict[str, Any], non_visual: set[str]) -> dict[str, Any]:
    """A trained judge's accuracy (Wilson interval) and balanced accuracy per head on ``images``."""
    targets = batch_targets(images, model.heads)
    logits = model.predict_logits(images["image"])
    accuracy, balanced, majority, sees = {}, {}, {}, []
    for head, target in targets.items():
        known = target >= 0
        predicted = logits[head].argmax(1)
        hits, total = int((predicted[known] == target[known]).sum()), int(known.sum())
        interval = wilson_interval(hits, total, 0.95)
        name = readable(head)
        accuracy[name] = [hits / total if total else None, *(interval or [None, None])]
        balanced[name] = balanced_accuracy(predicted, target)
        majority[name] = majority_rate(target)
        if interval is not None and majority[name] is not None and interval[0] > majority[name]:
            sees.append(name)

    def mean_visual(values: dict[str, float | None]) -> float | None:
        visual = [v for k, v in values.items() if k not in non_visual and v is not None]
        return sum(visual) / len(visual) if visual else None

    return {
        "val_accuracy": accuracy, "val_balanced_accuracy": balanced, "majority": majority, "sees": sees,
        "mean_visual": mean_visual({k: v[0] for k, v in accuracy.items()}), "mean_visual_balanced": mean_visual(balanced),
        "num_images": int(images["image"].shape[0]),
    }


def choose(results: dict[str, dict[str, Any]]) -> str | None:
    """The recipe with the best mean balanced accuracy over the visual heads (on the selection half)."""
    ranked = sorted((r["mean_visual_balanced"], name) for name, r in results.items() if r["mean_visual_balanced"] is not None)
    return ranked[-1][1] if ranked else None


def suite(options: dict[str, str]) -> dict[str, Any]:
    cfg = compose_run_config("ddpm", options["budget"], [*size_overrides(options), *hydra_overrides(options)])
    datamodule = build_datamodule(cfg.data)
    validation = collect(datamodule.val_set, int(options["num_val"]) if options["num_val"] else None, seed=0)
    selection_rows, ceiling_rows = halves(int(validation["image"].shape[0]))
    selection, ceiling = take(validation, selection_rows), take(validation, ceiling_rows)
    non_visual = set(cfg.eval.non_visual_heads)
    results, models = {}, {}
    for name, settings in parse_recipes(options["recipes"]).items():
        judge_cfg = cfg.eval.judge.copy()
        with open_dict(judge_cfg):
            judge_cfg.merge_with(settings)
            if options["max_train_images"]:
                judge_cfg.max_train_images = int(options["max_train_images"])
        log.info("judge: training recipe %s (%s)", name, dict(settings))
        start = time.perf_counter()
        models[name] = train_judge(datamodule, judge_cfg, progress=False)
        results[name] = {
            "settings": {k: judge_cfg[k] for k in ("arch", "pretrained", "input_size", "epochs", "lr", "max_train_images")},
            **read_images(models[name], selection, non_visual), "train_s": round(time.perf_counter() - start, 3),
        }
    chosen = choose(results)
    return {
        "judge.recipes": results,
        "judge.chosen": chosen,
        "judge.ceiling": None if chosen is None else read_images(models[chosen], ceiling, non_visual),
        "judge.settings": {"options": dict(options), "split": "val", "num_val": int(validation["image"].shape[0]),
                           "selection": "half of the validation images (seeded permutation) choose the recipe by mean balanced "
                                        "accuracy over the visual heads; the other half gives the chosen recipe's ceiling",
                           "data": cfg.data.source, "image_size": int(cfg.data.image_size)},
    }
