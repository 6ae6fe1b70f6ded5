"""The caption machinery every source shares: frames with slots, seeded paraphrases, keyword parsing.

A source's ``Vocabulary`` lists its phrasings per (attribute, value) and its caption frames.
A frame is one sentence structure with ``{slot}`` placeholders; a ``[...]`` segment is written
only when every slot in it is known, so unknown values are left out, never invented:

    "dermoscopy of {subject}[ showing {clauses}][, {hair}]"

Frames are the paraphrases that can be held out of training (``data.holdout_paraphrases``):
the last ``k`` frames of a vocabulary never caption a training image. ``template_of`` tells
which frame wrote a caption (each frame's fixed words differ from every other's).

``parse_caption`` inverts any frame by keywords (longest phrase wins, so "irregular border"
beats "regular border" and "no hair" beats "hair"), so a user's prompt maps onto the labels a
judge can score. This module knows no source; the sources own their vocabularies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamodules.info import DataInfo

ROMAN = ("I", "II", "III", "IV", "V", "VI")
NUMBER_WORDS = ("one", "two", "three", "four", "five")
AGE_BINS = ((0, 29), (30, 44), (45, 59), (60, 74), (75, 200))
AGE_NAMES = ("0-29", "30-44", "45-59", "60-74", "75+")
# ITA tone groups 1-6 (``datamodules.tone.TONE_GROUPS``) in words; every phrasing names the skin, so "dark brown
# pigment" or "light brown" is never read as a tone.
TONE_GROUP_PHRASES = (
    ("very light skin", "a very light skin tone"),
    ("light skin", "a light skin tone"),
    ("intermediate skin", "an intermediate skin tone"),
    ("tan skin", "a tan skin tone"),
    ("brown skin", "a brown skin tone"),
    ("dark skin", "a dark skin tone"),
)
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Vocabulary:
    """Phrasings and caption frames of one source.

    Attributes:
        phrases: attribute (``label`` for the diagnosis) -> value name -> phrasings; captions
            pick among them, the parser accepts all.
        parse_only: extra phrasings the parser accepts but captions never use.
        frames: caption frames, each a sentence structure with ``{slot}`` and ``[...]`` parts.
    """

    phrases: dict[str, dict[str, tuple[str, ...]]]
    parse_only: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    frames: tuple[str, ...] = ()

    def phrasings(self, attribute: str, value: str) -> tuple[str, ...]:
        return self.phrases.get(attribute, {}).get(value, (value.replace("_", " "),))


def age_bin(age: float | None) -> int:
    """Bin index of an age in years; -1 for missing."""
    if age is None or not np.isfinite(age):
        return -1
    return next(i for i, (low, high) in enumerate(AGE_BINS) if age <= high)


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def value_name(info: DataInfo, attributes: dict[str, int], name: str) -> str | None:
    """The value name of attribute ``name`` (None when unknown or out of range)."""
    index = int(attributes.get(name, -1))
    values = info.attribute_classes.get(name, ())
    return values[index] if 0 <= index < len(values) else None


# ---------------------------------------------------------------------------------------------
# frames: writing, recognising, holding out
def split_frames(count: int, holdout: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(training frames, held-out frames): the last ``holdout`` of ``count`` are held out."""
    if not 0 <= holdout < count:
        raise ValueError(f"data.holdout_paraphrases must be in [0, {count - 1}] (the captions have {count} frames), got {holdout}")
    return tuple(range(count - holdout)), tuple(range(count - holdout, count))


def choose_frame(rng: np.random.Generator, frames: tuple[int, ...] | list[int] | None, count: int) -> int:
    """One frame index from ``frames`` (None: any of ``count``)."""
    options = tuple(range(count)) if frames is None else tuple(frames)
    if not options:
        raise ValueError("no caption frame to choose from")
    return options[int(rng.integers(len(options)))]


def fill_frame(frame: str, slots: dict[str, str | None]) -> str:
    """``frame`` with its slots filled; a ``[...]`` segment with an unknown (None) slot is dropped."""

    def segment(match: re.Match[str]) -> str:
        known = all(slots.get(name) is not None for name in _SLOT.findall(match.group(1)))
        return match.group(1) if known else ""

    text = _SEGMENT.sub(segment, frame)
    missing = [name for name in _SLOT.findall(text) if slots.get(name) is None]
    if missing:
        raise ValueError(f"caption frame {frame!r} needs slot(s) {missing}")
    return " ".join(text.format(**slots).split())


