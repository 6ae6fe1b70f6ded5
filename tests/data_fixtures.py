"""Tiny data sets in every supported format, written into a test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def noise_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_ham(root: Path, lesions: int = 30, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """HAM10000 layout: JPEGs split over two part folders, 1-3 images per lesion, metadata CSV."""
    rng = np.random.default_rng(seed)
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows = []
    for lesion in range(lesions):
        dx = classes[lesion % len(classes)] if lesion < 14 else "nv"
        for k in range(int(rng.integers(1, 4))):
            image_id = f"ISIC_{lesion:04d}{k}"
            folder = root / ("HAM10000_images_part_1" if lesion % 2 else "HAM10000_images_part_2")
            folder.mkdir(parents=True, exist_ok=True)
            noise_image(rng, *size).save(folder / f"{image_id}.jpg")
            rows.append({"lesion_id": f"HAM_{lesion:04d}", "image_id": image_id, "dx": dx,
                         "dx_type": ["histo", "follow_up", "consensus"][lesion % 3],
                         "age": [45.0, np.nan, 70.0][k % 3], "sex": ["male", "female", "unknown"][lesion % 3],
                         "localization": ["back", "face", "unknown", "lower extremity"][lesion % 4]})
    pd.DataFrame(rows, columns=HAM_COLUMNS).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def make_dermamnist(root: Path, size: int = 28, counts: tuple[int, int, int] = (20, 8, 8), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), counts):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 7).reshape(-1, 1).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    name = "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"
    np.savez(root / name, **arrays)
    return root


def make_folder(root: Path, count: int = 20, size: int = 24, labels: list | None = None, seed: int = 0, suffix: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = f"img_{index:03d}{suffix}"
        noise_image(rng, size, size).save(root / name)
        row = {"file": name, "caption": f"dermoscopic image number {index}"}
        if labels is not None:
            row["label"] = labels[index % len(labels)]
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    return root
