"""``eval`` suite: does the evaluation cache remove the real-set cost on the second run?

    python -m experiments.bench eval                      # 1000 images, quick-budget evaluation
    python -m experiments.bench eval eval.num_images=200 eval.judge_epochs=3

The evaluation's fixed costs are real-set work: training the domain judge and extracting the
features of the real evaluation and floor subsets and the training split (memorization). Both are cached under
``eval.cache_dir``. The suite runs the project's own protocol
(``evaluation.protocol.evaluate_generator``) twice on the same ``num_images`` "generated" images
with a fresh, empty cache folder: cold, then warm. The images are phantom training images with
Gaussian noise (std ``noise_std``), replayed by a stand-in generator, so generation costs nothing
and the two runs differ only in what the cache holds. Features are the domain judge's.

Keys:
- ``eval.cold_s`` / ``eval.warm_s``: wall seconds of each run.
- ``eval.cached_over_uncached``: warm / cold.
- ``eval.real_set_work`` {"cold": .., "warm": ..}: judge trainings and real-set feature passes
  counted in each run (by wrapping the protocol's feature extraction and the judge's training
  function while the suite runs). Target: none in the warm run.
- ``eval.warm_new_cache_files``: cache files the warm run created or rewrote (expected: none).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict

import evaluation.judge
import evaluation.resources
from datamodules.info import DataInfo
from evaluation.data import collect
from evaluation.protocol import evaluate_generator
from experiments.bench_suites.common import build_datamodule, compose_run_config, hydra_overrides, log, ratio, size_overrides
from models.generative import Conditions, GenerativeModule, SamplingSettings



class ReplayGenerator(GenerativeModule):
    """Stands in for a trained model: returns stored images in order, one call after another."""

    def __init__(self, data_info: DataInfo, images: torch.Tensor) -> None:
        super().__init__(data_info)
        self.register_buffer("images", images)
        self.cursor = 0

    @torch.no_grad()
    def generate(self, conditions: Conditions | None, num_images: int, *, generator: torch.Generator | None = None,
                 progress: bool = False, sampling: SamplingSettings | None = None) -> torch.Tensor:
        rows = self.images[self.cursor : self.cursor + num_images]
        self.cursor += num_images
        return rows


@contextlib.contextmanager
def count_real_set_work() -> Iterator[Counter]:
    """Count judge trainings and real-set feature passes of the protocol while the block runs."""
    counts: Counter = Counter(judge_trainings=0, real_feature_passes=0)
    extract, train_classifier = evaluation.resources.extract, evaluation.judge.train_classifier

    def counted_extract(*args: Any, **kwargs: Any) -> Any:
        counts["real_feature_passes"] += 1  # the set-up's extraction is real-set work only
        return extract(*args, **kwargs)

    def counted_training(*args: Any, **kwargs: Any) -> Any:
        counts["judge_trainings"] += 1
        return train_classifier(*args, **kwargs)

    evaluation.resources.extract, evaluation.judge.train_classifier = counted_extract, counted_training
    try:
        yield counts
    finally:
        evaluation.resources.extract, evaluation.judge.train_classifier = extract, train_classifier


def cache_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def suite(options: dict[str, str]) -> dict[str, Any]:
    num_images = int(options["num_images"])
    cfg = compose_run_config("ddpm", options["budget"], [*size_overrides(options), *hydra_overrides(options)])
    datamodule = build_datamodule(cfg.data)
    train = collect(datamodule.train_set, None, seed=0)["image"]
    rows = torch.arange(num_images) % train.shape[0]
    noise = torch.randn((num_images, *train.shape[1:]), generator=torch.Generator().manual_seed(0))
    fakes = (train[rows] + float(options["noise_std"]) * noise).clamp(-1, 1)
    times: dict[str, float] = {}
    work: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="dermsynth-bench-eval-") as temp:
        eval_cfg = cfg.eval.copy()
        with open_dict(eval_cfg):
            eval_cfg.cache_dir, eval_cfg.feature_extractor = str(Path(temp) / "cache"), "domain"
            eval_cfg.num_generated = num_images
            if options["num_real"]:
                eval_cfg.num_real = int(options["num_real"])
            if options["judge_epochs"]:
                eval_cfg.judge.epochs = int(options["judge_epochs"])
        for run in ("cold", "warm"):
            before = cache_files(Path(eval_cfg.cache_dir)) if run == "warm" else {}
            log.info("eval: %s run on %d images", run, num_images)
            model = ReplayGenerator(datamodule.info, fakes)
            with count_real_set_work() as counts:
                start = time.perf_counter()
                metrics = evaluate_generator(model, datamodule, eval_cfg, Path(temp) / run)
                times[run] = time.perf_counter() - start
            work[run] = dict(counts)
        after = cache_files(Path(eval_cfg.cache_dir))
        rewritten = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
    return {
        "eval.cold_s": round(times["cold"], 2),
        "eval.warm_s": round(times["warm"], 2),
        "eval.cached_over_uncached": ratio(times["warm"], times["cold"]),
        "eval.real_set_work": work,
        "eval.warm_real_set_passes": work["warm"]["judge_trainings"] + work["warm"]["real_feature_passes"],
        "eval.warm_new_cache_files": rewritten,
        "eval.settings": {
            "options": dict(options),
            "num_generated": num_images,
            "num_real": metrics["num_real"],
            "image_size": int(fakes.shape[-1]),
            "feature_extractor": metrics["feature_extractor"],
            "judge": {k: eval_cfg.judge[k] for k in ("arch", "epochs", "max_train_images")},
            "memorization_reference": "whole training split",
            "threads": torch.get_num_threads(),
            "images": f"phantom training images + N(0, {options['noise_std']}^2) noise, replayed (no generation cost)",
        },
    }
