"""A figure of image rows, each captioned on its left: samples per prompt or per prompted diagnosis."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
