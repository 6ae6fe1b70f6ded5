"""``tone`` suite: how far the skin-tone (ITA) reading of ``datamodules.tone`` can be trusted.

    python -m experiments.bench tone                                           # the phantom only
    python -m experiments.bench tone tone.ham_root=/data/ham10000 tone.grid=docs/ita_extremes_ham10000.png

Where the truth is known (the phantom renders Fitzpatrick types I-VI) the reading must order the
types; where it is not (HAM10000) it is compared with an independent published strategy, the
structured-patches ITA of ``derm-ita`` (Corbin; Kalb et al. 2023), and its extremes are drawn so a
person can look at them before trusting the groups. Both on the validation split.

Keys:
- ``tone.phantom``: ``n``; ``spearman`` (rho between the true type and minus the ITA: 1 = the reading
  orders the types perfectly) with a percentile bootstrap ``spearman_interval``; ``bin_accuracy`` (the
  tone group equals the type, I = very light .. VI = dark, the usual correspondence) with Wilson
  ``bin_accuracy_interval``; ``within_one_group`` likewise; ``confident`` share; ``per_type`` {type:
  {n, median_ita, quartiles, groups (counts of groups 0-6)}}; ``palette_ita`` (the ITA of each type's
  flat palette colour under the renderer's dermoscope tint: what the type would read without texture,
  lighting and the field stop) and ``spearman_with_palette`` (the reading against that order, in which
  type I reads below type II); ``lesion_free_offset`` {type: median reading minus the ITA of the median
  field colour on lesion-free, hair-free phantoms}: the reading's own error where the skin is all there is.
- ``tone.ham10000`` (with ``ham_root``): ``counts`` {split: {group: n}} at ``ham_image_size``;
  ``agreement`` {``<size>px`` | ``native``: {reference, n, pearson, spearman (each with interval),
  group_agreement, cohen_kappa, median_abs_difference}} between the reading (lesion masks on) and
  ``derm-ita`` on the same pixels; ``mask_vs_otsu`` (the same figures between the reading with the masks and
  without them, the way generated images are read); ``size_vs_native``; ``otsu_lesion_found`` (how the
  reading without masks found the lesion: ``otsu`` or ``none``); ``grid``.
  ``derm-ita`` is a test-time reference only (its ``patchify`` dependency pins numpy < 2); without it
  the agreement is null and says why.

Options (configs/bench.yaml ``tone:``): phantom sizes, ``ham_root``, ``ham_image_size``, ``reference``,
``grid``, ``num_extremes``, ``resamples``, ``overrides``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import cohen_kappa_score

from datamodules.phrasing import ROMAN
from datamodules.tone import TONE_GROUPS, ToneTable, healthy_skin, read_tone, rgb_to_lab, tone_group
from evaluation.bootstrap import percentile_interval, wilson_interval
from experiments.bench_suites.common import build_datamodule, compose_run_config, hydra_overrides, log

REFERENCES = ("structured_patches", "cropped_center", "whole_image")


def bootstrap(statistic: Any, arrays: tuple[np.ndarray, ...], resamples: int, seed: int = 0) -> list[float] | None:
    """Percentile 95 % interval of ``statistic(*arrays)`` over rows resampled with replacement."""
    rng = np.random.default_rng(seed)
    count = len(arrays[0])
    values = [statistic(*(a[rows] for a in arrays)) for rows in (rng.integers(0, count, count) for _ in range(resamples))]
    return percentile_interval(values, 0.95)


def rho(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a, b)[0])


def phantom_validation(options: dict[str, str]) -> dict[str, Any]:
    overrides = ["data=phantom", *hydra_overrides(options)]
    overrides += [f"data.{key}={options[name]}" for name, key in (("phantom_image_size", "image_size"), ("phantom_num_val", "num_val"))
                  if options.get(name)]
    datamodule = build_datamodule(compose_run_config("ddpm", options["budget"], overrides).data)
    table = datamodule.table.splits["val"]
    types, ita, groups = table.skin_tone, table.ita, table.tone_group
    read = np.isfinite(ita)
    resamples = int(options["resamples"])
    hits, near = groups == types, (groups > 0) & (np.abs(groups - types) <= 1)
    per_type = {}
    for kind in range(1, 7):
        rows = (types == kind) & read
        values = ita[rows]
        per_type[ROMAN[kind - 1]] = {
            "n": int((types == kind).sum()), "median_ita": float(np.median(values)) if values.size else None,
            "quartiles": np.percentile(values, [25, 75]).round(2).tolist() if values.size else None,
            "groups": np.bincount(groups[types == kind], minlength=7).tolist(),
        }
    palette = palette_ita()
    palette_of_row = np.array([palette[ROMAN[t - 1]] for t in types])
    return {
        "image_size": datamodule.info.image_size, "n": len(table), "read": int(read.sum()),
        "spearman": rho(types[read], -ita[read]),
        "spearman_interval": bootstrap(rho, (types[read], -ita[read]), resamples),
        "spearman_with_palette": rho(palette_of_row[read], ita[read]),
        "spearman_with_palette_interval": bootstrap(rho, (palette_of_row[read], ita[read]), resamples),
        "bin_accuracy": float(hits.mean()), "bin_accuracy_interval": wilson_interval(int(hits.sum()), len(hits), 0.95),
        "within_one_group": float(near.mean()), "within_one_group_interval": wilson_interval(int(near.sum()), len(near), 0.95),
        "confident": float((groups > 0).mean()), "per_type": per_type, "palette_ita": palette,
        "lesion_free_offset": lesion_free_offset(datamodule.request.split_seed, datamodule.info.image_size),
    }


def lesion_free_offset(seed: int, size: int, per_type: int = 15) -> dict[str, float]:
    """Per type, the median reading minus the ITA of the median colour of the whole field (field stop left out), on
    lesion-free, hair-free validation phantoms: near 0 when the reading finds the skin the renderer drew."""
    from datamodules.sources.phantom import draw
    from datamodules.sources.phantom_render import render
    from datamodules.tone import field_stop, ita_from_lab

    differences: dict[int, list[float]] = {kind: [] for kind in range(1, 7)}
    index = 0
    while min(map(len, differences.values())) < per_type and index < 100 * per_type:
        label, attributes, kind, spec, rng = draw(seed, "val", index)
        index += 1
        if spec is not None or attributes["hair"] == 1 or len(differences[kind]) >= per_type:
            continue
        image = render(None, kind, False, size, rng)
        lab = rgb_to_lab(image)
        field = ~field_stop(lab[..., 0])
        whole = float(ita_from_lab(np.median(lab[..., 0][field]), np.median(lab[..., 2][field])))
        differences[kind].append(read_tone(image).ita - whole)
    return {ROMAN[kind - 1]: round(float(np.median(values)), 2) if values else None for kind, values in differences.items()}


def palette_ita() -> dict[str, float]:
    """ITA of each type's flat palette colour under the renderer's dermoscope tint (no texture, light or field stop)."""
    from datamodules.sources.phantom_render import SKIN_PALETTE

    tint = np.array([1.02, 0.88, 0.92])  # phantom_render.skin: skin looks pinker under a contact dermoscope
    colours = np.clip(np.round(SKIN_PALETTE * tint * 255), 0, 255).astype(np.uint8)
    return {ROMAN[k]: round(read_tone(np.broadcast_to(colour, (16, 16, 3)).copy()).ita, 2) for k, colour in enumerate(colours)}


def reference_ita(image: np.ndarray, strategy: str) -> float:
    """ITA of one (H, W, 3) uint8 image by a ``derm-ita`` strategy."""
    import derm_ita

    function = {"structured_patches": derm_ita.get_structured_patches_ita, "cropped_center": derm_ita.get_cropped_center_ita,
                "whole_image": derm_ita.get_ita}[strategy]
    return float(function(Image.fromarray(image)))


def agreement(ours: np.ndarray, theirs: np.ndarray, reference: str, resamples: int) -> dict[str, Any]:
    """Correlations (with intervals), group agreement, Cohen's kappa and median |difference| over rows both read."""
    both = np.isfinite(ours) & np.isfinite(theirs)
    a, b = ours[both], theirs[both]
    groups_a, groups_b = tone_group(a), tone_group(b)
    same = groups_a == groups_b
    return {
        "reference": reference, "n": int(both.sum()),
        "pearson": float(pearsonr(a, b)[0]), "pearson_interval": bootstrap(lambda x, y: float(pearsonr(x, y)[0]), (a, b), resamples),
        "spearman": rho(a, b), "spearman_interval": bootstrap(rho, (a, b), resamples),
        "group_agreement": float(same.mean()), "group_agreement_interval": wilson_interval(int(same.sum()), len(same), 0.95),
        "cohen_kappa": float(cohen_kappa_score(groups_a, groups_b)), "median_abs_difference": float(np.median(np.abs(a - b))),
    }


