"""Captions from attributes (templates with seeded paraphrases) and attributes from free prompts.

Template (each slot has several phrasings, picked by the seed; clause order is shuffled too):

    <prefix> <diagnosis> with <border>, <asymmetry> and <pigmentation>, <hair>, on Fitzpatrick type <tone> skin
    e.g. "dermoscopic image of a large malignant melanocytic lesion with an irregular border, an
          asymmetric shape and variegated pigmentation with three colours, on Fitzpatrick type V skin"

    HAM10000-style metadata: <prefix> <diagnosis> on the <site> of a <age>-year-old <sex>, <confirmation>
    e.g. "dermoscopic image of a melanocytic nevus on the back of a 45-year-old man, confirmed by histopathology"

Unknown values (-1, skin tone 0) are left out, never invented. ``parse_caption`` inverts the
templates by keywords (longest phrase wins, so "irregular border" beats "regular border" and
"no hair" beats "hair"), so a user's prompt maps onto the labels a judge can score.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from datamodules.info import DataInfo

PREFIXES = ("dermoscopic image of", "dermoscopy of", "dermatoscopic view of", "a dermoscopic photograph of")
ROMAN = ("I", "II", "III", "IV", "V", "VI")
NUMBER_WORDS = ("one", "two", "three", "four", "five")

# Phrasings per (attribute, value); the first of each is the canonical one, all are parsed.
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "label": {
        "benign": ("benign melanocytic lesion", "benign pigmented lesion", "benign nevus"),
        "malignant": ("malignant melanocytic lesion", "malignant pigmented lesion", "melanoma"),
        "normal": ("normal skin", "healthy skin without a lesion", "lesion-free skin"),
        # HAM10000 / DermaMNIST diagnosis codes
        "akiec": ("actinic keratosis", "intraepithelial carcinoma", "Bowen's disease"),
        "bcc": ("basal cell carcinoma",),
        "bkl": ("benign keratosis", "benign keratosis-like lesion", "seborrheic keratosis"),
        "df": ("dermatofibroma",),
        "mel": ("melanoma", "malignant melanoma"),
        "nv": ("melanocytic nevus", "benign mole", "nevus", "naevus"),
        "vasc": ("vascular lesion", "angioma", "haemangioma"),
        "unknown": ("skin lesion",),
    },
    "border": {"regular": ("a regular border", "a smooth, regular border", "regular, well-defined borders"),
               "irregular": ("an irregular border", "a ragged, irregular border", "irregular, notched borders")},
    "asymmetry": {"symmetric": ("a symmetric shape", "a symmetrical outline"),
                  "asymmetric": ("an asymmetric shape", "an asymmetrical outline")},
    "pigmentation": {"uniform": ("uniform pigmentation", "evenly distributed pigment"),
                     "variegated": ("variegated pigmentation", "multicoloured, variegated pigment")},
    "diameter": {"small": ("small",), "medium": ("medium-sized",), "large": ("large",)},
    "hair": {"absent": ("without hair", "hair-free", "with no hair"),
             "present": ("with hair in the field", "partly covered by hair", "with hairs")},
    "sex": {"male": ("man", "male patient"), "female": ("woman", "female patient")},
    "dx_type": {"histo": ("confirmed by histopathology", "histopathologically confirmed"),
                "follow_up": ("diagnosed at follow-up", "stable at follow-up"),
                "consensus": ("diagnosed by expert consensus", "by expert consensus"),
                "confocal": ("confirmed by confocal microscopy", "by in-vivo confocal microscopy")},
    "localization": {"genital": ("genital area", "genital"), "acral": ("acral skin", "acral"),
                     "lower extremity": ("lower extremity", "leg"), "upper extremity": ("upper extremity", "arm")},
}
# Parse-only synonyms (never generated).
EXTRA_PARSE = {
    ("label", "normal"): ("no lesion", "without a lesion", "healthy skin"),
    ("label", "malignant"): ("malignant",),
    ("label", "benign"): ("benign",),
    ("border", "regular"): ("regular border", "regular borders", "smooth border"),
    ("border", "irregular"): ("irregular border", "irregular borders", "ragged border"),
    ("asymmetry", "symmetric"): ("symmetric", "symmetrical"),
    ("asymmetry", "asymmetric"): ("asymmetric", "asymmetrical", "lopsided"),
    ("pigmentation", "uniform"): ("uniform", "single-colour", "single colour"),
    ("pigmentation", "variegated"): ("variegated", "multicoloured", "multicolored"),
    ("hair", "absent"): ("no hair", "hairless", "no hairs"),
    ("hair", "present"): ("hair", "hairs", "hairy"),
    ("sex", "male"): ("male", "men"),
    ("sex", "female"): ("female", "women"),
    ("dx_type", "histo"): ("histopathology", "histology", "biopsy"),
    ("dx_type", "follow_up"): ("follow-up", "follow up"),
    ("dx_type", "consensus"): ("consensus",),
    ("dx_type", "confocal"): ("confocal",),
}
AGE_BINS = ((0, 29), (30, 44), (45, 59), (60, 74), (75, 200))
AGE_NAMES = ("0-29", "30-44", "45-59", "60-74", "75+")


def age_bin(age: float) -> int:
    """Bin index of an age in years; -1 for missing."""
    if age is None or not np.isfinite(age):
        return -1
    return next(i for i, (low, high) in enumerate(AGE_BINS) if age <= high)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _phrases(attribute: str, value: str) -> tuple[str, ...]:
    return PHRASES.get(attribute, {}).get(value, (value.replace("_", " "),))


def _value(info: DataInfo, attributes: dict[str, int], name: str) -> str | None:
    index = int(attributes.get(name, -1))
    values = info.attribute_classes.get(name, ())
    return values[index] if 0 <= index < len(values) else None


def phantom_caption(label: int, attributes: dict[str, int], skin_tone: int, seed: int = 0,
                    colour_names: list[str] | None = None) -> str:
    """Caption of a phantom image; ``colour_names`` (when known) are listed after the colour count."""
    from datamodules.sources.phantom import ATTRIBUTE_CLASSES, CLASS_NAMES

    info = DataInfo("phantom", 0, CLASS_NAMES, ATTRIBUTE_CLASSES, skin_tones=True)
    rng = np.random.default_rng(seed)
    name = CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else None
    size = _value(info, attributes, "diameter")
    if name == "normal":
        subject = _pick(rng, PHRASES["label"]["normal"])
    else:
        noun = _pick(rng, PHRASES["label"][name]) if name else "pigmented lesion"
        subject = "a " + (f"{_pick(rng, _phrases('diameter', size))} " if size else "") + noun
    clauses = [_pick(rng, _phrases(k, v)) for k in ("border", "asymmetry") if (v := _value(info, attributes, k))]
    pigmentation, count = _value(info, attributes, "pigmentation"), int(attributes.get("colours", -1))
    if pigmentation or count >= 0:
        text = _pick(rng, _phrases("pigmentation", pigmentation)) if pigmentation else "pigmentation"
        if count >= 0:
            text += f" in {'one colour' if count == 0 else NUMBER_WORDS[count] + ' colours'}"
            if colour_names:
                text += f" ({_join(list(colour_names))})"
        clauses.append(text)
    rng.shuffle(clauses)
    caption = f"{_pick(rng, PREFIXES)} {subject}" + (f" with {_join(clauses)}" if clauses else "")
    if (hair := _value(info, attributes, "hair")) is not None:
        caption += ", " + _pick(rng, _phrases("hair", hair))
    if 1 <= skin_tone <= 6:
        caption += ", " + _pick(rng, ("on Fitzpatrick type {} skin", "on skin of Fitzpatrick type {}", "Fitzpatrick skin type {}")).format(ROMAN[skin_tone - 1])
    return caption


def metadata_caption(info: DataInfo, label: int, attributes: dict[str, int], skin_tone: int = 0, seed: int = 0,
                     age: float | None = None) -> str:
    """HAM10000-style caption: diagnosis, site, patient, how the diagnosis was made (unknowns left out)."""
    rng = np.random.default_rng(seed)
    name = info.class_names[label] if 0 <= label < info.num_classes else "unknown"
    noun = _pick(rng, _phrases("label", name))
    caption = f"{_pick(rng, PREFIXES)} {'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    if site := _value(info, attributes, "localization"):
        caption += f" on the {_pick(rng, _phrases('localization', site))}"
    sex = _value(info, attributes, "sex")
    person = _pick(rng, _phrases("sex", sex)) if sex else "patient"
    if age is not None and np.isfinite(age):
        years = int(age)
        caption += f" of {'an' if years in (8, 11, 18) or 80 <= years < 90 else 'a'} {years}-year-old {person}"
    elif (bin_name := _value(info, attributes, "age")) is not None:
        caption += f" of a {person} aged {bin_name.replace('+', ' or older')}"
    elif sex:
        caption += f" of a {person}"
    if dx_type := _value(info, attributes, "dx_type"):
        caption += ", " + _pick(rng, _phrases("dx_type", dx_type))
    if 1 <= skin_tone <= 6:
        caption += f", on Fitzpatrick type {ROMAN[skin_tone - 1]} skin"
    return caption


def caption_for(info: DataInfo, label: int, attributes: dict[str, int], skin_tone: int = 0, seed: int = 0) -> str:
    """A caption for chosen values, in the style of ``info``'s source."""
    if info.source == "phantom":
        return phantom_caption(label, attributes, skin_tone, seed)
    return metadata_caption(info, label, attributes, skin_tone, seed)


