"""Conditioning accuracy: does a generated image show what its prompt asked for?

The domain judge classifies each generated image on every head (diagnosis, each attribute, skin
tone where known) and is compared with the conditions the image was generated from. A judge can
be fooled, so the result always carries the FD of the same samples and the judge's own sanity
figures (accuracy on real test images, pure noise and noised images, beside chance).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from evaluation.judge import Judge
from models.classifier import ATTRIBUTE_PREFIX, batch_targets


def head_correct(judge: Judge, images: Tensor, conditions: dict[str, Any]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per head: (correct (N,) bool, known (N,) bool) for generated images against their conditions."""
    return head_correct_from_logits(judge.logits(images), batch_targets(conditions, judge.heads))


def head_correct_from_logits(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """The same from judge logits already computed (and gathered over ranks)."""
    return {name: (logits[name].argmax(1) == target, target >= 0) for name, target in targets.items()}


def summarize(correct: dict[str, tuple[Tensor, Tensor]], rows: Tensor | None = None) -> tuple[float | None, dict[str, float | None]]:
    """Mean over heads and accuracy per head (readable names), over ``rows`` (all by default)."""
    per_head: dict[str, float | None] = {}
    for name, (hit, known) in correct.items():
        if rows is not None:
            hit, known = hit[rows], known[rows]
        per_head[name.removeprefix(ATTRIBUTE_PREFIX)] = float(hit[known].float().mean()) if known.any() else None
    values = [v for v in per_head.values() if v is not None]
    return (sum(values) / len(values) if values else None), per_head


def conditioning_accuracy(
    judge: Judge, correct: dict[str, tuple[Tensor, Tensor]], fd: float | None, feature_extractor: str
) -> dict[str, Any]:
    """The ``cond_accuracy`` entry of metrics.json: mean, per attribute, FD beside it, judge sanity."""
    mean, per_head = summarize(correct)
    sanity = {k: v for k, v in judge.sanity.items() if k.endswith("_accuracy")}
    return {
        "mean": mean,
        "per_attribute": per_head,
        "fd": fd,
        "feature_extractor": feature_extractor,
        "judge": judge.name,
        "judge_sanity": sanity,
    }
