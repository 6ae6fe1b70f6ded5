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

try:
    from models.generative import ReconstructionSettings, SamplingSettings
except ImportError:  # the generator contract of interfaces.md, until models.generative provides it
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class SamplingSettings:  # type: ignore[no-redef]
        sampler: str | None = None
        steps: int | None = None
        guidance_scale: float | None = None

    @dataclass(frozen=True)
    class ReconstructionSettings:  # type: ignore[no-redef]
        strength: float
        projection_steps: int


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


def _generate(model: Any, conditions: dict[str, Any] | None, count: int, generator: torch.Generator, sampling: SamplingSettings | None) -> Tensor:
    if "sampling" in inspect.signature(model.generate).parameters:
        return model.generate(conditions, count, generator=generator, sampling=sampling)
    if sampling is not None and sampling != SamplingSettings():
        raise TypeError(f"{type(model).__name__}.generate takes no sampling settings")
    return model.generate(conditions, count, generator=generator)


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
        batch = _generate(model, take(conditions, rows) if conditions is not None else None, len(rows), generator, sampling)
        if batch.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        images.append(batch.float().clamp(-1, 1).cpu())
        indices.append(torch.tensor(rows))
    if not images:
        return torch.empty(0, 3, model.image_size, model.image_size), torch.empty(0, dtype=torch.long), 0.0
    return torch.cat(images), torch.cat(indices), seconds


def model_nfe(model: Any, sampling: SamplingSettings | None) -> int | None:
    """Network evaluations per image under ``sampling``."""
    nfe = getattr(model, "nfe", None)
    return nfe(sampling) if callable(nfe) else nfe


def sampling_description(model: Any, sampling: SamplingSettings | None) -> dict[str, Any]:
    """The effective sampler, steps and guidance (empty for models without a sampler)."""
    describe = getattr(model, "sampling_description", None)
    if callable(describe):
        return dict(describe(sampling))
    found = {"sampler": getattr(model, "sampler_name", None), "steps": getattr(model, "sampler_steps", None),
             "guidance_scale": getattr(model, "guidance_scale", None)}
    return {k: v for k, v in found.items() if v is not None}


def reconstruction_protocol(model: Any, settings: ReconstructionSettings, sampling: SamplingSettings | None) -> str | None:
    protocol = getattr(model, "reconstruction_protocol", None)
    return protocol(settings, sampling) if callable(protocol) else protocol


def reconstruct(model: Any, batch: dict[str, Any], settings: ReconstructionSettings, generator: torch.Generator,
                sampling: SamplingSettings | None) -> Tensor | None:
    if "settings" in inspect.signature(model.reconstruct).parameters:
        return model.reconstruct(batch, settings, generator=generator, sampling=sampling)
    return model.reconstruct(batch, generator=generator)
