"""Captions of the metadata sources (HAM10000, ISIC, DermaMNIST, folder prompts): diagnosis, site, patient.

The diagnosis is named in the words of the HAM10000 paper and dermatology reports, e.g.

    "dermoscopy of a basal cell carcinoma on the face of a 70-year-old man, confirmed by histopathology"
    "a dermoscopic photograph: vascular lesion (angioma, angiokeratoma, pyogenic granuloma), lower extremity, woman aged 45"

Site (localization), age and sex appear where the metadata knows them, and the skin tone where it is
known (a Fitzpatrick type) or read with confidence from the healthy skin (an ITA group, "on brown skin"). Seven frames (sentence
structures) and several phrasings per diagnosis give paraphrase variety; the last frames are the
ones ``data.holdout_paraphrases`` keeps out of training.
"""

from __future__ import annotations

import numpy as np

from datamodules.info import DataInfo
from datamodules.phrasing import ROMAN, TONE_GROUP_PHRASES, Vocabulary, choose_frame, fill_frame, pick, value_name

PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "label": {  # HAM10000 diagnosis codes; other class names are written as they are
        "akiec": ("actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
                  "actinic keratosis or intraepithelial carcinoma (Bowen's disease)", "actinic keratosis or Bowen's disease"),
        "bcc": ("basal cell carcinoma", "basal cell carcinoma (BCC)", "basal-cell carcinoma"),
        "bkl": ("benign keratosis-like lesion (seborrhoeic keratosis / solar lentigo / lichen-planus-like keratosis)",
                "benign keratosis (seborrhoeic keratosis, solar lentigo or lichen-planus-like keratosis)",
                "benign keratosis-like lesion"),
        "df": ("dermatofibroma", "dermatofibroma (benign fibrous histiocytoma)"),
        "mel": ("melanoma", "malignant melanoma", "cutaneous melanoma"),
        "nv": ("melanocytic nevus", "benign melanocytic naevus", "melanocytic naevus (mole)"),
        "vasc": ("vascular lesion (angioma, angiokeratoma, pyogenic granuloma)",
                 "vascular lesion such as an angioma, angiokeratoma or pyogenic granuloma",
                 "benign vascular lesion (angioma, angiokeratoma, pyogenic granuloma or haemorrhage)"),
        "unknown": ("skin lesion",),
    },
    "sex": {"male": ("man", "male patient"), "female": ("woman", "female patient")},
    "dx_type": {"histo": ("confirmed by histopathology", "histopathologically confirmed"),
                "follow_up": ("diagnosed at follow-up", "stable at follow-up"),
                "consensus": ("diagnosed by expert consensus", "by expert consensus"),
                "confocal": ("confirmed by confocal microscopy", "by in-vivo confocal microscopy")},
    "localization": {"genital": ("genital area", "genital"), "acral": ("acral skin", "acral"),
                     "lower extremity": ("lower extremity", "leg"), "upper extremity": ("upper extremity", "arm")},
}
PARSE_ONLY = {
    ("label", "akiec"): ("actinic keratosis", "intraepithelial carcinoma", "bowen's disease", "solar keratosis"),
    ("label", "bcc"): ("basalioma",),
    ("label", "bkl"): ("benign keratosis", "seborrhoeic keratosis", "seborrheic keratosis", "solar lentigo",
                       "lichen-planus-like keratosis", "lichen planus-like keratosis"),
    ("label", "df"): ("fibrous histiocytoma",),
    ("label", "nv"): ("nevus", "naevus", "mole", "benign mole", "melanocytic naevus"),
    ("label", "vasc"): ("vascular lesion", "angioma", "haemangioma", "hemangioma", "angiokeratoma", "pyogenic granuloma"),
    ("sex", "male"): ("male", "men"),
    ("sex", "female"): ("female", "women"),
    ("dx_type", "histo"): ("histopathology", "histology", "biopsy"),
    ("dx_type", "follow_up"): ("follow-up", "follow up"),
    ("dx_type", "consensus"): ("consensus",),
    ("dx_type", "confocal"): ("confocal",),
}
FRAMES = tuple(frame + "[, Fitzpatrick skin type {tone}][, on {tone_group}]" for frame in (
    "dermoscopic image of {a_dx}[ on the {site}][ of {a_patient}][, {confirmation}]",
    "dermoscopy of {a_dx}[ on the {site}][ in {a_patient}][, {confirmation}]",
    "dermatoscopic view[ of the {site}][ of {a_patient}] showing {a_dx}[, {confirmation}]",
    "a dermoscopic photograph: {dx}[, {site}][, {patient}][; {confirmation}]",
    "[{a_patient}, ]{a_dx}[ located on the {site}][ ({confirmation})], as seen through a dermatoscope",
    "close-up under polarised dermoscopy of {a_dx}[ on the {site}][, {patient}][, {confirmation}]",
    "{a_dx}[ on the {site}][ of {a_patient}][, {confirmation}], magnified with a dermatoscope",
))
VOCABULARY = Vocabulary(PHRASES, PARSE_ONLY, FRAMES)


