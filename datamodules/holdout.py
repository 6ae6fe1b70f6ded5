"""Held-out prompts: attribute combinations kept out of the training split, caption frames never trained on.

They test what a text encoder is for: does a generator draw descriptions it never saw?

- ``data.holdout_combos``: e.g. ``[{diagnosis: malignant, skin_tone: 6, hair: true}]``. A row
  matches a combination when every listed field matches; matching rows leave the training split
  (validation and test keep them). Fields: ``diagnosis`` (a class name), ``skin_tone`` (1-6 or
  I-VI) and any attribute of the source by its value name (``colours: 3`` is three colours);
  a two-valued attribute also takes true / false for its second / first value (``hair: true``
  is ``present``, ``border: true`` is ``irregular``).
- ``data.holdout_paraphrases``: the last k caption frames never caption a stored image; they
  caption the held-out paraphrase prompts only (``SkinDataModule.sample_conditions``).

``draw_conditions`` also draws the prompt sets that are not held out: the split's own mix, every
diagnosis equally often (``balanced``) and every skin tone equally often (``tone``: the rows of known
tone, ``DataInfo.tone_field``), each row with its own caption.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datamodules.captions import caption_for, frames_of
from datamodules.info import DataInfo
from datamodules.phrasing import ROMAN
from datamodules.sources.base import SplitTable

HOLDOUT_KINDS = (None, "paraphrase", "combo", "balanced", "tone")


@dataclass(frozen=True)
class Holdout:
    """Resolved held-out settings: combinations as {field: value index} and the held-out frame count."""

    combos: tuple[dict[str, int], ...] = ()
    paraphrases: int = 0

    def key(self) -> dict[str, Any]:
        return {"combos": [sorted(c.items()) for c in self.combos], "paraphrases": self.paraphrases}

    def __bool__(self) -> bool:
        return bool(self.combos) or self.paraphrases > 0


def _resolve_value(field: str, value: Any, names: Sequence[str]) -> int:
    if isinstance(value, bool) and len(names) == 2:
        return int(value)
    if str(value) in names:
        return list(names).index(str(value))
    hint = " (or true / false)" if len(names) == 2 else ""
    raise ValueError(f"data.holdout_combos: {field}={value!r} is not one of {list(names)}{hint}")


def resolve_combos(combos: Sequence[Mapping[str, Any]] | None, info: DataInfo) -> tuple[dict[str, int], ...]:
    """``data.holdout_combos`` as {``label`` | ``skin_tone`` | attribute: value index}; errors name the field."""
    resolved = []
    for combo in combos or ():
        if not isinstance(combo, Mapping) or not combo:
            raise ValueError(f"data.holdout_combos: each entry must be a non-empty mapping of field: value, got {combo!r}")
        fields: dict[str, int] = {}
        for field, value in combo.items():
            if field in ("diagnosis", "label"):
                fields["label"] = _resolve_value(field, value, info.class_names)
            elif field == "skin_tone":
                if not info.skin_tones:
                    raise ValueError(f"data.holdout_combos: source {info.source!r} has no skin tones")
                tone = ROMAN.index(value.upper()) + 1 if isinstance(value, str) and value.upper() in ROMAN else value
                if isinstance(tone, bool) or not isinstance(tone, int) or not 1 <= tone <= 6:
                    raise ValueError(f"data.holdout_combos: skin_tone={value!r} is not a Fitzpatrick type 1-6 (or I-VI)")
                fields["skin_tone"] = int(tone)
            elif field in info.attribute_classes:
                fields[field] = _resolve_value(field, value, info.attribute_classes[field])
            else:
                valid = ["diagnosis", *(["skin_tone"] if info.skin_tones else []), *info.attribute_names]
                raise ValueError(f"data.holdout_combos: unknown field {field!r}; source {info.source!r} has {valid}")
        resolved.append(fields)
    return tuple(resolved)


def matches(table: SplitTable, combos: Sequence[dict[str, int]]) -> np.ndarray:
    """(N,) bool: the rows of ``table`` that match any of ``combos`` (every field of one combination)."""
    hit = np.zeros(len(table), dtype=bool)
    for combo in combos:
        row_matches = np.ones(len(table), dtype=bool)
        for field, value in combo.items():
            column = table.labels if field == "label" else table.skin_tone if field == "skin_tone" else table.attributes[field]
            row_matches &= np.asarray(column) == value
        hit |= row_matches
    return hit


def fingerprint_with(fingerprint: str, holdout: Holdout) -> str:
    """The data fingerprint, changed by any held-out setting (it changes what a model trains on)."""
    if not holdout:
        return fingerprint
    text = json.dumps({"data": fingerprint, "holdout": holdout.key()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _rows_for(table: SplitTable, split: str, kind: str | None, holdout: Holdout) -> np.ndarray:
    if kind not in HOLDOUT_KINDS:
        raise ValueError(f"holdout must be None, 'paraphrase', 'combo', 'balanced' or 'tone', got {kind!r}")
    if kind == "paraphrase":
        if holdout.paraphrases == 0:
            raise ValueError("holdout='paraphrase' needs data.holdout_paraphrases > 0 (no caption frame is held out)")
        if table.caption_inputs is None:
            raise ValueError("holdout='paraphrase': this source's captions come from its files, not from caption frames")
    if kind != "combo":
        return np.arange(len(table))
    if not holdout.combos:
        raise ValueError("holdout='combo' needs data.holdout_combos (no attribute combination is held out)")
    if split == "train":
        raise ValueError("holdout='combo': the held-out combinations are not in the training split; use split='val' or 'test'")
    rows = np.flatnonzero(matches(table, holdout.combos))
    if len(rows) == 0:
        raise ValueError(f"holdout='combo': no {split} image matches data.holdout_combos {list(holdout.combos)}")
    return rows


def _class_balanced_rows(labels: np.ndarray, pool: np.ndarray, num: int, generator: torch.Generator) -> np.ndarray:
    """``num`` rows of ``pool``: each diagnosis of the split equally often (as near as ``num`` allows), rows within it at random.

    Rare diagnoses are the ones users generate images for; drawn in their natural share (HAM10000's
    dermatofibroma: 1 %) they get too few samples for a per-diagnosis figure.
    """
    classes = np.unique(labels)
    counts = np.full(len(classes), num // len(classes))
    counts[torch.randperm(len(classes), generator=generator)[: num % len(classes)].numpy()] += 1
    chosen = []
    for name, count in zip(classes, counts):
        members = pool[labels == name]
        chosen.append(members[torch.randint(len(members), (int(count),), generator=generator).numpy()])
    rows = np.concatenate(chosen)
    return rows[torch.randperm(len(rows), generator=generator).numpy()]


def draw_conditions(table: SplitTable, info: DataInfo, num: int, seed: int, *, split: str, kind: str | None,
                    holdout: Holdout) -> dict[str, Any]:
    """``num`` conditions drawn with replacement from ``table``'s rows (see ``SkinDataModule.sample_conditions``)."""
    pool = _rows_for(table, split, kind, holdout)
    generator = torch.Generator().manual_seed(seed)
    if kind == "balanced":
        rows = _class_balanced_rows(table.labels[pool], pool, num, generator)
    elif kind == "tone":
        tones = table.tones(info)
        pool = pool[tones[pool] > 0]
        if len(pool) == 0:
            raise ValueError(f"holdout='tone': no {split} image has a known skin tone")
        rows = _class_balanced_rows(tones[pool], pool, num, generator)
    else:
        rows = pool[torch.randint(len(pool), (num,), generator=generator).numpy()]
    if kind == "paraphrase":
        _, held_out = frames_of(info, holdout.paraphrases)
        captions = [
            caption_for(info, int(table.labels[r]), {k: int(v[r]) for k, v in table.attributes.items()}, int(table.skin_tone[r]),
                        frames=held_out, **table.caption_inputs[r])
            for r in rows
        ]
    else:
        captions = [table.captions[r] for r in rows]
    return {
        "caption": captions,
        "label": torch.as_tensor(table.labels[rows], dtype=torch.long),
        "attributes": {name: torch.as_tensor(values[rows], dtype=torch.long) for name, values in table.attributes.items()},
        "skin_tone": torch.as_tensor(table.skin_tone[rows], dtype=torch.long),
        "ita": torch.as_tensor(table.ita[rows], dtype=torch.float32),
        "tone_group": torch.as_tensor(table.tone_group[rows], dtype=torch.long),
    }
