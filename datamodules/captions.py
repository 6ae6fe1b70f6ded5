"""Captions of any data source: write one for chosen values, read the values back from a prompt.

Each source owns its vocabulary and frames (``datamodules.sources.phantom``,
``datamodules.sources.metadata_captions``); the machinery is ``datamodules.phrasing``. This
module picks the source's vocabulary from ``DataInfo.source``:

    phantom:   "dermoscopic image of a large malignant melanocytic lesion with an irregular border,
                an asymmetric shape and variegated pigmentation in three colours, on Fitzpatrick type V skin"
    ham10000:  "dermoscopy of a melanocytic nevus on the back of a 45-year-old man, confirmed by histopathology"
"""

from __future__ import annotations

from typing import Any

from datamodules.info import DataInfo
from datamodules.phrasing import AGE_NAMES, ROMAN, Vocabulary, age_bin, split_frames, template_of
from datamodules.phrasing import parse_caption as parse_with_vocabulary
from datamodules.sources import metadata_captions, phantom

__all__ = ["AGE_NAMES", "ROMAN", "age_bin", "caption_for", "frames_of", "parse_caption", "template_of", "vocabulary_for"]


def vocabulary_for(info: DataInfo) -> Vocabulary:
    """The caption vocabulary of ``info``'s source (metadata-style for every source but the phantom)."""
    return phantom.VOCABULARY if info.source == "phantom" else metadata_captions.VOCABULARY


def frames_of(info: DataInfo, holdout_paraphrases: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(training frames, held-out frames) of ``info``'s captions with ``holdout_paraphrases`` held out."""
    return split_frames(len(vocabulary_for(info).frames), holdout_paraphrases)


def caption_for(info: DataInfo, label: int, attributes: dict[str, int], skin_tone: int = 0, seed: int = 0, *,
                frames: tuple[int, ...] | None = None, **inputs: Any) -> str:
    """A caption for chosen values in the style of ``info``'s source, in one of ``frames`` (default any).

    ``inputs``: the source's extra caption inputs (``SplitTable.caption_inputs``: ``age`` in years and the ITA
    ``tone_group`` for metadata sources, ``colour_names`` for the phantom, whose captions name the Fitzpatrick type).
    """
    if info.source == "phantom":
        inputs.pop("tone_group", None)
        return phantom.phantom_caption(label, attributes, skin_tone, seed, frames=frames, **inputs)
    return metadata_captions.metadata_caption(info, label, attributes, skin_tone, seed, frames=frames, **inputs)


def parse_caption(text: str, info: DataInfo) -> dict[str, Any]:
    """Label, attributes and skin tone named in a free prompt; anything not named is left out.

    Returns e.g. ``{"label": 1, "attributes": {"border": 1}, "skin_tone": 5}``.
    """
    return parse_with_vocabulary(text, info, vocabulary_for(info))
