"""Stage 1 of the protocol: draw the samples (prompts for a split or a held-out set, images per rank).

Generation is split across DDP ranks in fixed chunks whose seeds depend on the chunk only, so the
union of samples is the same for any number of ranks. The evaluation's sampler settings
(``SamplingSettings``) are passed to ``generate``, never set on the model.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from evaluation.data import take
from evaluation.distributed import rank_and_world

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
