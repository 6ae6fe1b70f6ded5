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
    figure, axes = plt.subplots(count, columns + 1, figsize=(1.1 * columns + 2.7, 1.15 * count), squeeze=False,
                                gridspec_kw={"width_ratios": [2.4] + [1] * columns})
    for axis in axes.flat:
        axis.axis("off")
    for line, (caption, images) in enumerate(rows):
        text = "\n".join(textwrap.fill(part, 44) for part in caption.split("\n"))
        axes[line, 0].text(1.0, 0.5, text, ha="right", va="center", fontsize=6, transform=axes[line, 0].transAxes)
        for column, image in enumerate(list(images)[:columns]):
            axes[line, column + 1].imshow(image)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