def ham_validation(options: dict[str, str]) -> dict[str, Any]:
    root = Path(options["ham_root"]).expanduser()
    size = int(options["ham_image_size"])
    overrides = ["data=ham10000", f"data.root={root}", f"data.image_size={size}", *hydra_overrides(options)]
    datamodule = build_datamodule(compose_run_config("ddpm", options["budget"], overrides).data)
    splits = datamodule.table.splits
    counts = {split: dict(zip(["unknown", *TONE_GROUPS], np.bincount(table.tone_group, minlength=7).tolist())) for split, table in splits.items()}
    table = splits["val"]
    image_paths = {path.stem: path for path in root.rglob("*") if path.suffix.lower() in (".jpg", ".jpeg", ".png")}
    masks = [image_paths.get(f"{i}_segmentation") for i in table.image_ids]
    resamples, strategy = int(options["resamples"]), options["reference"]
    log.info("tone: reading %d HAM10000 validation images without masks, at full size, and with derm-ita", len(table))
    otsu = ToneTable.from_readings([read_tone(np.asarray(table.images[i])) for i in range(len(table))])
    native_images = [np.asarray(Image.open(image_paths[i]).convert("RGB")) for i in table.image_ids]
    native_masks = [native_mask(mask, image.shape[:2]) for mask, image in zip(masks, native_images)]
    native = ToneTable.from_readings([read_tone(image, mask) for image, mask in zip(native_images, native_masks)])
    result: dict[str, Any] = {
        "image_size": size, "n": len(table), "counts": counts,
        "otsu_lesion_found": {str(k): int(v) for k, v in zip(*np.unique(otsu.lesion_from, return_counts=True))},
        "mask_vs_otsu": agreement(table.ita, otsu.ita, "the same reading without the lesion masks (Otsu)", resamples),
        "size_vs_native": agreement(table.ita, native.ita, f"the same reading on the {native_images[0].shape[1]}x{native_images[0].shape[0]} originals", resamples),
    }
    try:
        import derm_ita  # noqa: F401
    except ImportError:
        result["agreement"] = None
        result["agreement_null"] = "derm-ita is not installed (pip install --no-deps derm-ita patchify: it pins numpy < 2)"
    else:
        theirs = np.array([reference_ita(np.asarray(table.images[i]), strategy) for i in range(len(table))])
        theirs_native = np.array([reference_ita(image, strategy) for image in native_images])
        result["agreement"] = {f"{size}px": agreement(table.ita, theirs, f"derm-ita {strategy}", resamples),
                               "native": agreement(native.ita, theirs_native, f"derm-ita {strategy}", resamples)}
    if options.get("grid"):
        result["grid"] = extremes_grid(table, native_images, native_masks, Path(options["grid"]), int(options["num_extremes"]))
    return result