def with_article(text: str) -> str:
    """``text`` after "a" or "an" as it is spoken ("an 80-year-old", "a basal cell carcinoma")."""
    digits = text[: len(text) - len(text.lstrip("0123456789"))]
    if digits:
        number = int(digits)
        vowel = number in (8, 11, 18) or 80 <= number < 90 or 800 <= number < 900
    else:
        vowel = text[:1].lower() in "aeiou"
    return ("an " if vowel else "a ") + text


def _patient(rng: np.random.Generator, sex: str | None, age: float | None, age_bin_name: str | None) -> str | None:
    person = pick(rng, VOCABULARY.phrasings("sex", sex)) if sex else "patient"
    if age is not None and np.isfinite(age):
        years = int(age)
        return pick(rng, (f"{years}-year-old {person}", f"{person} aged {years}"))
    if age_bin_name is not None:
        return f"{person} aged {age_bin_name.replace('+', ' or older')}"
    return person if sex else None


def metadata_caption(info: DataInfo, label: int, attributes: dict[str, int], skin_tone: int = 0, seed: int = 0,
                     age: float | None = None, tone_group: int = 0, *, frames: tuple[int, ...] | None = None) -> str:
    """Caption of one image from its metadata (unknowns left out), in one of ``frames`` (default: any).

    The skin is named by its Fitzpatrick type where the data records one, else by its ITA tone group
    (1-6, 0 unknown: only groups read with confidence are passed), e.g. "..., on brown skin".
    """
    rng = np.random.default_rng(seed)
    frame = choose_frame(rng, frames, len(FRAMES))
    name = info.class_names[label] if 0 <= label < info.num_classes else "unknown"
    diagnosis = pick(rng, VOCABULARY.phrasings("label", name))
    site = value_name(info, attributes, "localization")
    patient = _patient(rng, value_name(info, attributes, "sex"), age, value_name(info, attributes, "age"))
    confirmation = value_name(info, attributes, "dx_type")
    slots = {
        "dx": diagnosis,
        "a_dx": with_article(diagnosis),
        "site": pick(rng, VOCABULARY.phrasings("localization", site)) if site else None,
        "patient": patient,
        "a_patient": with_article(patient) if patient else None,
        "confirmation": pick(rng, VOCABULARY.phrasings("dx_type", confirmation)) if confirmation else None,
        "tone": ROMAN[skin_tone - 1] if 1 <= skin_tone <= 6 else None,
    }
    # drawn last, so a row's other phrasings are the same with or without a tone
    named_group = 1 <= tone_group <= len(TONE_GROUP_PHRASES) and not 1 <= skin_tone <= 6
    slots["tone_group"] = pick(rng, TONE_GROUP_PHRASES[tone_group - 1]) if named_group else None
    return fill_frame(FRAMES[frame], slots)
