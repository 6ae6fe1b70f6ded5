"""Stages 1 and 2 of the protocol: draw the samples, then read each one (features, judge logits, thumbnails).

Generation is split across DDP ranks in fixed chunks whose seeds depend on the chunk only, so the
union of samples is the same for any number of ranks. The evaluation's sampler settings
(``SamplingSettings``) are passed to ``generate``, never set on the model. Each rank reads the
samples it drew; the readings are gathered to every rank and put back in global sample order, so
the set-level figures are the same for any number of ranks.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from evaluation.data import take
from evaluation.distributed import gather_rows, rank_and_world
from evaluation.features import extract
from evaluation.resources import EvalResources
from models.generative import SamplingSettings


HOLDOUTS = ("paraphrase", "combo")


def is_conditional(model: Any) -> bool:
    return getattr(model, "conditioning", "none") != "none"


def eval_conditions(datamodule: Any, num: int, seed: int, split: str, holdout: str | None = None) -> dict[str, Any]:
    """``num`` prompts: the data's prompt distribution on ``split``'s rows, or a held-out prompt set.

    Raises ValueError when the data has no held-out prompts of that kind (the caller reports null).
    """
    parameters = inspect.signature(datamodule.sample_conditions).parameters
    if "split" not in parameters:  # a data module without per-split prompts or held-out sets
        if holdout is not None:
            raise ValueError("the data module offers no held-out prompts (sample_conditions has no 'holdout')")
        return datamodule.sample_conditions(num, seed=seed)
    return datamodule.sample_conditions(num, seed, split=split, holdout=holdout)


@torch.no_grad()
def generate_shard(
    model: Any, conditions: dict[str, Any] | None, num_images: int, batch_size: int, seed: int,
    sampling: SamplingSettings | None = None, progress: bool = False,
) -> tuple[Tensor, Tensor, float]:
    """This rank's share of the samples: images (on CPU), their global indices, seconds spent generating.

    Chunk c (rows c*batch_size ...) is drawn by rank c % world with seed ``seed * 1_000_003 + c``.
    """
    rank, world = rank_and_world()
    chunks = [c for c in range(math.ceil(num_images / batch_size)) if c % world == rank]
    images, indices, seconds = [], [], 0.0
    for chunk in tqdm(chunks, desc=f"generate (seed {seed})", disable=not progress, leave=False):
        rows = list(range(chunk * batch_size, min(num_images, (chunk + 1) * batch_size)))
        generator = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
        start = time.perf_counter()
        batch = model.generate(take(conditions, rows) if conditions is not None else None, len(rows), generator=generator, sampling=sampling)
        if batch.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        images.append(batch.float().clamp(-1, 1).cpu())
        indices.append(torch.tensor(rows))
    if not images:
        return torch.empty(0, 3, model.image_size, model.image_size), torch.empty(0, dtype=torch.long), 0.0
    return torch.cat(images), torch.cat(indices), seconds


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