def native_mask(path: Path | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The lesion mask at its own size (white = lesion), if it matches the image's (H, W)."""
    if path is None:
        return None
    mask = np.asarray(Image.open(path).convert("L")) > 127
    return mask if mask.shape == tuple(shape) else None


def extremes_grid(table: Any, images: list[np.ndarray], masks: list[np.ndarray | None], path: Path, count: int) -> str:
    """The ``count`` lowest- and highest-ITA confident images (full size), each beside the skin the reading used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confident = np.flatnonzero(table.tone_group > 0)
    order = confident[np.argsort(table.ita[confident])]
    rows = {"lowest ITA": order[:count], "highest ITA": order[::-1][:count]}
    columns = 8
    lines = sum(-(-len(r) // columns) for r in rows.values())
    figure, axes = plt.subplots(lines, columns, figsize=(columns * 2.2, lines * 1.35 + 0.6), squeeze=False)
    line = 0
    for title, picked in rows.items():
        for k in range(-(-len(picked) // columns) * columns):
            axis = axes[line + k // columns][k % columns]
            axis.axis("off")
            if k >= len(picked):
                continue
            index = int(picked[k])
            image = images[index]
            skin, _ = healthy_skin(rgb_to_lab(image), masks[index])
            shown = np.where(skin[..., None], image, (image * 0.25).astype(np.uint8))
            axis.imshow(np.concatenate([image, shown], axis=1))
            group = TONE_GROUPS[int(table.tone_group[index]) - 1]
            axis.set_title(f"{table.image_ids[index]}\nITA {table.ita[index]:.0f} ({group})", fontsize=6)
        axes[line][0].text(-0.05, 0.5, title, transform=axes[line][0].transAxes, rotation=90, ha="right", va="center", fontsize=8)
        line += -(-len(picked) // columns)
    figure.suptitle(f"HAM10000 validation split, ITA read at {table.images.shape[1]} px: the confident readings with the lowest "
                    "and highest ITA (left: original image; right: the healthy skin found on it, the rest dimmed)", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)


def suite(options: dict[str, str]) -> dict[str, Any]:
    if options["reference"] not in REFERENCES:
        raise ValueError(f"bench tone: reference must be one of {REFERENCES}, got {options['reference']!r}")
    results: dict[str, Any] = {"tone.phantom": phantom_validation(options), "tone.ham10000": None}
    if options.get("ham_root"):
        results["tone.ham10000"] = ham_validation(options)
    results["tone.settings"] = {"options": dict(options)}
    return results
