"""Downstream benchmark: does synthetic data help a classifier of real images?

The same timm recipe (``models.classifier``) is trained, for several seeds, on (a) the real
training split, (b) real + N synthetic images drawn class-balanced from the generator, (c) the
synthetic images only (train on synthetic, test on real); each is tested on the real test split.
``real_fraction`` subsamples the real split: gains from synthetic data matter most when real data
are scarce. Unconditional generators carry no labels, so their images are labelled by the domain
judge (pseudo-labels), which the result names.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset
from tqdm.auto import tqdm

from evaluation.data import collect, subset_indices, take
from evaluation.groups import GROUPS, group_mask
from models.classifier import LABEL_HEAD, train_classifier

ARMS = ("real", "real+synthetic", "synthetic")


class ImageLabelDataset(Dataset):
    """Generated images with labels, yielding the batch-dict contract (attributes and tone unknown)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index]), "caption": "", "attributes": {}, "skin_tone": 0}


class LabelOnly(Dataset):
    """A real split reduced to image and label, so it concatenates with generated images."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        return {"image": item["image"], "label": int(item["label"]), "caption": "", "attributes": {}, "skin_tone": 0}


def balanced_conditions(datamodule: Any, num_images: int, seed: int) -> dict[str, Any]:
    """``num_images`` conditions with every diagnosis equally often, drawn from the training distribution."""
    num_classes = datamodule.info.num_classes
    pool = datamodule.sample_conditions(max(8 * num_images, 1000), seed=seed)
    labels = torch.as_tensor(pool["label"])
    rows = []
    per_class = math.ceil(num_images / num_classes)
    for label in range(num_classes):
        candidates = torch.nonzero(labels == label).flatten().tolist()
        if not candidates:
            raise ValueError(f"class {datamodule.info.class_names[label]!r} never drawn by sample_conditions; cannot balance")
        rows += [candidates[i % len(candidates)] for i in range(per_class)]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:num_images]
    return take(pool, [rows[i] for i in order.tolist()])


@torch.no_grad()
def synthetic_dataset(model: Any, datamodule: Any, num_images: int, seed: int, batch_size: int = 64, judge: Any = None, progress: bool = False) -> tuple[ImageLabelDataset, str]:
    """Draw ``num_images`` labelled images; returns the dataset and where its labels came from."""
    conditional = getattr(model, "conditioning", "none") != "none"
    conditions = balanced_conditions(datamodule, num_images, seed) if conditional else None
    images = []
    for chunk, start in enumerate(tqdm(range(0, num_images, batch_size), desc="synthetic", disable=not progress)):
        rows = list(range(start, min(num_images, start + batch_size)))
        batch = take(conditions, rows) if conditions is not None else None
        images.append(model.generate(batch, len(rows), generator=torch.Generator().manual_seed(seed * 1_000_003 + chunk)).float().cpu().clamp(-1, 1))
    images = torch.cat(images)
    if conditional:
        return ImageLabelDataset(images, torch.as_tensor(conditions["label"])), "condition"
    if judge is None:
        raise ValueError("an unconditional generator needs the domain judge to label its images")
    return ImageLabelDataset(images, judge.logits(images)[LABEL_HEAD].argmax(1)), f"judge pseudo-labels ({judge.name})"


def classification_metrics(logits: Tensor, labels: Tensor, skin_tones: Tensor | None, num_classes: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, macro one-vs-rest AUROC, and accuracy per skin-tone group."""
    probabilities = logits.double().softmax(1).numpy()
    predicted, truth = logits.argmax(1).numpy(), labels.numpy()
    present = np.unique(truth)
    try:
        if num_classes == 2:
            auroc = float(roc_auc_score(truth, probabilities[:, 1]))
        else:  # AUROC over the classes present in the test split (a missing class has no positives)
            scores = probabilities[:, present] / probabilities[:, present].sum(1, keepdims=True)
            auroc = float(roc_auc_score(truth, scores, multi_class="ovr", average="macro", labels=present))
    except ValueError:
        auroc = None
    result: dict[str, Any] = {
        "accuracy": float((predicted == truth).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", labels=present)),
        "auroc": auroc,
        "per_skin_tone_accuracy": None,
    }
    if skin_tones is not None and (skin_tones > 0).any():
        result["per_skin_tone_accuracy"] = {
            group: float((predicted[mask] == truth[mask]).mean()) if mask.any() else None
            for group in GROUPS
            for mask in [group_mask(skin_tones, group).numpy()]
        }
    return result


def run_benchmark(datamodule: Any, synthetic: Dataset, settings: Any, progress: bool = False) -> dict[str, Any]:
    """Train the three arms for every seed and real fraction; figures on the real test split and deltas vs real."""
    info = datamodule.info
    test = collect(datamodule.test_set, settings.get("num_test"), seed=0)
    heads = {LABEL_HEAD: info.num_classes}
    results: dict[str, Any] = {"runs": [], "summary": {}}
    for fraction in settings["real_fractions"]:
        for seed in settings["seeds"]:
            count = max(1, round(float(fraction) * len(datamodule.train_set)))
            real = LabelOnly(Subset(datamodule.train_set, subset_indices(len(datamodule.train_set), count, seed)))
            arms = {"real": real, "real+synthetic": ConcatDataset([real, synthetic]), "synthetic": synthetic}
            for arm, dataset in arms.items():
                model = train_classifier(
                    heads, dataset, int(settings["epochs"]), int(settings["batch_size"]), int(seed),
                    arch=settings["arch"], lr=float(settings["lr"]), augment=bool(settings["augment"]), progress=progress,
                )
                figures = classification_metrics(model.predict_logits(test["image"])[LABEL_HEAD], test["label"], test.get("skin_tone"), info.num_classes)
                results["runs"].append({"real_fraction": float(fraction), "seed": int(seed), "arm": arm, "num_train": len(dataset), **figures})
        results["summary"][str(float(fraction))] = summarize(results["runs"], float(fraction))
    last = results["summary"][str(float(settings["real_fractions"][-1]))]
    results["summary"]["delta_accuracy_mean"] = last["real+synthetic"]["delta_accuracy"]["mean"]
    return results


def summarize(runs: list[dict[str, Any]], fraction: float) -> dict[str, Any]:
    """Per arm: mean/std of each figure over seeds, and of its paired (same seed) difference to the real arm."""
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")
    by_arm = {arm: {r["seed"]: r for r in runs if r["arm"] == arm and r["real_fraction"] == fraction} for arm in ARMS}
    summary: dict[str, Any] = {}
    for arm, seeds in by_arm.items():
        entry = {}
        for key in keys:
            entry[key] = _mean_std([seeds[s][key] for s in seeds])
            if arm != "real":
                entry[f"delta_{key}"] = _mean_std([
                    seeds[s][key] - by_arm["real"][s][key] for s in seeds
                    if seeds[s][key] is not None and by_arm["real"].get(s, {}).get(key) is not None
                ])
        summary[arm] = entry
    return summary


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    known = np.array([v for v in values if v is not None], dtype=float)
    if known.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(known.mean()), "std": float(known.std(ddof=1)) if known.size > 1 else 0.0, "n": int(known.size)}
