"""A reader study: can a dermatologist tell synthetic images from real ones, and read their diagnosis?

The one measure of clinical plausibility the metrics cannot give. ``write_study`` lays out a blinded set:
real images of an evaluation split and synthetic images prompted like them (the same diagnosis mix, so
the mix is no cue), both stored through one path (8-bit PNG, resized alike), shuffled with a seed and
named ``case_0001.png`` ..., with a blank response sheet and instructions; the answer key goes to a
separate folder that the organiser keeps. ``score_responses`` reads a filled sheet against the key.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from evaluation.bootstrap import wilson_interval

SOURCES = ("real", "synthetic")
RESPONSE_COLUMNS = ("file", "real_or_synthetic", "diagnosis", "confidence")
KEY_COLUMNS = ("file", "source", "diagnosis", "caption", "origin")

INSTRUCTIONS = """# Reader study

{count} dermoscopic images, `images/case_0001.png` to `images/case_{count:04d}.png`, in random order. Some are
photographs of real lesions, some were drawn by a generative model. For each image, fill one row of
`responses.csv`:

- `real_or_synthetic`: `real` or `synthetic` (your best guess; leave empty to skip the image);
- `diagnosis`: one of {diagnoses} (or empty);
- `confidence`: 1 (guess) to 5 (certain).

Do not resize or edit the files; look at them at any zoom. The file names and order carry no information.
Return `responses.csv` to the organiser, who holds the answer key.

The images are for research only, not for diagnosis. See NOTICE for the data's licence.
"""


def to_uint8(images: Tensor, size: int) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, size, size, 3) uint8, every image through the same resize."""
    images = images.float().clamp(-1, 1)
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=size < images.shape[-1])
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_study(
    out: Path, key_dir: Path, real: Tensor, real_rows: list[dict[str, str]], synthetic: Tensor, synthetic_rows: list[dict[str, str]],
    *, diagnoses: list[str], display_size: int, seed: int,
) -> dict[str, Any]:
    """Write the blinded set to ``out`` and the answer key to ``key_dir``; return the study's counts.

    ``real_rows`` / ``synthetic_rows`` hold each image's ``diagnosis``, ``caption`` and ``origin`` (an image
    id or the prompt's seed), in the order of the tensors.
    """
    images = np.concatenate([to_uint8(real, display_size), to_uint8(synthetic, display_size)])
    rows = [{**r, "source": "real"} for r in real_rows] + [{**r, "source": "synthetic"} for r in synthetic_rows]
    order = np.random.default_rng(seed).permutation(len(rows))
    (out / "images").mkdir(parents=True, exist_ok=True)
    key_dir.mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(len(rows))))
    key, responses = [], []
    for position, index in enumerate(order, start=1):
        name = f"case_{position:0{digits}d}.png"
        Image.fromarray(images[index]).save(out / "images" / name)  # no text chunks: nothing but pixels
        key.append({"file": name, **{k: rows[index].get(k, "") for k in KEY_COLUMNS if k != "file"}})
        responses.append({"file": name, "real_or_synthetic": "", "diagnosis": "", "confidence": ""})
    _write_csv(key_dir / "answers.csv", key, KEY_COLUMNS)
    _write_csv(out / "responses.csv", responses, RESPONSE_COLUMNS)
    (out / "README.md").write_text(INSTRUCTIONS.format(count=len(rows), diagnoses=", ".join(diagnoses)))
    return {"images": len(rows), "real": len(real_rows), "synthetic": len(synthetic_rows), "display_size": display_size, "seed": seed}


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {', '.join(required)}")
        return list(reader)


def _proportion(hits: int, total: int) -> dict[str, Any]:
    interval = wilson_interval(hits, total, 0.95) if total else None
    return {"value": hits / total if total else None, "interval": interval, "hits": hits, "n": total}


def score_responses(key_path: Path, responses_path: Path) -> dict[str, Any]:
    """The reader's accuracy at real vs synthetic (Wilson intervals), and diagnosis agreement per source and class.

    A row left empty is skipped and counted; a file the key does not hold, an answer other than
    ``real`` / ``synthetic`` or a confidence other than 1-5 is an error naming the row.
    """
    key = {row["file"]: row for row in _read_csv(key_path, KEY_COLUMNS)}
    answered, skipped, diagnosis_pairs = [], 0, []
    for line, row in enumerate(_read_csv(responses_path, RESPONSE_COLUMNS), start=2):
        if row["file"] not in key:
            raise ValueError(f"{responses_path} row {line}: file {row['file']!r} is not in the answer key {key_path}")
        truth = key[row["file"]]
        verdict = row["real_or_synthetic"].strip().lower()
        if verdict and verdict not in SOURCES:
            raise ValueError(f"{responses_path} row {line}: real_or_synthetic must be 'real' or 'synthetic' (or empty), got {verdict!r}")
        confidence = row["confidence"].strip()
        if confidence and confidence not in {"1", "2", "3", "4", "5"}:
            raise ValueError(f"{responses_path} row {line}: confidence must be 1 to 5 (or empty), got {confidence!r}")
        if verdict:
            answered.append((truth["source"], verdict))
        else:
            skipped += 1
        if row["diagnosis"].strip():
            diagnosis_pairs.append((truth["source"], truth["diagnosis"], row["diagnosis"].strip().lower() == truth["diagnosis"].lower()))
    by_source = {s: [v == s for t, v in answered if t == s] for s in SOURCES}
    agreement: dict[str, Any] = {}
    for source in SOURCES:
        pairs = [(d, hit) for s, d, hit in diagnosis_pairs if s == source]
        agreement[source] = {
            "all": _proportion(sum(hit for _, hit in pairs), len(pairs)),
            "per_diagnosis": {d: _proportion(sum(h for dd, h in pairs if dd == d), sum(1 for dd, _ in pairs if dd == d))
                              for d in sorted({d for d, _ in pairs})},
        }
    correct = sum(t == v for t, v in answered)
    return {
        "real_vs_synthetic_accuracy": _proportion(correct, len(answered)),
        "synthetic_called_synthetic": _proportion(sum(by_source["synthetic"]), len(by_source["synthetic"])),
        "real_called_real": _proportion(sum(by_source["real"]), len(by_source["real"])),
        "answered": len(answered), "skipped": skipped, "images_in_key": len(key),
        "diagnosis_agreement": agreement,
        "chance": 0.5 if answered else math.nan,
        "reading": "accuracy near 0.5 (its interval covering 0.5): the reader cannot tell the synthetic images from real ones",
    }
