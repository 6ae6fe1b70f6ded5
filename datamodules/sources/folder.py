"""Any image folder plus a CSV ``file,caption[,label][,split]`` (also what ``experiments.generate`` writes).

- ``file``: image path relative to the CSV's folder (or absolute).
- ``caption``: the text a text-conditioned model trains on; must not be empty.
- ``label`` (optional): class names or integer indices. Without it every image gets label 0
  of the single class ``unknown`` (a model conditioned on labels then learns nothing from them).
  Integer labels name classes ``"0" .. "K-1"`` unless ``data.class_names`` gives names.
  With ``data.class_names`` set, a label outside it is an error.
- ``split`` (optional): train / val / test per row; otherwise a seeded split stratified by label.
The CSV is ``root/captions.csv`` or ``data.csv=FILE``. Attributes and skin tone are unknown here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.info import DataInfo
from datamodules.sources.base import SPLITS, SourceRequest, SourceTable, SplitTable, check_nonempty, stratified_split, subsample
from datamodules.sources.decode import decode_split

log = logging.getLogger(__name__)
REQUIRED = ("file", "caption")


def class_vocabulary(values: pd.Series, given: tuple[str, ...] | None, path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    text = values.astype(str).str.strip()
    integers = text.str.fullmatch(r"\d+").all()
    if given:
        names = tuple(given)
        if integers and not set(text) <= set(names):
            codes = text.astype(int).to_numpy()
            bad = np.flatnonzero(codes >= len(names))
            if bad.size:
                raise ValueError(f"folder: {path} row {bad[0] + 2} has label {codes[bad[0]]}, outside class_names {list(names)}")
            return names, codes.astype(np.int64)
    elif integers:
        names = tuple(str(i) for i in range(int(text.astype(int).max()) + 1))
    else:
        names = tuple(sorted(set(text)))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = ~text.isin(names)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ValueError(f"folder: {path} row {row + 2} has unknown label {text.iloc[row]!r}; known: {list(names)}")
    return names, text.map(lookup).to_numpy(np.int64)


def load(request: SourceRequest) -> SourceTable:
    if request.csv is not None:
        path = Path(request.csv).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"folder: caption CSV {path} does not exist")
        base = Path(request.root).expanduser() if request.root is not None else path.parent
    else:
        base = request.require_root("folder")
        path = base / "captions.csv"
        if not path.is_file():
            raise FileNotFoundError(f"folder: no captions.csv in {base}; write one (file,caption[,label]) or set data.csv=FILE")
    table = pd.read_csv(path, dtype={"file": str, "caption": str}, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"folder: {path} lacks column(s) {missing}; expected {list(REQUIRED)} "
                         f"(and optionally ['label', 'split']), found {list(table.columns)}")
    empty = table["caption"].str.strip() == ""
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise ValueError(f"folder: {path} row {row + 2} ({table['file'].iloc[row]}) has an empty caption")
    if "label" in table.columns:
        class_names, labels = class_vocabulary(table["label"], tuple(request.class_names) if request.class_names else None, path)
    else:
        class_names, labels = ("unknown",), np.zeros(len(table), np.int64)
    files = [Path(f) if Path(f).is_absolute() else base / f for f in table["file"]]
    absent = [str(f) for f in files if not f.is_file()]
    if absent and request.on_bad_image != "skip":
        raise FileNotFoundError(f"folder: {len(absent)} file(s) listed in {path} do not exist, e.g. {absent[:5]}")
    if absent:
        log.warning("folder: skipping %d file(s) listed in %s that do not exist: %s", len(absent), path, absent[:20])
    present = np.array([f.is_file() for f in files], bool)
    if "split" in table.columns:
        names = table["split"].astype(str).str.strip().str.lower()
        wrong = ~names.isin(SPLITS)
        if wrong.any():
            row = int(np.flatnonzero(wrong.to_numpy())[0])
            raise ValueError(f"folder: {path} row {row + 2} has split {names.iloc[row]!r}; expected one of {list(SPLITS)}")
        split_of_row = names.map({s: i for i, s in enumerate(SPLITS)}).to_numpy()
    else:
        split_of_row = stratified_split(labels, (request.val_fraction, request.test_fraction), request.split_seed)
    info = DataInfo(source="folder", image_size=request.image_size, class_names=class_names)
    chosen = {split: subsample(np.flatnonzero((split_of_row == code) & present), request.cap(split), request.split_seed + code)
              for code, split in enumerate(SPLITS)}
    empty_splits = [split for split, rows in chosen.items() if len(rows) == 0]
    if empty_splits:
        raise ValueError(f"folder: split(s) {empty_splits} of {path} are empty ({len(table)} rows); add images, a 'split' "
                         "column, or change data.val_fraction / data.test_fraction")
    splits: dict[str, SplitTable] = {}
    for split, rows in chosen.items():
        images, keep = decode_split(request, "folder", split, [files[r] for r in rows])
        rows = rows[np.asarray(keep, np.int64)]
        splits[split] = SplitTable(
            images=images, labels=labels[rows], attributes={}, skin_tone=np.zeros(len(rows), np.int64),
            captions=[str(table["caption"].iloc[r]) for r in rows],
            image_ids=[str(table["file"].iloc[r]) for r in rows], lesion_ids=None,
        )
    check_nonempty("folder", splits)
    return SourceTable(info=info, splits=splits)
