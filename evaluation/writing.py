"""Stage 4 of the protocol: the files beside metrics.json in ``<out>/eval/`` (rank 0 only).

``samples.png`` (the first samples), ``samples/`` + ``samples.json`` (each sample's prompt and what
the judge reads in it; the runner makes a W&B table of it), ``by_class.png`` (samples per prompted
diagnosis above real images of it), ``closest_pairs.png`` (generated images beside their nearest training image) and
``details.json`` (what metrics.json has no key for: confusion tables, judge sanity, per-seed figures).
``save_captioned_rows`` draws image rows captioned on their left (also ``experiments.generate``'s grid).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image

from models.classifier import ATTRIBUTE_PREFIX, LABEL_HEAD, SKIN_TONE_HEAD, head_values


def save_pairs(images: Tensor, path: Path, min_tile: int = 64, nrow: int = 8) -> None:
    """Save (2K, 3, H, W) images in [-1, 1] as a grid, ``nrow`` per row (pairs side by side)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = images.float().clamp(-1, 1)
    if images.shape[-1] < min_tile:
        images = F.interpolate(images, scale_factor=math.ceil(min_tile / images.shape[-1]), mode="nearest")
    save_image(make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0), path)


def save_closest_pairs(generated: Tensor, distances: Tensor, nearest_index: Tensor, reference_pixels: Tensor, path: Path, count: int = 16) -> None:
    """The ``count`` generated images closest to a training image, each beside that (thumbnail) training image."""
    side = int(math.isqrt(reference_pixels.shape[1] // 3))
    order = distances.argsort()[:count]
    training = (reference_pixels[nearest_index[order]].float() * math.sqrt(reference_pixels.shape[1])).view(-1, 3, side, side)
    tile = max(generated.shape[-1], side)
    pairs = torch.stack([F.interpolate(generated[order].float(), size=tile), F.interpolate(training, size=tile)], dim=1)
    save_pairs(pairs.flatten(0, 1), path)


def write_sample_table(images: Tensor, conditions: dict[str, Any] | None, judge_logits: dict[str, Tensor], info: Any, eval_dir: Path) -> None:
    """``eval/samples/<i>.png`` plus ``eval/samples.json``: each sample's prompt and what the judge reads in it."""
    sample_dir = eval_dir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    names = head_values(info)
    rows = []
    for i, image in enumerate(images):
        save_image((image.float().cpu().clamp(-1, 1) + 1) / 2, sample_dir / f"{i:03d}.png")
        predicted = {}
        for head, logits in judge_logits.items():
            index = int(logits[i].argmax())
            if head == SKIN_TONE_HEAD:
                predicted["skin_tone"] = index + 1
            else:
                predicted["diagnosis" if head == LABEL_HEAD else head.removeprefix(ATTRIBUTE_PREFIX)] = names[head][index]
        caption = str(conditions["caption"][i]) if conditions is not None else None
        rows.append({"file": f"samples/{i:03d}.png", "caption": caption, "predicted": predicted})
    (eval_dir / "samples.json").write_text(json.dumps({"nrow": 8, "captions": [r["caption"] for r in rows], "samples": rows}, indent=1))


def save_class_grid(images: Tensor, labels: Tensor, per_class: dict[str, dict[str, Any]], real_images: Tensor, real_labels: Tensor,
                    class_names: tuple[str, ...], path: Path, columns: int = 8) -> Path:
    """Per diagnosis, a row of samples prompted with it (titled with the judge's accuracy) above a row of real
    images of that diagnosis from the evaluation split: a rare class's failure shows against what it should be."""
    def pixels(batch: Tensor) -> Any:
        return ((batch.float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()

    generated, real = pixels(images), pixels(real_images[: len(real_labels)])
    rows = []
    for index, name in enumerate(class_names):
        stats = per_class[name]
        if stats["n"]:
            chosen = (labels == index).nonzero().flatten()[:columns].tolist()
            accuracy = "n/a" if stats["accuracy"] is None else f"{stats['accuracy']:.0%}"
            rows.append((f"{name} generated\njudge {accuracy}, n = {stats['n']}", [generated[i] for i in chosen]))
            references = (real_labels == index).nonzero().flatten()[:columns].tolist()
            rows.append((f"{name} real", [real[i] for i in references]))
    title = "per prompted diagnosis: generated (judge accuracy over all samples of that prompt) above real"
    return save_captioned_rows(rows, path, columns, title=title, dpi=110)


def write_files(eval_dir: Path, first: Any, grid_set: Any, real_batch: dict[str, Any], info: Any, metrics: dict[str, Any],
                details: dict[str, Any]) -> None:
    """Every file of ``eval_dir`` but the closest pairs (written by the memorization step); ``by_class.png`` shows
    ``grid_set`` (the class-balanced prompt set where there is one) beside ``real_batch``."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    if first.preview.shape[0]:
        save_pairs(first.preview, eval_dir / "samples.png")
    write_sample_table(first.preview, first.conditions, {h: v[: first.preview.shape[0]] for h, v in first.judge_logits.items()}, info, eval_dir)
    cond = metrics.get("cond_accuracy")
    if cond is not None and grid_set.conditions is not None:
        labels = torch.as_tensor(grid_set.conditions["label"]).long()
        per_class = cond["per_class"] if grid_set is first else cond["balanced"]["per_class"]
        save_class_grid(grid_set.thumbnails, labels, per_class, real_batch["image"], torch.as_tensor(real_batch["label"]).long(),
                        tuple(info.class_names), eval_dir / "by_class.png")
    (eval_dir / "details.json").write_text(json.dumps(details, indent=1, default=str))


def save_captioned_rows(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: Path, columns: int = 8, title: str | None = None, dpi: int = 130
) -> Path:
    """``rows`` of (caption, images (H, W, 3) uint8 or floats in [0, 1]); the first ``columns`` images of each are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, len(rows))
    texts = ["\n".join(textwrap.fill(part, 44) for part in caption.split("\n")) for caption, _ in rows]
    # The caption column is as wide as its longest line (6 pt text: ~0.04 in per character), so short labels waste no space.
    longest = max((len(line) for text in texts for line in text.split("\n")), default=0)
    label_width = min(2.4, 0.3 + 0.04 * longest)
    title_height = 0.2 if title else 0.0  # inches above the first row
    height = 1.15 * count + title_height
    figure, axes = plt.subplots(count, columns + 1, figsize=(1.1 * columns + label_width + 0.3, height), squeeze=False,
                                gridspec_kw={"width_ratios": [label_width] + [1] * columns})
    for axis in axes.flat:
        axis.axis("off")
    for line, ((_, images), text) in enumerate(zip(rows, texts)):
        axes[line, 0].text(1.0, 0.5, text, ha="right", va="center", fontsize=6, transform=axes[line, 0].transAxes)
        for column, image in enumerate(list(images)[:columns]):
            axes[line, column + 1].imshow(image)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - title_height / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
