"""The embedded default source: procedural dermoscopy-like images with known ground truth.

Every image is drawn from ``np.random.default_rng([seed, split, index])``, so the same seed and
index give the same pixels and attributes whatever the split sizes are. Diagnosis shifts the
attribute odds (malignant lesions are more often large, irregular, asymmetric and variegated,
as the ABCD rule expects) without fixing them, so any combination occurs and can be asked for.
Malignant lesions always carry their own visible signs (blue-white veil, atypical network,
peripheral black dots), so the diagnosis too is judged from the image alone.

Attributes (-1 where not applicable, i.e. on normal skin without a lesion):
    border: regular / irregular (continuous irregularity thresholded at 0.5)
    asymmetry: symmetric / asymmetric (shape lobes and colour layout)
    pigmentation: uniform (one colour) / variegated (two or more)
    colours: number of colours 1-5 among light brown, dark brown, black, blue-grey, red
    diameter: small / medium / large (lesion radius bins 0.2-0.27, 0.34-0.43, 0.52-0.64 of the half field)
    hair: absent / present (known on every image)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from datamodules.cache import cached_images
from datamodules.info import DataInfo
from datamodules.phrasing import NUMBER_WORDS, ROMAN, Vocabulary, choose_frame, fill_frame, join, pick, split_frames, value_name
from datamodules.sources.base import SPLITS, SourceRequest, SourceTable, SplitTable
from datamodules.sources.phantom_render import COLOUR_NAMES, RENDERER_VERSION, LesionSpec, render
from datamodules.sources.tone_split import split_tones

log = logging.getLogger(__name__)

CLASS_NAMES = ("benign", "malignant", "normal")
ATTRIBUTE_CLASSES = {
    "border": ("regular", "irregular"),
    "asymmetry": ("symmetric", "asymmetric"),
    "pigmentation": ("uniform", "variegated"),
    "colours": ("1", "2", "3", "4", "5"),
    "diameter": ("small", "medium", "large"),
    "hair": ("absent", "present"),
}
DIAGNOSIS_ODDS = (0.5, 0.3, 0.2)  # benign, malignant, normal
SKIN_TONE_ODDS = (0.14, 0.22, 0.2, 0.16, 0.14, 0.14)  # Fitzpatrick I-VI, all well represented
# Per diagnosis (benign, malignant): P(irregular), P(asymmetric), colour-count odds, diameter odds.
IRREGULAR = (0.25, 0.7)
ASYMMETRIC = (0.25, 0.7)
COLOUR_COUNT = ((0.4, 0.33, 0.17, 0.07, 0.03), (0.08, 0.2, 0.3, 0.25, 0.17))
DIAMETER = ((0.4, 0.4, 0.2), (0.15, 0.35, 0.5))
# Which pigments a lesion shows, by diagnosis: weights over COLOUR_NAMES.
PIGMENT_ODDS = ((1.0, 1.0, 0.3, 0.3, 0.25), (0.8, 1.0, 0.8, 0.7, 0.5))
HAIR_ODDS = 0.35
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}

# Caption vocabulary: phrasings per (attribute, value), the first canonical; all are parsed.
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "label": {"benign": ("benign melanocytic lesion", "benign pigmented lesion", "benign nevus"),
              "malignant": ("malignant melanocytic lesion", "malignant pigmented lesion", "melanoma"),
              "normal": ("normal skin", "healthy skin without a lesion", "lesion-free skin")},
    "border": {"regular": ("a regular border", "a smooth, regular border", "regular, well-defined borders"),
               "irregular": ("an irregular border", "a ragged, irregular border", "irregular, notched borders")},
    "asymmetry": {"symmetric": ("a symmetric shape", "a symmetrical outline"),
                  "asymmetric": ("an asymmetric shape", "an asymmetrical outline")},
    "pigmentation": {"uniform": ("uniform pigmentation", "evenly distributed pigment"),
                     "variegated": ("variegated pigmentation", "multicoloured, variegated pigment")},
    "diameter": {"small": ("small",), "medium": ("medium-sized",), "large": ("large",)},
    "hair": {"absent": ("without hair", "hair-free", "with no hair"),
             "present": ("with hair in the field", "partly covered by hair", "with hairs")},
}
PARSE_ONLY = {
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
}
# Sentence frames (paraphrases); the last ones are those data.holdout_paraphrases keeps out of training.
FRAMES = (
    "dermoscopic image of {subject}[ with {clauses}][, {hair}][, on Fitzpatrick type {tone} skin]",
    "dermoscopy of {subject}[ showing {clauses}][, {hair}][, skin of Fitzpatrick type {tone}]",
    "dermatoscopic view of {subject}[: {clauses}][; {hair}][; Fitzpatrick skin type {tone}]",
    "[Fitzpatrick type {tone} skin, ]{subject}[ with {clauses}][, {hair}], as seen through a dermatoscope",
    "a dermoscopic photograph of {subject}[ that has {clauses}][ ({hair})][, patient of skin phototype {tone}]",
    "close-up under polarised dermoscopy: {subject}[, {clauses}][, {hair}][, phototype {tone}]",
    "[on Fitzpatrick {tone} skin: ]{subject}[ presenting {clauses}][, {hair}], magnified with a dermatoscope",
)
VOCABULARY = Vocabulary(PHRASES, PARSE_ONLY, FRAMES)


def categorical(rng: np.random.Generator, odds: tuple[float, ...]) -> int:
    """One draw from ``odds`` (a few times faster than ``rng.choice(p=...)``, which matters per image)."""
    return min(int(np.searchsorted(np.cumsum(odds), rng.random() * sum(odds), side="right")), len(odds) - 1)


def draw(seed: int, split: str, index: int) -> tuple[int, dict[str, int], int, LesionSpec | None, np.random.Generator]:
    """Ground truth of image ``index`` of ``split``: label, attributes, skin tone, lesion spec, and its RNG."""
    rng = np.random.default_rng([seed, SPLIT_STREAM[split], index])
    label = categorical(rng, DIAGNOSIS_ODDS)
    tone = categorical(rng, SKIN_TONE_ODDS) + 1
    hair = bool(rng.random() < HAIR_ODDS)
    attributes = {name: -1 for name in ATTRIBUTE_CLASSES}
    attributes["hair"] = int(hair)
    if label == 2:
        return label, attributes, tone, None, rng
    malignant = label == 1
    irregular = rng.random() < IRREGULAR[malignant]
    # A gap around the 0.5 threshold keeps the binary border label visibly decided.
    irregularity = rng.uniform(0.65, 1.0) if irregular else rng.uniform(0.0, 0.3)
    count = categorical(rng, COLOUR_COUNT[malignant]) + 1
    odds = np.array(PIGMENT_ODDS[malignant])
    spec = LesionSpec(
        malignant=malignant,
        irregularity=float(irregularity),
        asymmetric=bool(rng.random() < ASYMMETRIC[malignant]),
        colours=[int(c) for c in np.argsort(-rng.random(5) ** (1 / odds))[:count]],  # weighted, without replacement (Efraimidis-Spirakis)
        diameter=categorical(rng, DIAMETER[malignant]),
    )
    attributes.update(
        border=int(irregular), asymmetry=int(spec.asymmetric), pigmentation=int(count > 1),
        colours=count - 1, diameter=spec.diameter,
    )
    return label, attributes, tone, spec, rng


def ground_truth(seed: int, split: str, count: int) -> dict[str, Any]:
    """Labels, attributes, skin tones and colour names of the first ``count`` images of ``split`` (JSON-able)."""
    truth: dict[str, Any] = {"labels": [], "skin_tone": [], "attributes": {name: [] for name in ATTRIBUTE_CLASSES}, "colour_sets": []}
    for index in range(count):
        label, attributes, tone, spec, _ = draw(seed, split, index)
        truth["labels"].append(label)
        truth["skin_tone"].append(tone)
        for name, value in attributes.items():
            truth["attributes"][name].append(value)
        truth["colour_sets"].append([COLOUR_NAMES[c] for c in spec.colours] if spec else [])
    return truth


def phantom_caption(label: int, attributes: dict[str, int], skin_tone: int, seed: int = 0,
                    colour_names: list[str] | None = None, *, frames: tuple[int, ...] | None = None) -> str:
    """Caption of a phantom image in one of ``frames`` (default: any); ``colour_names`` follow the colour count."""
    rng = np.random.default_rng(seed)
    frame = choose_frame(rng, frames, len(FRAMES))
    info = DataInfo("phantom", 0, CLASS_NAMES, ATTRIBUTE_CLASSES, skin_tones=True)
    name = CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else None
    size = value_name(info, attributes, "diameter")
    if name == "normal":
        subject = pick(rng, PHRASES["label"]["normal"])
    else:
        noun = pick(rng, PHRASES["label"][name]) if name else "pigmented lesion"
        subject = "a " + (f"{pick(rng, VOCABULARY.phrasings('diameter', size))} " if size else "") + noun
    clauses = [pick(rng, VOCABULARY.phrasings(k, v)) for k in ("border", "asymmetry") if (v := value_name(info, attributes, k))]
    pigmentation, count = value_name(info, attributes, "pigmentation"), int(attributes.get("colours", -1))
    if pigmentation or count >= 0:
        text = pick(rng, VOCABULARY.phrasings("pigmentation", pigmentation)) if pigmentation else "pigmentation"
        if count >= 0:
            text += f" in {'one colour' if count == 0 else NUMBER_WORDS[count] + ' colours'}"
            if colour_names:
                text += f" ({join(list(colour_names))})"
        clauses.append(text)
    rng.shuffle(clauses)
    hair = value_name(info, attributes, "hair")
    return fill_frame(FRAMES[frame], {
        "subject": subject,
        "clauses": join(clauses) if clauses else None,
        "hair": pick(rng, VOCABULARY.phrasings("hair", hair)) if hair else None,
        "tone": ROMAN[skin_tone - 1] if 1 <= skin_tone <= 6 else None,
    })


def render_rows(seed: int, split: str, size: int, path: str, start: int, stop: int) -> None:
    """Render images ``start:stop`` of ``split`` into the .npy file at ``path`` (runs in worker processes)."""
    out = np.load(path, mmap_mode="r+")
    for index in range(start, stop):
        label, attributes, tone, spec, rng = draw(seed, split, index)
        out[index] = render(spec, tone, bool(attributes["hair"]), size, rng)
    out.flush()


def render_split(seed: int, split: str, out: np.memmap, workers: int, progress: bool = True) -> None:
    """Render every image of ``split`` into ``out`` (count, size, size, 3), in ``workers`` processes."""
    count, size = out.shape[0], out.shape[1]
    chunk = 100
    bounds = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
    bar = tqdm(total=count, desc=f"phantom {split} {size}px", disable=not progress or count < 500, leave=False)
    if workers > 1 and len(bounds) > 1:
        out.flush()
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            jobs = [pool.submit(render_rows, seed, split, size, out.filename, a, b) for a, b in bounds]
            for job, (a, b) in zip(jobs, bounds):
                job.result()
                bar.update(b - a)
    else:
        for a, b in bounds:
            render_rows(seed, split, size, out.filename, a, b)
            bar.update(b - a)
    bar.close()


def load(request: SourceRequest) -> SourceTable:
    """Render (or reuse from the cache) the three phantom splits at ``request.image_size``."""
    sizes = {"train": request.num_train, "val": request.num_val, "test": request.num_test}
    for split, count in sizes.items():
        if count is None or count < 1:
            raise ValueError(f"phantom: num_{split} must be a positive number of images, got {count!r}")
    info = DataInfo(
        source="phantom", image_size=request.image_size, class_names=CLASS_NAMES,
        attribute_classes=dict(ATTRIBUTE_CLASSES), skin_tones=True, tone_groups=True,
    )
    training_frames, _ = split_frames(len(FRAMES), request.holdout_paraphrases)
    splits: dict[str, SplitTable] = {}
    for split in SPLITS:
        count = int(sizes[split])
        key = {"source": "phantom", "split": split, "size": request.image_size, "seed": request.split_seed, "count": count,
               "renderer": RENDERER_VERSION, "preprocess": request.preprocess_key()}
        def build(out: np.memmap, split: str = split, count: int = count) -> dict[str, Any]:
            start = time.perf_counter()
            render_split(request.split_seed, split, out, render_workers(), request.progress)
            request.preprocess_array(out)
            log.info("Rendered %d phantom %s images at %d px in %.1f s", count, split, request.image_size, time.perf_counter() - start)
            return {"truth": ground_truth(request.split_seed, split, count)}  # stored beside the pixels

        images, extra = cached_images(request.cache_dir, key, (count, request.image_size, request.image_size, 3), build)
        truth = {k: (np.asarray(v, np.int64) if k in ("labels", "skin_tone") else v) for k, v in extra["truth"].items()}
        truth["attributes"] = {k: np.asarray(v, np.int64) for k, v in truth["attributes"].items()}
        inputs = [{"seed": hash_index(request.split_seed, split, i), "colour_names": truth["colour_sets"][i]} for i in range(count)]
        captions = [
            phantom_caption(int(truth["labels"][i]), {k: int(v[i]) for k, v in truth["attributes"].items()},
                            int(truth["skin_tone"][i]), frames=training_frames, **inputs[i])
            for i in range(count)
        ]
        tones = split_tones(request, "phantom", split, images)  # the rendered type is the truth; the ITA is read as on real data
        splits[split] = SplitTable(
            images=images, labels=truth["labels"], attributes=truth["attributes"], skin_tone=truth["skin_tone"],
            captions=captions, image_ids=[f"phantom-{request.split_seed}-{split}-{i}" for i in range(count)], lesion_ids=None,
            caption_inputs=inputs, ita=tones.ita, tone_group=tones.group,
        )
    return SourceTable(info=info, splits=splits)


def render_workers() -> int:
    """Processes for rendering: ``$DERMSYNTH_RENDER_WORKERS`` or up to 4 of the machine's cores."""
    return int(os.environ.get("DERMSYNTH_RENDER_WORKERS") or min(4, os.cpu_count() or 1))


def hash_index(seed: int, split: str, index: int) -> int:
    """A caption seed per image, distinct from the pixel stream."""
    return (seed * 1_000_003 + SPLIT_STREAM[split] * 100_003 + index) % (2**31)
