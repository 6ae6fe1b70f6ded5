"""Feature extractors for FD/KID/precision/recall: the standard FID Inception or the domain judge.

``inception-v3-compat`` (the default) is the TF FID Inception's pool3 (``evaluation.inception``):
figures in its space compare with published FID. ``domain:<judge>`` is the judge's penultimate
layer: it sees what matters on this data set, but compares only between runs sharing the judge.
metrics.json names the extractor of ``fid`` in ``feature_extractor``; the domain figure sits
beside it as ``fd_domain``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from evaluation.inception import INCEPTION_NAME, InceptionPool3
from evaluation.judge import Judge

CHOICES = ("inception", "domain")


class FeatureExtractor:
    """Maps images (N, 3, H, W) in [-1, 1] to features (N, D); ``provenance`` says which weights."""

    name: str

    def __call__(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        return {"name": self.name}


class InceptionFeatures(FeatureExtractor):
    """The FID Inception's 2048-d pool3 features."""

    name = INCEPTION_NAME

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.network = InceptionPool3().to(device)
        self.device = device

    def __call__(self, images: Tensor) -> Tensor:
        return self.network(images.to(self.device)).cpu()

    def provenance(self) -> dict[str, Any]:
        path = self.network.path
        return {"name": self.name, "file": f"{path.parent.name}/{path.name}", "sha1": self.network.sha1}


class DomainFeatures(FeatureExtractor):
    """The domain judge's penultimate features."""

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self.name = f"domain:{judge.name}"

    def __call__(self, images: Tensor) -> Tensor:
        return self.judge.features(images)

    def provenance(self) -> dict[str, Any]:
        return {"name": self.name, "judge_key": self.judge.key}


def build_feature_extractor(choice: str, judge: Judge, device: str | torch.device = "cpu") -> FeatureExtractor:
    """``inception`` or ``domain`` (``eval.feature_extractor``)."""
    if choice not in CHOICES:
        raise ValueError(f"eval.feature_extractor must be one of {', '.join(CHOICES)}, got {choice!r}")
    return InceptionFeatures(device) if choice == "inception" else DomainFeatures(judge)


@torch.no_grad()
def extract(extractor: FeatureExtractor, images: Tensor, batch_size: int, progress: bool = False, desc: str = "features") -> Tensor:
    """Features (N, D) of ``images`` in batches (an empty DDP shard gives (0, D))."""
    if images.shape[0] == 0:
        return extractor(torch.zeros(1, *images.shape[1:], dtype=images.dtype))[:0]
    chunks = [
        extractor(images[start : start + batch_size])
        for start in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False)
    ]
    return torch.cat(chunks)