def frame_pattern(frame: str) -> re.Pattern[str]:
    """A regular expression matching every caption ``frame`` can write (slots as wildcards)."""
    parts, position = [], 0
    for match in _SEGMENT.finditer(frame):
        parts.append(_literal_pattern(frame[position : match.start()]))
        parts.append(f"(?:{_literal_pattern(match.group(1))})?")
        position = match.end()
    parts.append(_literal_pattern(frame[position:]))
    return re.compile("".join(parts), re.DOTALL)


def _literal_pattern(text: str) -> str:
    pieces = _SLOT.split(text)  # literal, slot name, literal, ...
    return "".join(re.escape(piece) if i % 2 == 0 else ".+?" for i, piece in enumerate(pieces))


def template_of(caption: str, vocabulary: Vocabulary) -> int | None:
    """Index of the one frame that can have written ``caption`` (None when no or several frames fit)."""
    fits = [i for i, frame in enumerate(vocabulary.frames) if frame_pattern(frame).fullmatch(caption)]
    return fits[0] if len(fits) == 1 else None


# ---------------------------------------------------------------------------------------------
# parsing
def _patterns(vocabulary: Vocabulary, attribute: str, value: str) -> list[str]:
    phrases = [*vocabulary.phrasings(attribute, value), *vocabulary.parse_only.get((attribute, value), ()), value.replace("_", " ")]
    return sorted({p.lower() for p in phrases}, key=len, reverse=True)


def _longest_match(text: str, options: dict[int, list[str]]) -> int | None:
    best, best_length = None, 0
    for index, phrases in options.items():
        for phrase in phrases:
            if len(phrase) > best_length and re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text):
                best, best_length = index, len(phrase)
    return best


def _parse_attribute(text: str, name: str, values: tuple[str, ...], vocabulary: Vocabulary) -> int | None:
    if name == "colours":
        match = re.search(r"\b(one|two|three|four|five|[1-5])\s+colou?rs?\b|\bsingle[- ]colou?r", text)
        if not match:
            return None
        word = match.group(1) or "one"
        count = NUMBER_WORDS.index(word) + 1 if word in NUMBER_WORDS else int(word)
        return values.index(str(count)) if str(count) in values else count - 1
    if name == "age":
        match = re.search(r"\b(\d{1,3})[- ]years?[- ]old\b|\baged (\d{1,3})", text)
        if match and (index := age_bin(float(match.group(1) or match.group(2)))) < len(values):
            return index
        return None
    return _longest_match(text, {i: _patterns(vocabulary, name, v) for i, v in enumerate(values)})


def parse_caption(text: str, info: DataInfo, vocabulary: Vocabulary) -> dict[str, Any]:
    """Label, attributes and skin tone named in a free prompt; anything not named is left out.

    Returns e.g. ``{"label": 1, "attributes": {"border": 1}, "skin_tone": 5}``, and ``"tone_group"`` (1-6) where
    the data has ITA tone groups and the text names one ("brown skin").
    """
    text = " ".join(text.lower().split())
    out: dict[str, Any] = {}
    label = _longest_match(text, {i: _patterns(vocabulary, "label", name) for i, name in enumerate(info.class_names)})
    if label is not None:
        out["label"] = label
    attributes = {}
    for name, values in info.attribute_classes.items():
        if (value := _parse_attribute(text, name, values, vocabulary)) is not None:
            attributes[name] = value
    if attributes:
        out["attributes"] = attributes
    if info.tone_groups:
        phrases = {group: sorted({p.lower() for p in TONE_GROUP_PHRASES[group]} | {p.lower().removeprefix("a ").removeprefix("an ")
                                 for p in TONE_GROUP_PHRASES[group]}, key=len, reverse=True) for group in range(len(TONE_GROUP_PHRASES))}
        if (group := _longest_match(text, phrases)) is not None:
            out["tone_group"] = group + 1
    if info.skin_tones:
        match = re.search(r"(?:fitzpatrick|skin|phototype)(?:\s+skin)?(?:\s+(?:photo)?type)?\s+(vi|iv|v|iii|ii|i|[1-6])\b", text)
        if match:
            token = match.group(1)
            out["skin_tone"] = int(token) if token.isdigit() else ROMAN.index(token.upper()) + 1
    return out