def _patterns(attribute: str, value: str) -> list[str]:
    phrases = list(_phrases(attribute, value)) + list(EXTRA_PARSE.get((attribute, value), ())) + [value.replace("_", " ")]
    return sorted({p.lower() for p in phrases}, key=len, reverse=True)


def _longest_match(text: str, options: dict[int, list[str]]) -> int | None:
    best, best_length = None, 0
    for index, phrases in options.items():
        for phrase in phrases:
            if len(phrase) > best_length and re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text):
                best, best_length = index, len(phrase)
    return best


def parse_caption(text: str, info: DataInfo) -> dict[str, Any]:
    """Label, attributes and skin tone named in a free prompt; anything not named is left out.

    Returns e.g. ``{"label": 1, "attributes": {"border": 1}, "skin_tone": 5}``.
    """
    text = " ".join(text.lower().split())
    out: dict[str, Any] = {}
    label = _longest_match(text, {i: _patterns("label", name) for i, name in enumerate(info.class_names)})
    if label is not None:
        out["label"] = label
    attributes: dict[str, int] = {}
    for name, values in info.attribute_classes.items():
        if name == "colours":
            match = re.search(r"\b(one|two|three|four|five|[1-5])\s+colou?rs?\b|\bsingle[- ]colou?r", text)
            if match:
                word = match.group(1) or "one"
                count = NUMBER_WORDS.index(word) + 1 if word in NUMBER_WORDS else int(word)
                attributes[name] = values.index(str(count)) if str(count) in values else count - 1
            continue
        if name == "age":
            match = re.search(r"\b(\d{1,3})[- ]year[- ]old\b|\baged (\d{1,3})", text)
            if match and (bin_index := age_bin(float(match.group(1) or match.group(2)))) < len(values):
                attributes[name] = bin_index
            continue
        value = _longest_match(text, {i: _patterns(name, v) for i, v in enumerate(values)})
        if value is not None:
            attributes[name] = value
    if attributes:
        out["attributes"] = attributes
    if info.skin_tones:
        match = re.search(r"(?:fitzpatrick|skin)(?:\s+skin)?(?:\s+(?:photo)?type)?\s+(vi|iv|v|iii|ii|i|[1-6])\b", text)
        if match:
            token = match.group(1)
            out["skin_tone"] = int(token) if token.isdigit() else ROMAN.index(token.upper()) + 1
    return out
