"""Conditioning accuracy: does a generated image show what its prompt asked for, beyond what chance gives?

The domain judge reads each generated image on every head (diagnosis, each attribute, skin tone
where known) and is compared with the prompt the image was drawn for. A figure means something
only beside its references, so every head carries:
- ``chance``: always answering the most frequent prompted value;
- ``shuffled``: the same images judged against prompts permuted across samples (a generator that
  ignores its prompt scores this);
- ``ceiling``: the judge's accuracy on real images of the evaluation split (Wilson interval). Where
  its lower bound is not above the majority rate of those real images, the judge cannot see the
  head and the head's accuracy is null, with the reason in ``nulls``;
- ``interval``: a bootstrap interval over the generated samples (and over evaluation seeds).
The diagnosis head also gets its balanced accuracy (mean recall over prompted diagnoses) beside the
judge's balanced accuracy on real images: on HAM10000 always answering "nv" scores 0.67 accuracy but
1/7 balanced. A class-balanced prompt set (``eval.balanced``) gives every diagnosis enough samples for
its own figure. Only visual heads count in ``mean_visual`` (``eval.non_visual_heads`` lists metadata that an image
does not show, such as HAM10000's sex, age, localization and dx_type). Groups with fewer than
``eval.min_group_size`` samples report null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchmetrics.functional.classification import multiclass_confusion_matrix

from datamodules.info import DataInfo
from evaluation.bootstrap import percentile_interval, wilson_interval
from evaluation.downstream_metrics import balanced_accuracy
from models.classifier import ATTRIBUTE_PREFIX, LABEL_HEAD, batch_targets, head_values

DIAGNOSIS = "diagnosis"


def readable(head: str) -> str:
    """The name a head has in metrics.json: ``diagnosis``, an attribute's name, or ``skin_tone``."""
    return DIAGNOSIS if head == LABEL_HEAD else head.removeprefix(ATTRIBUTE_PREFIX)


@dataclass
class HeadReadings:
    """Per evaluation seed: which samples name the head (``known``), whether the judge agrees (``hit``), and the targets."""

    hits: list[Tensor]
    known: list[Tensor]
    targets: list[Tensor]
    predicted: list[Tensor]


def readings(sets: list[Any], heads: dict[str, int]) -> dict[str, HeadReadings]:
    """Judge verdicts of each sample set (``SampleSet``) against its own prompts, per head."""
    out: dict[str, HeadReadings] = {}
    for head in heads:
        targets = [batch_targets(s.conditions, heads)[head] for s in sets]
        predicted = [s.judge_logits[head].argmax(1) for s in sets]
        out[head] = HeadReadings([p == t for p, t in zip(predicted, targets)], [t >= 0 for t in targets], targets, predicted)
    return out


def majority_rate(targets: Tensor) -> float | None:
    known = targets[targets >= 0]
    return float(torch.bincount(known).max() / known.numel()) if known.numel() else None


def shuffled_accuracy(reading: HeadReadings, permutations: int, seed: int) -> float | None:
    """Accuracy of the same verdicts against prompts permuted across samples (mean over permutations and seeds)."""
    values = []
    generator = torch.Generator().manual_seed(seed)
    for predicted, target in zip(reading.predicted, reading.targets):
        for _ in range(permutations):
            permuted = target[torch.randperm(target.numel(), generator=generator)]
            known = permuted >= 0
            if known.any():
                values.append(float((predicted[known] == permuted[known]).float().mean()))
    return sum(values) / len(values) if values else None


def ceiling(real_logits: Tensor, real_targets: Tensor, level: float) -> dict[str, Any]:
    """The judge on real images of the evaluation split: accuracy, Wilson interval, the majority rate."""
    known = real_targets >= 0
    hits = int((real_logits.argmax(1)[known] == real_targets[known]).sum())
    total = int(known.sum())
    return {
        "accuracy": hits / total if total else None, "interval": wilson_interval(hits, total, level),
        "majority": majority_rate(real_targets),
    }


