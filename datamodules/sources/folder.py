"""Any image folder plus a CSV ``file,caption[,label][,split]`` (also what ``experiments.generate`` writes).

- ``file``: image path relative to the CSV's folder (or absolute).
- ``caption``: the text a text-conditioned model trains on; must not be empty.
- ``label`` (optional): class names or integer indices, one in every row. Without the column every
  image gets label 0 of the single class ``unknown`` (a label-conditioned model then learns nothing from it).
  Integer labels name classes ``"0" .. "K-1"`` unless ``data.class_names`` gives names.
  With ``data.class_names`` set, a label outside it is an error.
- ``split`` (optional): train / val / test per row; otherwise a seeded split stratified by label.
- ``fitzpatrick`` (optional): the Fitzpatrick type, 1-6 or I-VI, empty where unknown. With it the data
  has skin types (``batch["skin_tone"]``), which then serve as its tone for conditioning, sampling and
  per-group figures.
- ``ita`` (optional): the Individual Typology Angle in degrees, empty where unknown; it wins over the
  ITA read from the pixels (``datamodules.tone``), which fills the rows without one.
The CSV is ``root/captions.csv`` or ``data.csv=FILE`` (UTF-8; quote captions that contain commas).
Each image is listed once (a duplicate would land in two splits). Attributes are unknown here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.cache import U8Images
from datamodules.info import DataInfo
from datamodules.phrasing import ROMAN
from datamodules.sources.base import SPLITS, SourceRequest, SourceTable, SplitTable, stratified_split
from datamodules.sources.table import (
    check_filled, check_unique, choose_rows, decode_splits, present_rows, read_table, rows_where,
)
from datamodules.tone import ToneTable, tone_group

REQUIRED = ("file", "caption")
OPTIONAL = ("label", "split", "fitzpatrick", "ita")


def fitzpatrick_column(table: pd.DataFrame, path: Path) -> np.ndarray:
    """(N,) int64 Fitzpatrick types 1-6 of the ``fitzpatrick`` column (0 where empty or absent)."""
    if "fitzpatrick" not in table.columns:
        return np.zeros(len(table), np.int64)
    text = table["fitzpatrick"].str.strip().str.upper()
    lookup = {**{str(i): i for i in range(1, 7)}, **{r: i + 1 for i, r in enumerate(ROMAN)}, "": 0}
    bad = rows_where(text, ~text.isin(lookup))
    if bad:
        raise ValueError(f"folder: {path} row {bad[0]} has fitzpatrick {table['fitzpatrick'].loc[bad[0]]!r}; expected 1-6 or I-VI "
                         "(empty where unknown)")
    return text.map(lookup).to_numpy(np.int64)


def ita_column(table: pd.DataFrame, path: Path) -> np.ndarray:
    """(N,) float64 ITA in degrees of the ``ita`` column (NaN where empty or absent)."""
    if "ita" not in table.columns:
        return np.full(len(table), np.nan)
    text = table["ita"].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(np.float64)
    bad = rows_where(text, (text != "") & ~np.isfinite(values) | (np.abs(np.nan_to_num(values)) > 180))
    if bad:
        raise ValueError(f"folder: {path} row {bad[0]} has ita {table['ita'].loc[bad[0]]!r}; expected an angle in degrees "
                         "between -180 and 180 (empty where unknown)")
    return values


def class_vocabulary(values: pd.Series, given: tuple[str, ...] | None, path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    text = values.astype(str).str.strip()
    integers = text.str.fullmatch(r"\d+").all()
    if given:
        names = tuple(given)
        if integers and not set(text) <= set(names):
            codes = text.astype(int).to_numpy()
            bad = np.flatnonzero(codes >= len(names))
            if bad.size:
                raise ValueError(f"folder: {path} row {text.index[bad[0]]} has label {codes[bad[0]]}, outside class_names {list(names)}")
            return names, codes.astype(np.int64)
    elif integers:
        names = tuple(str(i) for i in range(int(text.astype(int).max()) + 1))
    else:
        names = tuple(sorted(set(text)))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = rows_where(text, ~text.isin(names))
    if unknown:
        raise ValueError(f"folder: {path} row {unknown[0]} has unknown label {text.loc[unknown[0]]!r}; known: {list(names)}")
    return names, text.map(lookup).to_numpy(np.int64)


def find_csv(request: SourceRequest) -> tuple[Path, Path]:
    """The caption CSV and the folder its file names are relative to."""
    if request.csv is not None:
        path = Path(request.csv).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"folder: caption CSV {path} does not exist")
        return path, Path(request.root).expanduser() if request.root is not None else path.parent
    base = request.require_root("folder")
    path = base / "captions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"folder: no captions.csv in {base}; write one (file,caption[,label]) or set data.csv=FILE")
    return path, base


def split_of_rows(table: pd.DataFrame, labels: np.ndarray, request: SourceRequest, path: Path) -> np.ndarray:
    """The ``split`` column (train / val / test) or a seeded split stratified by label."""
    if "split" not in table.columns:
        return stratified_split(labels, (request.val_fraction, request.test_fraction), request.split_seed)
    names = table["split"].str.lower()
    wrong = rows_where(table, ~names.isin(SPLITS))
    if wrong:
        raise ValueError(f"folder: {path} row {wrong[0]} has split {names.loc[wrong[0]]!r}; expected one of {list(SPLITS)}")
    return names.map({s: i for i, s in enumerate(SPLITS)}).to_numpy()


def load(request: SourceRequest) -> SourceTable:
    path, base = find_csv(request)
    table = read_table("folder", path, REQUIRED, OPTIONAL)
    check_filled("folder", path, table, ["file", "caption"] + (["label"] if "label" in table.columns else []))
    files = [Path(f) if Path(f).is_absolute() else base / f for f in table["file"]]
    check_unique("folder", path, table, [str(f.resolve()) for f in files], "file")
    if "label" in table.columns:
        class_names, labels = class_vocabulary(table["label"], tuple(request.class_names) if request.class_names else None, path)
    else:
        class_names, labels = ("unknown",), np.zeros(len(table), np.int64)
    present = present_rows("folder", path, table, np.array([f.is_file() for f in files], bool), [str(f) for f in files],
                           request.on_bad_image, "files that exist")
    fitzpatrick, given_ita = fitzpatrick_column(table, path), ita_column(table, path)
    chosen = choose_rows("folder", path, request, split_of_rows(table, labels, request, path), present)
    info = DataInfo(source="folder", image_size=request.image_size, class_names=class_names,
                    skin_tones=bool((fitzpatrick > 0).any()), tone_groups=True)

    def make(images: U8Images, rows: np.ndarray, tones: ToneTable) -> SplitTable:
        given = given_ita[rows]
        known = np.isfinite(given)
        return SplitTable(
            images=images, labels=labels[rows], attributes={}, skin_tone=fitzpatrick[rows],
            captions=[str(table["caption"].iloc[r]) for r in rows],
            image_ids=[str(table["file"].iloc[r]) for r in rows], lesion_ids=None,
            ita=np.where(known, given, tones.ita), tone_group=np.where(known, tone_group(given), tones.group).astype(np.int64),
        )

    return SourceTable(info=info, splits=decode_splits(request, "folder", chosen, lambda r: files[r], make))
