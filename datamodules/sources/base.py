"""What every source hands to ``SkinDataModule``: three splits of cached uint8 images plus their truth.

A source module exposes ``load(request: SourceRequest) -> SourceTable``. The data module turns
the tables into datasets; sources never deal with tensors, augmentation or loaders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.cache import SelectedRows, U8Images
from datamodules.info import DataInfo
from datamodules.transforms import Preprocess

SPLITS = ("train", "val", "test")


@dataclass
class SourceRequest:
    """Everything a source may need; each source reads the fields that apply to it."""

    image_size: int
    seed: int  # the phantom's rendering seed (the run's seed)
    cache_dir: Path
    split_seed: int = 0  # real sources: the train/val/test split, subsets and caption phrasings
    holdout_paraphrases: int = 0  # caption frames (the last ones) never used for stored captions
    root: Path | None = None
    csv: Path | None = None
    num_train: int | None = None  # phantom: split sizes; real sources: optional caps per split
    num_val: int | None = None
    num_test: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    class_names: tuple[str, ...] | None = None
    on_bad_image: str = "error"  # error | skip
    allow_upscale: bool = False
    preprocess: Preprocess = field(default_factory=Preprocess)
    progress: bool = True

    def preprocess_key(self) -> dict[str, Any]:
        return self.preprocess.key()

    def preprocess_array(self, images: np.ndarray) -> None:
        """Apply denoising / colour constancy in place to (N, H, W, 3) uint8 images."""
        self.preprocess.apply_(images)

    def cap(self, split: str) -> int | None:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]

    def require_root(self, source: str) -> Path:
        if self.root is None:
            raise ValueError(f"data source {source!r} needs a folder: set data.root=DIR")
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data source {source!r}: root folder {root} does not exist")
        return root


@dataclass
class SplitTable:
    """One split: images (N, H, W, 3) uint8 and per-image truth, all indexed alike."""

    images: U8Images | SelectedRows
    labels: np.ndarray  # (N,) int64
    attributes: dict[str, np.ndarray]  # name -> (N,) int64, -1 unknown
    skin_tone: np.ndarray  # (N,) int64, Fitzpatrick 1-6, 0 unknown
    captions: list[str]
    image_ids: list[str]
    lesion_ids: list[str] | None = None
    # Per row, the keyword arguments besides label, attributes and tone that rewrite its caption
    # in other frames (``captions.caption_for``: seed, age, colour names, ITA tone group); None for captions from files.
    caption_inputs: list[dict[str, Any]] | None = None
    ita: np.ndarray | None = None  # (N,) float64 degrees of the healthy skin, NaN unknown (``datamodules.tone``)
    tone_group: np.ndarray | None = None  # (N,) int64 ITA tone group 1-6 where confident, 0 unknown

    def __post_init__(self) -> None:
        if self.ita is None:
            self.ita = np.full(len(self.labels), np.nan)
        if self.tone_group is None:
            self.tone_group = np.zeros(len(self.labels), np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, rows: np.ndarray) -> SplitTable:
        """The split restricted to ``rows`` (indices, in order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return SplitTable(
            images=SelectedRows(self.images, rows), labels=self.labels[rows],
            attributes={name: values[rows] for name, values in self.attributes.items()}, skin_tone=self.skin_tone[rows],
            captions=_pick(self.captions, rows), image_ids=_pick(self.image_ids, rows),
            lesion_ids=_pick(self.lesion_ids, rows), caption_inputs=_pick(self.caption_inputs, rows),
            ita=self.ita[rows], tone_group=self.tone_group[rows],
        )

    def tones(self, info: DataInfo) -> np.ndarray:
        """(N,) int64 tone of each row in ``info.tone_field`` (Fitzpatrick type or ITA group, 1-6, 0 unknown)."""
        field = info.tone_field
        return np.zeros(len(self), np.int64) if field is None else np.asarray(getattr(self, field), np.int64)


def _pick(values: list[Any] | None, rows: np.ndarray) -> list[Any] | None:
    return [values[r] for r in rows] if values is not None else None


@dataclass
class SourceTable:
    info: DataInfo
    splits: dict[str, SplitTable]

    def fingerprint(self) -> str:
        """Short hash of source, size, vocabulary, split membership and pixels (keys caches of derived results).

        The pixels enter as a hash of the decoded arrays, so a changed phantom renderer or
        re-processed photos never reuse a stale judge, and a byte-identical copy of the data set
        (other modification times) is the same data.
        """
        text = json.dumps({"info": {**self.info.key_dict(), "fingerprint": ""},
                           "splits": {k: v.image_ids for k, v in self.splits.items()},
                           "pixels": {k: v.images.content for k, v in self.splits.items()}}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def subsample(indices: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """At most ``cap`` of ``indices``, drawn with ``seed`` and kept in their original order."""
    if cap is None or cap >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, size=int(cap), replace=False))


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Rows of a seeded, class-stratified ``fraction`` of a split, in their original order.

    Each class keeps ``round(fraction * n_c)`` of its ``n_c`` rows, at least one, so a rare class is
    never dropped. The kept rows are the first of one seeded permutation per class, so for one
    seed a smaller fraction's rows lie inside a larger one's (nested scarcity levels).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        kept.append(members[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def stratified_group_split(labels: np.ndarray, groups: np.ndarray, fractions: tuple[float, float], seed: int) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per row: whole groups per split, stratified by label.

    Groups (e.g. lesions) are taken label by label (a group's label is its most common row
    label), shuffled with ``seed``, and given to the split furthest below its target share of
    that label's rows, so each label keeps about the same proportions in every split.
    """
    rng = np.random.default_rng(seed)
    unique_groups, group_of_row = np.unique(groups, return_inverse=True)
    group_sizes = np.bincount(group_of_row)
    counts = np.zeros((len(unique_groups), int(labels.max()) + 1), np.int64)  # (groups, labels)
    np.add.at(counts, (group_of_row, labels), 1)
    group_label = counts.argmax(1)
    targets = np.array([1.0 - sum(fractions), fractions[0], fractions[1]])
    group_split = np.zeros(len(unique_groups), np.int64)
    for label in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == label))
        filled = np.zeros(3)
        total = group_sizes[members].sum()
        for g in members:
            deficit = targets * total - filled
            split = int(np.argmax(deficit))
            group_split[g] = split
            filled[split] += group_sizes[g]
    return group_split[group_of_row]


def stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> np.ndarray:
    """``stratified_group_split`` with one group per row."""
    return stratified_group_split(labels, np.arange(len(labels)), fractions, seed)


def check_nonempty(source: str, splits: dict[str, SplitTable]) -> None:
    for name, table in splits.items():
        if len(table) == 0:
            raise ValueError(
                f"data source {source!r}: the {name} split is empty; give more images or change "
                "data.val_fraction / data.test_fraction / data.num_{train,val,test}"
            )
