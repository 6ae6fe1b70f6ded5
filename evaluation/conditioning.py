"""Conditioning accuracy: does a generated image show what its prompt asked for?

The domain judge classifies each generated image on every head (diagnosis, each attribute, skin
tone where known) and is compared with the conditions the image was generated from. A judge can
be fooled, so the result always carries the FD of the same samples and the judge's own sanity
figures (accuracy on real test images, pure noise and noised images, beside chance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix

from datamodules.info import DataInfo
from evaluation.judge import Judge
from models.classifier import ATTRIBUTE_PREFIX, LABEL_HEAD, batch_targets, head_values


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


def accuracy_by_class(correct: dict[str, tuple[Tensor, Tensor]], labels: Tensor, class_names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per prompted diagnosis: how many samples asked for it and how often the judge reads it."""
    hit, known = correct[LABEL_HEAD]
    out: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(class_names):
        rows = (labels == index) & known
        out[name] = {"num_generated": int(rows.sum()), "accuracy": float(hit[rows].float().mean()) if rows.any() else None}
    return out


def confusion_by_head(logits: dict[str, Tensor], targets: dict[str, Tensor], info: DataInfo) -> dict[str, dict[str, Any]]:
    """Per head: how often each prompted value is read as each value (rows prompted, columns read).

    Accuracy alone hides the direction of a failure: whether "irregular border" prompts come out
    regular, or a rare diagnosis is read as the common one. Samples whose prompt leaves a head
    unknown are left out of that head's table.
    """
    names = head_values(info)
    out: dict[str, dict[str, Any]] = {}
    for name, target in targets.items():
        known = target >= 0
        counts = multiclass_confusion_matrix(logits[name][known].argmax(1), target[known], num_classes=len(names[name]))
        out[name.removeprefix(ATTRIBUTE_PREFIX)] = {"values": list(names[name]), "prompted_by_read": counts.tolist()}
    return out


def save_class_grid(
    images: Tensor, labels: Tensor, by_class: dict[str, dict[str, Any]], class_names: tuple[str, ...], path: Path, per_class: int = 8
) -> Path:
    """One row per diagnosis: the first ``per_class`` samples prompted with it, titled with the judge's accuracy."""
    from evaluation.row_grid import save_captioned_rows

    pixels = ((images.float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    rows = []
    for index, name in enumerate(class_names):
        stats = by_class[name]
        if stats["num_generated"]:
            chosen = (labels == index).nonzero().flatten()[:per_class].tolist()
            rows.append((f"{name}\njudge {stats['accuracy']:.0%}\nn = {stats['num_generated']}", [pixels[i] for i in chosen]))
    title = "generated per prompted diagnosis (judge accuracy on all samples of that prompt)"
    return save_captioned_rows(rows, path, per_class, title=title, dpi=110)