def head_entry(reading: HeadReadings, weights: list[Tensor], roof: dict[str, Any], cfg: Any, name: str) -> tuple[dict[str, Any], list[float], str | None]:
    """One head's entry, its bootstrap replicates (mean over seeds), and why its accuracy is null (or None)."""
    counts = [int(k.sum()) for k in reading.known]
    accuracies = [float(h[k].float().mean()) if c else None for h, k, c in zip(reading.hits, reading.known, counts)]
    replicates = [
        float(torch.stack([(w[r] * (h & k)).sum() / (w[r] * k).sum() for w, h, k in zip(weights, reading.hits, reading.known)]).mean())
        for r in range(weights[0].shape[0])
    ] if min(counts) > 0 else []
    accuracy = sum(accuracies) / len(accuracies) if min(counts) > 0 else None
    entry = {
        "accuracy": accuracy,
        "interval": percentile_interval(replicates, float(cfg["bootstrap"]["level"]), 0.0, 1.0),
        "chance": majority_rate(torch.cat(reading.targets)),
        "shuffled": shuffled_accuracy(reading, int(cfg["shuffled_permutations"]), int(cfg["bootstrap"]["seed"])),
        "ceiling": roof["accuracy"], "ceiling_interval": roof["interval"], "n": sum(counts),
    }
    reason = None
    if sum(counts) < int(cfg["min_group_size"]):
        reason = f"{sum(counts)} prompts name {name}, fewer than eval.min_group_size={cfg['min_group_size']}"
    elif roof["interval"] is None or roof["majority"] is None or roof["interval"][0] <= roof["majority"]:
        reason = (f"the judge reads {name} on {_fmt(roof['accuracy'])} of real {cfg['split']} images (interval "
                  f"{_fmt(roof['interval'])}), not above always answering the majority value ({_fmt(roof['majority'])}): "
                  "it cannot see this head")
    if reason is not None:
        entry.update(accuracy=None, interval=None)
        replicates = []
    return entry, replicates, reason


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "n/a" if value is None else f"{value:.3f}"


def per_class(reading: HeadReadings, class_names: tuple[str, ...], cfg: Any) -> dict[str, dict[str, Any]]:
    """Per prompted diagnosis (pooled over seeds): accuracy, Wilson interval, n; null below min_group_size."""
    hits, targets = torch.cat(reading.hits), torch.cat(reading.targets)
    out = {}
    for index, name in enumerate(class_names):
        rows = targets == index
        n, k = int(rows.sum()), int(hits[rows].sum())
        enough = n >= int(cfg["min_group_size"])
        out[name] = {
            "accuracy": k / n if enough else None,
            "interval": wilson_interval(k, n, float(cfg["bootstrap"]["level"])) if enough else None, "n": n,
        }
    return out


def balanced_entry(reading: HeadReadings, weights: list[Tensor], real_logits: Tensor, real_targets: Tensor, level: float) -> tuple[dict[str, Any], list[float] | None]:
    """Balanced accuracy of the generated samples (pooled over seeds, bootstrap interval), the judge's on real
    images of the split, and their ratio (how much of what the judge can see the generator delivers)."""
    targets, predicted = torch.cat(reading.targets), torch.cat(reading.predicted)
    known, real_known = targets >= 0, real_targets >= 0
    num_classes = real_logits.shape[1]
    value = float(balanced_accuracy(targets[known].numpy(), predicted[known].numpy(), num_classes)[0])
    replicates = balanced_accuracy(targets[known].numpy(), predicted[known].numpy(), num_classes,
                                   torch.cat(weights, dim=1)[:, known].numpy()).tolist()
    interval = percentile_interval(replicates, level, 0.0, 1.0)
    real = float(balanced_accuracy(real_targets[real_known].numpy(), real_logits.argmax(1)[real_known].numpy(), num_classes)[0])
    classes = int(targets[known].unique().numel())
    return {
        "accuracy": value, "interval": interval, "chance": 1.0 / classes if classes else None,
        "ceiling": real, "ratio_to_ceiling": value / real if real > 0 else None,
    }, interval


