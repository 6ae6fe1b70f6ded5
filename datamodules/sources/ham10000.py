"""HAM10000 and ISIC-style data: a folder of images plus a metadata CSV with one row per image.

Expected columns: ``image_id``, ``lesion_id``, ``dx`` (required) and ``dx_type``, ``age``, ``sex``,
``localization`` (optional; missing values become unknown, -1). Images are found anywhere below
``root`` by file stem (``HAM10000_images_part_1/``, ``_part_2/`` or ``images/``). Splits hold
whole lesions (one lesion's images never straddle two splits) and keep each diagnosis's share.

``ham10000`` fixes the seven HAM10000 diagnosis codes (another code is an error); ``isic`` takes
its classes from ``class_names`` or, when that is not given, from the codes found in the CSV.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.info import DataInfo
from datamodules.phrasing import AGE_NAMES, age_bin, split_frames
from datamodules.sources.base import SPLITS, SourceRequest, SourceTable, SplitTable, check_nonempty, stratified_group_split, subsample
from datamodules.sources.decode import decode_split, index_images
from datamodules.sources.metadata_captions import FRAMES, metadata_caption

HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
REQUIRED = ("image_id", "lesion_id", "dx")
OPTIONAL = ("dx_type", "age", "sex", "localization")
CSV_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata", "metadata.csv")
log = logging.getLogger(__name__)
UNKNOWN = {"", "unknown", "nan", "none", "unk"}


def find_csv(source: str, root: Path, csv: Path | None) -> Path:
    if csv is not None:
        path = Path(csv).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{source}: metadata CSV {path} does not exist")
        return path
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{source}: no metadata CSV in {root} (looked for {', '.join(CSV_NAMES)}); set data.csv=FILE")


def read_metadata(source: str, path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "dx": str})
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"{source}: metadata CSV {path} lacks column(s) {missing}; expected {list(REQUIRED)} "
                         f"(and optionally {list(OPTIONAL)}), found {list(table.columns)}")
    for column in REQUIRED:
        empty = table[column].isna()
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise ValueError(f"{source}: {path} row {row + 2} has no {column!r}")
    return table


def known(values: pd.Series) -> list[str]:
    return sorted({str(v).strip() for v in values.dropna() if str(v).strip().lower() not in UNKNOWN})


def encode(values: pd.Series | None, vocabulary: tuple[str, ...], rows: int) -> np.ndarray:
    if values is None:
        return np.full(rows, -1, np.int64)
    lookup = {v: i for i, v in enumerate(vocabulary)}
    return np.array([lookup.get(str(v).strip(), -1) for v in values], np.int64)


def load(request: SourceRequest, source: str = "ham10000") -> SourceTable:
    root = request.require_root(source)
    path = find_csv(source, root, request.csv)
    table = read_metadata(source, path)
    dx = table["dx"].str.strip()
    class_names = tuple(request.class_names) if request.class_names else (HAM_CLASSES if source == "ham10000" else tuple(known(dx)))
    unknown = ~dx.isin(class_names)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ValueError(f"{source}: {path} row {row + 2} (image_id {table['image_id'].iloc[row]}) has unknown dx "
                         f"{dx.iloc[row]!r}; known classes: {list(class_names)} (set data.class_names to change them)")
    labels = dx.map({c: i for i, c in enumerate(class_names)}).to_numpy(np.int64)

    files = index_images(root)
    missing = [i for i in table["image_id"].to_numpy(str) if i not in files]
    if missing and request.on_bad_image != "skip":
        raise FileNotFoundError(f"{source}: {len(missing)} image(s) named in {path} are not under {root}, e.g. "
                                f"{missing[:5]} (set data.on_bad_image=skip to drop them)")
    if missing:
        log.warning("%s: skipping %d image(s) named in %s but not found under %s: %s", source, len(missing), path, root, missing[:20])
    vocab = {
        "localization": tuple(known(table["localization"])) if "localization" in table else (),
        "sex": ("female", "male"),
        "age": AGE_NAMES,
        "dx_type": tuple(known(table["dx_type"])) if "dx_type" in table else (),
    }
    attributes = {name: encode(table[name] if name in table else None, values, len(table)) for name, values in vocab.items() if name != "age"}
    ages = pd.to_numeric(table["age"], errors="coerce").to_numpy(float) if "age" in table else np.full(len(table), np.nan)
    attributes["age"] = np.array([age_bin(a) for a in ages], np.int64)
    attribute_classes = {name: vocab[name] for name in ("localization", "sex", "age", "dx_type") if vocab[name]}
    info = DataInfo(source=source, image_size=request.image_size, class_names=class_names,
                    attribute_classes=attribute_classes, skin_tones=False)

    split_of_row = stratified_group_split(labels, table["lesion_id"].to_numpy(str), (request.val_fraction, request.test_fraction), request.split_seed)
    image_ids, lesion_ids = table["image_id"].to_numpy(str), table["lesion_id"].to_numpy(str)
    present = np.array([i in files for i in image_ids], bool)
    chosen = {split: subsample(np.flatnonzero((split_of_row == code) & present), request.cap(split), request.split_seed + code)
              for code, split in enumerate(SPLITS)}
    empty = [split for split, rows in chosen.items() if len(rows) == 0]
    if empty:
        raise ValueError(f"{source}: split(s) {empty} are empty ({len(table)} rows in {path}, {int(present.sum())} images found); "
                         "give more images or change data.val_fraction / data.test_fraction / data.num_*")
    training_frames, _ = split_frames(len(FRAMES), request.holdout_paraphrases)
    splits: dict[str, SplitTable] = {}
    for split, rows in chosen.items():
        images, keep = decode_split(request, source, split, [files[image_ids[r]] for r in rows])
        rows = rows[np.asarray(keep, np.int64)]
        attrs = {name: values[rows] for name, values in attributes.items() if name in attribute_classes}
        inputs = [{"seed": request.split_seed * 1_000_003 + int(r), "age": float(ages[r])} for r in rows]
        splits[split] = SplitTable(
            images=images, labels=labels[rows], attributes=attrs, skin_tone=np.zeros(len(rows), np.int64),
            captions=[metadata_caption(info, int(labels[r]), {k: int(v[i]) for k, v in attrs.items()}, 0, frames=training_frames,
                                       **inputs[i]) for i, r in enumerate(rows)],
            image_ids=[str(image_ids[r]) for r in rows],
            lesion_ids=[str(lesion_ids[r]) for r in rows],
            caption_inputs=inputs,
        )
    check_nonempty(source, splits)  # every image of a split may have been skipped as unreadable
    return SourceTable(info=info, splits=splits)


def load_isic(request: SourceRequest) -> SourceTable:
    return load(request, source="isic")
