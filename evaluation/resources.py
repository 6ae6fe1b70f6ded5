"""The evaluation's set-up: the judge, the feature extractors and the real images with their features.

This is real-set work, the same for every model on the same data: it is cached on disk (judges by
their key, features by data fingerprint, split, subset and extractor) and runs once per run,
before training starts (``callbacks.evaluate.Evaluate.setup``), so neither ``val/fd`` nor the
training clock pays for it. Its timing goes to ``provenance.setup`` in metrics.json.

The real set is a fixed (seed 0) subset of the evaluation split (``eval.split``: ``val`` for
development and tuning, ``test`` for final tables). The floor's set is a fixed subset of the training
split (un-augmented) with as many images as each generated set, scored against that same real set:
real-vs-real at the same n as the model's figure (FD and KID depend on n), what a generator that
draws exactly from the training distribution would score, and it never reads the other held-out
split (a validation figure's floor must not touch the test images). Where the training split is
smaller than a generated set, the floor's n is smaller and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from evaluation.data import cache_root, collect, split_hash, unaugmented
from evaluation.distributed import rank_and_world, rank_zero_first
from evaluation.features import DomainFeatures, FeatureExtractor, build_feature_extractor, extract
from evaluation.fid import RealFeatureCache
from evaluation.judge import Judge, load_or_train_judge

SPLITS = ("val", "test")
FLOOR_SPLIT = "train"


@dataclass
class RealSet:
    """Stacked real images of one split (``batch``: image, label, attributes, skin_tone, caption), their
    features per extractor and the judge's logits per head (the judge's ceiling)."""

    split: str
    batch: dict[str, Any]
    features: dict[str, Tensor] = field(default_factory=dict)
    judge_logits: dict[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.batch["image"].shape[0])


@dataclass
class EvalResources:
    """What every evaluation on one data set shares.

    ``primary`` computes ``fid``/KID/precision/recall (``eval.feature_extractor``); ``domain`` is the
    judge's feature space (``fd_domain``, memorization). They are the same object under ``domain``.
    """

    split: str
    judge: Judge
    primary: FeatureExtractor
    domain: FeatureExtractor
    real: RealSet
    floor: RealSet | None
    timing: dict[str, Any]

    @property
    def extractors(self) -> list[FeatureExtractor]:
        return [self.primary] if self.primary is self.domain else [self.primary, self.domain]


def split_dataset(datamodule: Any, split: str) -> Any:
    if split not in SPLITS:
        raise ValueError(f"eval.split must be one of {', '.join(SPLITS)}, got {split!r}")
    dataset = getattr(datamodule, f"{split}_set", None)
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"the data has no {split} split to evaluate on")
    return dataset


def real_features(extractor: FeatureExtractor, datamodule: Any, split: str, images: Tensor, eval_cfg: Any, progress: bool) -> tuple[Tensor, bool]:
    """Features of real ``images`` of a split (from the cache when computed before) and whether they were cached."""
    info = datamodule.info
    dataset = datamodule.train_set if split == FLOOR_SPLIT else split_dataset(datamodule, split)
    key = RealFeatureCache.key(
        data=info.fingerprint or info.to_dict(), split=split, members=split_hash(dataset),
        num=int(images.shape[0]), size=info.image_size, extractor=extractor.provenance(),
    )
    cache = RealFeatureCache(cache_root(eval_cfg))
    stored = cache.load(key)
    if stored is not None:
        return stored["features"], True
    features = extract(extractor, images, int(eval_cfg["feature_batch_size"]), progress, desc=f"{split} features ({extractor.name})")
    if rank_and_world()[0] == 0:
        cache.save(key, {"features": features})
    return features, False


def real_set(datamodule: Any, split: str, num: int | None, extractors: list[FeatureExtractor], eval_cfg: Any, progress: bool) -> tuple[RealSet, bool]:
    """A fixed subset of a split with its features in every extractor's space; True if all came from the cache."""
    dataset = unaugmented(datamodule.train_set) if split == FLOOR_SPLIT else split_dataset(datamodule, split)
    chosen = RealSet(split, collect(dataset, num, seed=0, progress=progress))
    cached = True
    for extractor in extractors:
        chosen.features[extractor.name], hit = real_features(extractor, datamodule, split, chosen.batch["image"], eval_cfg, progress)
        cached = cached and hit
    return chosen, cached


def prepare_evaluation(datamodule: Any, eval_cfg: Any, device: str | torch.device = "cpu", progress: bool = True) -> EvalResources:
    """Train or load the judge, build the extractors, gather the real sets; time each part."""
    split = str(eval_cfg["split"])
    if any(getattr(datamodule, f"{name}_set", None) is None for name in ("train", split if split in SPLITS else "val")):
        datamodule.setup()
    split_dataset(datamodule, split)  # fail on a bad split before any work
    start = time.perf_counter()
    with rank_zero_first():  # rank 0 trains and caches the judge; the others load it
        judge = load_or_train_judge(datamodule, eval_cfg["judge"], cache_root(eval_cfg), progress=progress, device=device)
    judge_s = time.perf_counter() - start
    domain = DomainFeatures(judge)
    primary = domain if eval_cfg["feature_extractor"] == "domain" else build_feature_extractor(eval_cfg["feature_extractor"], judge, device)
    extractors = [primary] if primary is domain else [primary, domain]
    start = time.perf_counter()
    with rank_zero_first():
        real, cached = real_set(datamodule, split, eval_cfg["num_real"], extractors, eval_cfg, progress)
        real.judge_logits = judge.logits(real.batch["image"])
        floor = None
        if eval_cfg["floor"]:
            floor, floor_cached = real_set(datamodule, FLOOR_SPLIT, int(eval_cfg["num_generated"]), extractors, eval_cfg, progress)
            cached = cached and floor_cached
    timing = {
        "judge_s": round(judge_s, 2), "real_features_s": round(time.perf_counter() - start, 2),
        "real_features_cached": cached, "judge_trained_here": judge.trained_here,
    }
    return EvalResources(split, judge, primary, domain, real, floor, timing)
