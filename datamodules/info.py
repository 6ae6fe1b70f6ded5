"""What a model needs to know about its data, without holding the data.

Every generator is built from a ``DataInfo`` (sizes, label and attribute vocabularies) so that a
checkpoint can be rebuilt later without the data set on disk: the info is saved beside the
weights as a plain dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataInfo:
    """Vocabulary of one data source at one image size.

    Attributes:
        source: data source name (``phantom``, ``ham10000``, ``dermamnist``, ``folder``).
        image_size: side of the square images in pixels.
        class_names: diagnosis names; ``batch["label"]`` indexes this tuple.
        attribute_classes: every categorical attribute of ``batch["attributes"]`` and the names
            of its values; ``batch["attributes"][name]`` indexes ``attribute_classes[name]``.
            A value of -1 in a batch means unknown for that image.
        skin_tones: whether ``batch["skin_tone"]`` carries Fitzpatrick types (1-6, 0 unknown).
        tone_groups: whether ``batch["tone_group"]`` carries ITA tone groups (1-6 very light .. dark, 0
            unknown; ``datamodules.tone``), estimated from the pixels or given by the data set.
        fingerprint: short hash of the source, size and split membership; keys caches of things
            computed from the real data (domain classifier, real feature statistics).
    """

    source: str
    image_size: int
    class_names: tuple[str, ...]
    attribute_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skin_tones: bool = False
    fingerprint: str = ""
    tone_groups: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(self.attribute_classes)

    @property
    def tone_field(self) -> str | None:
        """The batch key that holds each image's skin tone for conditioning, captions, sampling and per-group
        figures: ``skin_tone`` where the data records Fitzpatrick types, else ``tone_group`` where it has ITA
        groups, else None. Both count 1-6 from light to dark, 0 unknown."""
        return "skin_tone" if self.skin_tones else "tone_group" if self.tone_groups else None

    def key_dict(self) -> dict[str, Any]:
        """``to_dict`` without ``tone_groups``: what keys results derived from the data (fingerprints, judges).

        The tone groups are read from the pixels those keys already hash, and no judge reads them, so a judge
        trained before the data had tone groups is still the judge of the same data.
        """
        return {key: value for key, value in self.to_dict().items() if key != "tone_groups"}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["attribute_classes"] = {k: list(v) for k, v in self.attribute_classes.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataInfo":
        return cls(
            source=str(data["source"]),
            image_size=int(data["image_size"]),
            class_names=tuple(data["class_names"]),
            attribute_classes={k: tuple(v) for k, v in dict(data.get("attribute_classes", {})).items()},
            skin_tones=bool(data.get("skin_tones", False)),
            fingerprint=str(data.get("fingerprint", "")),
            tone_groups=bool(data.get("tone_groups", False)),
        )
