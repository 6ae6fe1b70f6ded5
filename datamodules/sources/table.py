"""What the sources described by a CSV (``folder``, ``ham10000``/``isic``) share.

Reading the CSV so that every problem names the file and the row (the line of the record: the
header is row 1): text that is not UTF-8, a header with no rows, a row with more or fewer fields
than the header (an unquoted comma in a caption), an empty required value, a duplicated image.
Then finding the images, choosing the split rows, decoding each split into the cache and reading its skin tone.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.cache import U8Images
from datamodules.sources.base import SPLITS, SourceRequest, SplitTable, check_nonempty, subsample
from datamodules.sources.decode import decode_split
from datamodules.sources.tone_split import split_tones
from datamodules.tone import ToneTable

log = logging.getLogger(__name__)


def _decode_utf8(source: str, path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{source}: {path} is not UTF-8 text: byte {data[error.start]:#04x} at offset {error.start} (row {line}). "
            "Save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_table(source: str, path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """The CSV's rows as strings (empty cells ""), indexed by row number; clear errors for malformed files."""
    reader = csv.reader(io.StringIO(_decode_utf8(source, path), newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ValueError(f"{source}: {path} is empty; expected a header {list(required)} and one row per image") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{source}: {path} lacks column(s) {missing}; expected {list(required)} "
                         f"(and optionally {list(optional)}), found {header}")
    records, rows = [], []
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # a field over csv.field_size_limit, a stray NUL, ...
            raise ValueError(f"{source}: {path} row {reader.line_num}: {error}; is a quote left open, or a whole "
                             "file pasted into one cell?") from None
        if not any(field.strip() for field in record):
            continue  # blank line
        if len(record) != len(header):
            raise ValueError(
                f"{source}: {path} row {reader.line_num} has {len(record)} fields where the header has {len(header)} "
                f"({', '.join(header)}); quote a value that contains a comma, e.g. img.png,\"a lesion, irregular border\",nv"
            )
        records.append([field.strip() for field in record])
        rows.append(reader.line_num)
    if not records:
        raise ValueError(f"{source}: {path} has a header but no rows")
    return pd.DataFrame(records, columns=header, index=pd.Index(rows, name="row"))


def rows_where(table: pd.DataFrame | pd.Series, mask: np.ndarray | pd.Series) -> list[int]:
    """Row numbers (as in ``read_table``'s index) where ``mask`` holds."""
    return [int(r) for r in table.index[np.asarray(mask, bool)]]


def _listed(rows: list[int], limit: int = 5) -> str:
    return ", ".join(str(r) for r in rows[:limit]) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def check_filled(source: str, path: Path, table: pd.DataFrame, columns: Sequence[str]) -> None:
    """Every row has a value in each of ``columns``."""
    for column in columns:
        empty = rows_where(table, table[column] == "")
        if empty:
            raise ValueError(f"{source}: {path} row(s) {_listed(empty)} have no {column!r}; give every row one")


def check_unique(source: str, path: Path, table: pd.DataFrame, keys: Sequence[str], column: str) -> None:
    """No two rows name the same image (``keys``: one normalised key per row), which would put it in two splits."""
    series = pd.Series(list(keys), index=table.index)
    duplicated = series[series.duplicated(keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        rows = [int(r) for r in duplicated.index[duplicated == first]]
        raise ValueError(f"{source}: {path} lists {column} {table[column].loc[rows[0]]!r} in rows {_listed(rows)} "
                         f"({duplicated.nunique()} image(s) listed more than once); list each image once, or it can "
                         "land in two splits")


def present_rows(source: str, path: Path, table: pd.DataFrame, present: np.ndarray, names: Sequence[str],
                 on_bad_image: str, where: str) -> np.ndarray:
    """``present`` (one bool per row), after failing on absent images unless ``on_bad_image=skip``."""
    absent = [names[i] for i in np.flatnonzero(~present)]
    if absent and on_bad_image != "skip":
        raise FileNotFoundError(f"{source}: {len(absent)} image(s) listed in {path} are not {where}, e.g. "
                                f"{absent[:5]} (set data.on_bad_image=skip to drop them)")
    if absent:
        log.warning("%s: skipping %d image(s) listed in %s but not %s: %s", source, len(absent), path, where, absent[:20])
    return present


def choose_rows(source: str, path: Path, request: SourceRequest, split_of_row: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    """Positions of each split's rows (capped by ``data.num_*``); an empty split is an error."""
    chosen = {split: subsample(np.flatnonzero((split_of_row == code) & present), request.cap(split), request.split_seed + code)
              for code, split in enumerate(SPLITS)}
    empty = [split for split, rows in chosen.items() if len(rows) == 0]
    if empty:
        raise ValueError(f"{source}: split(s) {empty} are empty ({len(split_of_row)} rows in {path}, {int(present.sum())} "
                         "images found); give more images or change data.val_fraction / data.test_fraction / data.num_*")
    return chosen


def decode_splits(
    request: SourceRequest, source: str, chosen: dict[str, np.ndarray], file_of: Callable[[int], Path],
    make: Callable[[U8Images, np.ndarray, ToneTable], SplitTable], mask_of: Callable[[int], Path | None] | None = None,
) -> dict[str, SplitTable]:
    """Decode each split's files into the cache, read their skin tone (with the lesion mask ``mask_of(row)`` where
    the data set has one) and build its table from the rows that decoded."""
    splits: dict[str, SplitTable] = {}
    for split, rows in chosen.items():
        images, keep = decode_split(request, source, split, [file_of(int(r)) for r in rows])
        rows = rows[np.asarray(keep, np.int64)]
        masks = [mask_of(int(r)) for r in rows] if mask_of is not None else None
        tones = split_tones(request, source, split, images, masks, [file_of(int(r)) for r in rows] if masks else None)
        splits[split] = make(images, rows, tones)
    check_nonempty(source, splits)  # every image of a split may have been skipped as unreadable
    return splits
