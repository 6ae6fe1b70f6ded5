"""Captions: every frame of every source parses back to its values and is recognisable; diagnoses in clinical words."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from datamodules.captions import caption_for, frames_of, parse_caption, template_of, vocabulary_for
from datamodules.info import DataInfo
from datamodules.phrasing import AGE_NAMES, age_bin, fill_frame
from datamodules.sources.ham10000 import HAM_CLASSES
from datamodules.sources.phantom import ATTRIBUTE_CLASSES, CLASS_NAMES

PHANTOM = DataInfo("phantom", 32, CLASS_NAMES, dict(ATTRIBUTE_CLASSES), skin_tones=True)
SITES = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity", "neck", "scalp",
         "trunk", "upper extremity")
HAM = DataInfo("ham10000", 32, HAM_CLASSES, {"localization": SITES, "sex": ("female", "male"), "age": AGE_NAMES,
                                              "dx_type": ("confocal", "consensus", "follow_up", "histo")})
CLINICAL_NAMES = {  # words of the HAM10000 paper, each in at least one phrasing of its class
    "akiec": ("actinic keratosis", "intraepithelial carcinoma", "Bowen's disease"),
    "bcc": ("basal cell carcinoma",),
    "bkl": ("seborrhoeic keratosis", "solar lentigo", "lichen-planus-like keratosis"),
    "df": ("dermatofibroma",),
    "mel": ("melanoma",),
    "nv": ("melanocytic nevus",),
    "vasc": ("angioma", "angiokeratoma", "pyogenic granuloma"),
}


def phantom_row(rng: np.random.Generator) -> tuple[int, dict[str, int], int]:
    label = int(rng.integers(3))
    if label == 2:  # normal skin: no lesion attributes, hair known
        attributes = {name: -1 for name in ATTRIBUTE_CLASSES} | {"hair": int(rng.integers(2))}
    else:
        attributes = {name: int(rng.integers(len(values))) for name, values in ATTRIBUTE_CLASSES.items()}
        attributes["pigmentation"] = int(attributes["colours"] > 0)
    return label, attributes, int(rng.integers(1, 7))


@pytest.mark.parametrize("frame", range(len(vocabulary_for(PHANTOM).frames)))
def test_every_phantom_frame_parses_back_and_is_recognised(frame: int) -> None:
    rng = np.random.default_rng(frame)
    for seed in range(30):
        label, attributes, tone = phantom_row(rng)
        caption = caption_for(PHANTOM, label, attributes, tone, seed=seed, frames=(frame,), colour_names=["black", "red"])
        known = {k: v for k, v in attributes.items() if v >= 0}
        assert parse_caption(caption, PHANTOM) == {"label": label, "attributes": known, "skin_tone": tone}, caption
        assert template_of(caption, vocabulary_for(PHANTOM)) == frame, caption


@pytest.mark.parametrize("frame", range(len(vocabulary_for(HAM).frames)))
def test_every_ham10000_frame_parses_back_and_is_recognised(frame: int) -> None:
    rng = np.random.default_rng(frame)
    for seed in range(60):
        label = seed % len(HAM_CLASSES)
        age = float(rng.choice([np.nan, 5.0, 35.0, 50.0, 80.0]))
        attributes = {"localization": int(rng.integers(-1, len(SITES))), "sex": int(rng.integers(-1, 2)),
                      "age": age_bin(age), "dx_type": int(rng.integers(-1, 4))}
        caption = caption_for(HAM, label, attributes, seed=seed, frames=(frame,), age=age)
        known = {k: v for k, v in attributes.items() if v >= 0}
        assert parse_caption(caption, HAM) == {"label": label, **({"attributes": known} if known else {})}, caption
        assert template_of(caption, vocabulary_for(HAM)) == frame, caption
        assert not re.search(r"\b(unknown|nan|None)\b", caption), caption  # unknowns are left out, never invented


def test_diagnoses_are_named_in_clinical_words_with_site_age_and_sex() -> None:
    attributes = {"localization": SITES.index("back"), "sex": 1, "age": age_bin(45.0), "dx_type": 3}
    for code, words in CLINICAL_NAMES.items():
        captions = {caption_for(HAM, HAM_CLASSES.index(code), attributes, seed=seed, age=45.0) for seed in range(60)}
        text = " ".join(captions)
        assert all(word in text for word in words), (code, captions)
        assert len(captions) >= 10  # paraphrase variety
        for caption in captions:
            assert ("back" in caption) and ("45" in caption) and ("man" in caption or "male" in caption), caption
            assert f" {code} " not in f" {caption} "  # the code itself is never the name
    assert parse_caption("a seborrhoeic keratosis on the trunk", HAM)["label"] == HAM_CLASSES.index("bkl")
    assert parse_caption("Bowen's disease on the face", HAM)["label"] == HAM_CLASSES.index("akiec")
    assert parse_caption("a pyogenic granuloma", HAM)["label"] == HAM_CLASSES.index("vasc")


def test_frames_split_into_training_and_held_out() -> None:
    count = len(vocabulary_for(PHANTOM).frames)
    assert frames_of(PHANTOM, 0) == (tuple(range(count)), ())
    assert frames_of(PHANTOM, 2) == (tuple(range(count - 2)), (count - 2, count - 1))
    with pytest.raises(ValueError, match="holdout_paraphrases"):
        frames_of(HAM, count)  # at least one frame must stay for training
    for seed in range(40):  # a caption restricted to some frames uses only those
        caption = caption_for(HAM, 4, {}, seed=seed, frames=(1, 3))
        assert template_of(caption, vocabulary_for(HAM)) in (1, 3)


def test_fill_frame_drops_segments_with_unknown_slots() -> None:
    assert fill_frame("a {x}[ on the {y}][ of {z}]", {"x": "naevus", "y": None, "z": "a man"}) == "a naevus of a man"
    with pytest.raises(ValueError, match="needs slot"):
        fill_frame("a {x}", {"x": None})


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Which of ``modules`` the file at ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {node.module})  # "from package import module" imports the module
    return found & modules


def test_datamodules_imports_have_no_cycle() -> None:
    # The vocabulary a source needs lives with the source, so captions <-> phantom is no longer a circle.
    root = Path(__file__).resolve().parents[1]
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p for p in (root / "datamodules").rglob("*.py")}
    graph = {name: _imported_modules(path, set(modules)) - {name} for name, path in modules.items()}
    assert "datamodules.sources.phantom" in graph["datamodules.captions"]
    visiting, done = set(), set()

    def visit(name: str, trail: list[str]) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*trail, name])
        visiting.add(name)
        for imported in graph[name]:
            visit(imported, [*trail, name])
        visiting.discard(name)
        done.add(name)

    for name in graph:
        visit(name, [])
