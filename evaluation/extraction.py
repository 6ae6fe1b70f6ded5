"""Stage 2 of the protocol: per-sample work (features, judge logits, thumbnails), gathered in sample order.

Each rank works on the samples it drew; the results are gathered to every rank and put back in
global sample order, so the set-level figures are the same for any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.distributed import gather_rows
from evaluation.features import extract
from evaluation.resources import EvalResources
from evaluation.sampling import generate_shard
from models.generative import SamplingSettings


@dataclass
class SampleSet:
    """One evaluation seed's generated samples, reduced to what scoring needs.

    Attributes:
        seed: the sampling seed.
        conditions: the prompts the samples were drawn for (None: unconditional).
        features: extractor name -> (N, D), gathered over ranks, in sample order.
        judge_logits: judge head -> (N, K), likewise.
        thumbnails: (N, 3, t, t) images at most ``eval.memorization.thumbnail_size`` px (memorization).
        preview: the first images this rank drew, at full size (grids and the sample table; rank 0's
            are samples 0, 1, ... on one process).
        seconds: generation seconds on this rank; ``drawn``: images this rank drew.
    """

    seed: int
    conditions: dict[str, Any] | None
    features: dict[str, Tensor]
    judge_logits: dict[str, Tensor]
    thumbnails: Tensor
    preview: Tensor
    seconds: float
    drawn: int

    @property
    def size(self) -> int:
        return int(self.thumbnails.shape[0])


def thumbnails(images: Tensor, size: int) -> Tensor:
    return F.interpolate(images, size=size, mode="area") if images.shape[-1] > size else images


@torch.no_grad()
def draw_sample_set(
    model: Any, conditions: dict[str, Any] | None, num: int, seed: int, resources: EvalResources, eval_cfg: Any,
    sampling: SamplingSettings | None, progress: bool, features: bool = True,
) -> SampleSet:
    """Generate ``num`` samples for ``conditions`` with ``seed`` and reduce them (``features=False``: judge only)."""
    images, indices, seconds = generate_shard(model, conditions, num, int(eval_cfg["batch_size"]), seed, sampling, progress)
    per_sample = {"index": indices, "thumbnails": thumbnails(images, int(eval_cfg["memorization"]["thumbnail_size"]))}
    extractors = resources.extractors if features else []
    for extractor in extractors:
        per_sample[f"features/{extractor.name}"] = extract(extractor, images, int(eval_cfg["feature_batch_size"]), progress, desc="generated features")
    judge = resources.judge
    logits = judge.logits(images) if images.shape[0] else {h: torch.empty(0, n) for h, n in judge.heads.items()}
    per_sample.update({f"logits/{head}": value for head, value in logits.items()})
    gathered = {name: gather_rows(value, model.device) for name, value in per_sample.items()}
    order = gathered.pop("index").argsort()
    gathered = {name: value[order] for name, value in gathered.items()}
    return SampleSet(
        seed=seed, conditions=conditions,
        features={e.name: gathered[f"features/{e.name}"] for e in extractors},
        judge_logits={head: gathered[f"logits/{head}"] for head in judge.heads},
        thumbnails=gathered["thumbnails"], preview=images[:64], seconds=seconds, drawn=int(images.shape[0]),
    )
