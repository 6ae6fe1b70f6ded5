"""Feature extractors for FD/KID/precision/recall: standard Inception or the domain judge.

``inception-v3-compat`` is torch-fidelity's port of the TF Inception used by every FID paper; its
weights load only from a local file (``eval.inception_weights`` or torch hub's cache, where
torch-fidelity puts them), never from the network. Where they are missing, ``auto`` falls back
to the domain judge's features with a one-line warning, and ``feature_extractor`` in
metrics.json says which one was used: figures under different extractors do not compare.

Inception Score: with Inception, from its 1008-way ``logits_unbiased`` (the standard); with the
domain judge, from its diagnosis head (an "IS" over the data's own classes: bounded by the number
of classes, comparable only between runs sharing the judge, like the domain FD).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from evaluation.judge import Judge
from models.classifier import LABEL_HEAD

log = logging.getLogger(__name__)
INCEPTION_NAME = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release asset name


class FeatureExtractor:
    """Maps images (N, 3, H, W) in [-1, 1] to features (N, D) and classifier logits (N, K)."""

    name: str
    num_features: int

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class InceptionFeatures(FeatureExtractor):
    """torch-fidelity's InceptionV3: 2048-d pool features and 1008-d unbiased logits."""

    name = INCEPTION_NAME
    num_features = 2048

    def __init__(self, weights: Path, device: str | torch.device = "cpu") -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # torch-fidelity unpickles the file; a weights_only load first refuses files that carry code.
        torch.load(weights, map_location="cpu", weights_only=True)
        self.network = FeatureExtractorInceptionV3(
            INCEPTION_NAME, ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
        ).to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).to(self.device)
        features, logits = self.network(pixels)
        return features.float().cpu(), logits.float().cpu()


class DomainFeatures(FeatureExtractor):
    """The domain judge's penultimate features and its diagnosis logits."""

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self.name = judge.name
        self.num_features = judge.model.num_features

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        model = self.judge.model
        features = model.predict_features(images)
        return features, model.classifiers[LABEL_HEAD](features.to(model.device)).cpu()


def find_inception_weights(path: str | None) -> Path | None:
    """The Inception weights file: ``path`` if given (must exist), else torch hub's cache, else None."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"eval.inception_weights={path} does not exist")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


def build_feature_extractor(eval_cfg: Any, judge: Callable[[], Judge], device: str | torch.device = "cpu") -> FeatureExtractor:
    """``eval.feature_extractor``: ``inception`` (weights required), ``domain``, or ``auto`` (Inception if present)."""
    choice = eval_cfg.get("feature_extractor", "auto")
    if choice not in ("auto", "inception", "domain"):
        raise ValueError(f"eval.feature_extractor must be auto, inception or domain, got {choice!r}")
    if choice != "domain":
        weights = find_inception_weights(eval_cfg.get("inception_weights"))
        if weights is not None:
            return InceptionFeatures(weights, device)
        if choice == "inception":
            raise FileNotFoundError(
                f"Inception weights not found in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
                "give eval.inception_weights=PATH or use eval.feature_extractor=domain"
            )
        warnings.warn(
            "Inception weights not found (set eval.inception_weights=PATH); FD/KID/precision/recall use the "
            "domain judge's features instead and are not comparable with published FID",
            stacklevel=2,
        )
    return DomainFeatures(judge())


def extract(
    extractor: FeatureExtractor, images: Tensor, batch_size: int = 128, progress: bool = False, desc: str = "features"
) -> tuple[Tensor, Tensor]:
    """Features (N, D) and logits (N, K) of ``images`` in batches."""
    if images.shape[0] == 0:  # an empty DDP shard: shapes from one dummy image, no rows
        f, l = extractor(torch.zeros(1, *images.shape[1:], device=images.device, dtype=images.dtype))
        return f[:0], l[:0]
    features, logits = [], []
    for start in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        f, l = extractor(images[start : start + batch_size])
        features.append(f)
        logits.append(l)
    return torch.cat(features), torch.cat(logits)
