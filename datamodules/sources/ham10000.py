"""HAM10000 and ISIC-style data: a folder of images plus a metadata CSV with one row per image.

Expected columns: ``image_id``, ``lesion_id``, ``dx`` (required) and ``dx_type``, ``age``, ``sex``,
``localization`` (optional; missing values become unknown, -1). Images are found anywhere below
``root`` by file stem (``HAM10000_images_part_1/``, ``_part_2/`` or ``images/``), lesion masks likewise
(``<image_id>_segmentation.png``, lesion white): where present they keep the lesion out of the skin-tone
reading (``datamodules.tone``; without one the lesion is found by Otsu's threshold). Splits hold
whole lesions (one lesion's images never straddle two splits) and keep each diagnosis's share.

``ham10000`` fixes the seven HAM10000 diagnosis codes (another code is an error); ``isic`` takes
its classes from ``class_names`` or, when that is not given, from the codes found in the CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.cache import U8Images
from datamodules.info import DataInfo
from datamodules.phrasing import AGE_NAMES, age_bin, split_frames
from datamodules.sources.base import SourceRequest, SourceTable, SplitTable, stratified_group_split
from datamodules.sources.decode import index_images
from datamodules.sources.metadata_captions import FRAMES, metadata_caption
from datamodules.sources.table import check_filled, check_unique, choose_rows, decode_splits, present_rows, read_table, rows_where
from datamodules.tone import ToneTable

HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
REQUIRED = ("image_id", "lesion_id", "dx")
OPTIONAL = ("dx_type", "age", "sex", "localization")
CSV_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata", "metadata.csv")
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
    table = read_table(source, path, REQUIRED, OPTIONAL)
    check_filled(source, path, table, REQUIRED)
    check_unique(source, path, table, list(table["image_id"]), "image_id")
    return table


def known(values: pd.Series) -> list[str]:
    return sorted({str(v).strip() for v in values if str(v).strip().lower() not in UNKNOWN})


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
    unknown = rows_where(table, ~dx.isin(class_names))
    if unknown:
        row = unknown[0]
        raise ValueError(f"{source}: {path} row {row} (image_id {table['image_id'].loc[row]}) has unknown dx "
                         f"{dx.loc[row]!r}; known classes: {list(class_names)} (set data.class_names to change them)")
    labels = dx.map({c: i for i, c in enumerate(class_names)}).to_numpy(np.int64)

    files = index_images(root)
    image_ids, lesion_ids = table["image_id"].to_numpy(str), table["lesion_id"].to_numpy(str)
    present = present_rows(source, path, table, np.array([i in files for i in image_ids], bool), list(image_ids),
                           request.on_bad_image, f"under {root}")
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
                    attribute_classes=attribute_classes, skin_tones=False, tone_groups=True)

    split_of_row = stratified_group_split(labels, lesion_ids, (request.val_fraction, request.test_fraction), request.split_seed)
    chosen = choose_rows(source, path, request, split_of_row, present)
    training_frames, _ = split_frames(len(FRAMES), request.holdout_paraphrases)

    def make(images: U8Images, rows: np.ndarray, tones: ToneTable) -> SplitTable:
        attrs = {name: values[rows] for name, values in attributes.items() if name in attribute_classes}
        groups = tones.group
        inputs = [{"seed": request.split_seed * 1_000_003 + int(r), "age": float(ages[r]), "tone_group": int(groups[i])}
                  for i, r in enumerate(rows)]
        return SplitTable(
            images=images, labels=labels[rows], attributes=attrs, skin_tone=np.zeros(len(rows), np.int64),
            captions=[metadata_caption(info, int(labels[r]), {k: int(v[i]) for k, v in attrs.items()}, 0, frames=training_frames,
                                       **inputs[i]) for i, r in enumerate(rows)],
            image_ids=[str(image_ids[r]) for r in rows],
            lesion_ids=[str(lesion_ids[r]) for r in rows],
            caption_inputs=inputs, ita=tones.ita, tone_group=groups,
        )

    def mask_of(row: int) -> Path | None:
        return files.get(f"{image_ids[row]}_segmentation")  # HAM10000's lesion masks, where present

    return SourceTable(info=info, splits=decode_splits(request, source, chosen, lambda r: files[image_ids[r]], make, mask_of))


def load_isic(request: SourceRequest) -> SourceTable:
    return load(request, source="isic")