def accuracy_block(sets: list[Any], weights: list[Tensor], judge: Any, real: Any, real_logits: dict[str, Tensor], cfg: Any) -> tuple[dict[str, Any], dict[str, list[float] | None], dict[str, str]]:
    """``per_head``, ``diagnosis`` and ``mean_visual`` of a group of sample sets, their intervals, and null reasons."""
    level = float(cfg["bootstrap"]["level"])
    real_targets = batch_targets(real.batch, judge.heads)
    per_head, intervals, nulls, visual_replicates = {}, {}, {}, []
    non_visual = set(cfg["non_visual_heads"])
    for head, reading in readings(sets, judge.heads).items():
        name = readable(head)
        entry, replicates, reason = head_entry(reading, weights, ceiling(real_logits[head], real_targets[head], level), cfg, name)
        entry["visual"] = name not in non_visual
        per_head[name], intervals[name] = entry, entry["interval"]
        if reason is not None:
            nulls[f"per_head.{name}.accuracy"] = reason
        elif entry["visual"]:
            visual_replicates.append(replicates)
    visual = [e["accuracy"] for e in per_head.values() if e["visual"] and e["accuracy"] is not None]
    block = {
        DIAGNOSIS: per_head[DIAGNOSIS]["accuracy"], "mean_visual": sum(visual) / len(visual) if visual else None,
        "per_head": per_head,
    }
    intervals["mean_visual"] = percentile_interval(torch.tensor(visual_replicates).mean(0), level, 0.0, 1.0) if visual_replicates else None
    if block[DIAGNOSIS] is None:
        nulls[DIAGNOSIS] = nulls.get(f"per_head.{DIAGNOSIS}.accuracy", "no diagnosis accuracy")
    if block["mean_visual"] is None:
        nulls["mean_visual"] = "no visual head has an accuracy"
    return block, intervals, nulls


def conditioning_accuracy(
    sets: list[Any], weights: list[Tensor], heldout: dict[str, tuple[list[Any], list[Tensor]] | str],
    balanced: tuple[list[Any], list[Tensor]] | str, resources: Any, class_names: tuple[str, ...], cfg: Any,
) -> tuple[dict[str, Any], dict[str, list[float] | None], dict[str, str]]:
    """The ``cond_accuracy`` entry of metrics.json, its intervals (``cond_accuracy.<head>``), and null reasons.

    ``weights`` are the bootstrap multiplicities of each set (R, n); ``heldout`` maps ``paraphrase`` /
    ``combo`` to their sample sets and weights, or to why there are none; ``balanced`` likewise for the
    class-balanced prompt set.
    """
    judge, real = resources.judge, resources.real
    level = float(cfg["bootstrap"]["level"])
    label_heads = {LABEL_HEAD: judge.heads[LABEL_HEAD]}
    real_label_logits, real_labels = real.judge_logits[LABEL_HEAD], batch_targets(real.batch, label_heads)[LABEL_HEAD]
    block, head_intervals, nulls = accuracy_block(sets, weights, judge, real, real.judge_logits, cfg)
    diagnosis = readings(sets, label_heads)[LABEL_HEAD]
    block["per_class"] = per_class(diagnosis, class_names, cfg)
    block["diagnosis_balanced"], head_intervals["diagnosis_balanced"] = balanced_entry(
        diagnosis, weights, real_label_logits, real_labels, level)
    intervals = {f"cond_accuracy.{name}": value for name, value in head_intervals.items()}
    if isinstance(balanced, str):
        block["balanced"], nulls["balanced"] = None, balanced
    else:
        balanced_sets, balanced_weights = balanced
        reading = readings(balanced_sets, label_heads)[LABEL_HEAD]
        entry, entry_interval = balanced_entry(reading, balanced_weights, real_label_logits, real_labels, level)
        block["balanced"] = {
            "diagnosis_balanced": entry, "per_class": per_class(reading, class_names, cfg),
            "n": sum(s.size for s in balanced_sets),
        }
        intervals["cond_accuracy.balanced.diagnosis_balanced"] = entry_interval
    held: dict[str, Any] = {}
    for kind, group in heldout.items():
        if isinstance(group, str):
            held[kind], nulls[f"heldout.{kind}"] = None, group
            continue
        entry, entry_intervals, entry_nulls = accuracy_block(*group, judge, real, real.judge_logits, cfg)
        held[kind] = {**entry, "n": sum(s.size for s in group[0])}
        intervals.update({f"cond_accuracy.heldout.{kind}.{k}": v for k, v in entry_intervals.items()})
        nulls.update({f"heldout.{kind}.{k}": v for k, v in entry_nulls.items()})
    block["heldout"] = held if any(v is not None for v in held.values()) else None
    block["judge"] = judge.name
    return block, intervals, {f"cond_accuracy.{k}": v for k, v in nulls.items()}


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
        if len(names[name]) < 2:  # one value (an unlabelled folder data set): every sample is read as it
            counts = torch.tensor([[int(known.sum())]])
        else:
            counts = multiclass_confusion_matrix(logits[name][known].argmax(1), target[known], num_classes=len(names[name]))
        out[name.removeprefix(ATTRIBUTE_PREFIX)] = {"values": list(names[name]), "prompted_by_read": counts.tolist()}
    return out
