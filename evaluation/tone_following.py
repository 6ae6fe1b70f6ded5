"""Tone-following: prompted for a skin tone, what tone comes out? Read with the same ITA estimator as the real data.

A tone-balanced prompt set (``eval.tone.num_generated`` samples, every tone of the evaluation split
equally often, each prompt the caption / labels of a real image of that tone) is generated and each
sample's healthy skin is read (``datamodules.tone``; the lesion found by Otsu's threshold, as there is
no mask). Per prompted tone:
- ``accuracy``: the sample's ITA group is the prompting image's ITA group (a sample whose skin cannot
  be read with confidence counts as a miss; ``unread`` says how many), Wilson interval;
- ``ita_mae``: mean |ITA of the sample - ITA of the prompting image|, percentile bootstrap interval;
- ``chance``: the accuracy of a generator that ignores the tone but draws the evaluation split's mix of
  groups, ``real_agreement``: the accuracy two real images of the tone reach (1 where the tones are
  the ITA groups themselves; below 1 on the phantom, whose types spread over neighbouring groups);
- ``judge_accuracy`` (Fitzpatrick data): the judge's skin-tone head against the prompted type, a second
  opinion that does not go through the ITA.
``tone_distribution.png`` shows the ITA of real and generated images, and per prompted tone;
``by_tone.png`` shows samples per prompted tone above real images of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from datamodules.info import DataInfo
from datamodules.tone import GROUP_EDGES, TONE_GROUPS, ToneTable, read_tones, tensor_images_to_uint8
from evaluation.bootstrap import percentile_interval, wilson_interval
from evaluation.groups import group_names, per_skin_tone, tones_of
from evaluation.writing import save_captioned_rows
from models.classifier import SKIN_TONE_HEAD

READING = "median ITA of the healthy skin, the lesion found by Otsu's threshold on L* (no mask), datamodules.tone"
TARGET = "the ITA group and ITA of the real image whose caption and labels prompted the sample"


def read_images(images: Tensor) -> ToneTable:
    """The ITA reading of (N, 3, H, W) images in [-1, 1] (no lesion masks)."""
    return read_tones(tensor_images_to_uint8(images))


def _mae(errors: np.ndarray, resamples: int, seed: int) -> tuple[float | None, list[float] | None]:
    if errors.size == 0:
        return None, None
    rng = np.random.default_rng(seed)
    replicates = [float(errors[rng.integers(0, errors.size, errors.size)].mean()) for _ in range(resamples)]
    return float(errors.mean()), percentile_interval(replicates, 0.95)


def _share(values: np.ndarray) -> np.ndarray:
    counts = np.bincount(values[values > 0], minlength=7)[1:].astype(float)
    return counts / counts.sum() if counts.sum() else counts


def following_figures(prompted: np.ndarray, target_group: np.ndarray, target_ita: np.ndarray, generated: ToneTable,
                      real_tones: np.ndarray, real_groups: np.ndarray, names: tuple[str, ...], level: float, resamples: int,
                      seed: int = 0, judge_tones: np.ndarray | None = None) -> dict[str, Any]:
    """Tone-following overall and per prompted tone (module docstring). Arrays are per sample (N,) except the real ones."""
    made = generated.group
    known = (prompted > 0) & (target_group > 0)
    overall_mix = _share(real_groups)
    per_group: dict[str, Any] = {}
    for tone, name in enumerate(names, start=1):
        rows = known & (prompted == tone)
        hits = made[rows] == target_group[rows]
        errors = np.abs(generated.ita[rows] - target_ita[rows])
        mae, mae_interval = _mae(errors[np.isfinite(errors)], resamples, seed + tone)
        mix = _share(real_groups[real_tones == tone])
        entry = {
            "n": int(rows.sum()), "accuracy": float(hits.mean()) if hits.size else None,
            "accuracy_interval": wilson_interval(int(hits.sum()), int(hits.size), level),
            "ita_mae": mae, "ita_mae_interval": mae_interval, "unread": int((made[rows] == 0).sum()),
            "chance": float(mix @ overall_mix) if mix.sum() else None, "real_agreement": float(mix @ mix) if mix.sum() else None,
            "generated_groups": dict(zip(("unread", *TONE_GROUPS), np.bincount(made[rows], minlength=7).tolist())),
        }
        if judge_tones is not None:
            judged = judge_tones[prompted == tone] == tone
            entry["judge_accuracy"] = float(judged.mean()) if judged.size else None
            entry["judge_accuracy_interval"] = wilson_interval(int(judged.sum()), int(judged.size), level)
        per_group[name] = entry
    hits = made[known] == target_group[known]
    errors = np.abs(generated.ita[known] - target_ita[known])
    mae, mae_interval = _mae(errors[np.isfinite(errors)], resamples, seed)
    result: dict[str, Any] = {
        "n": int(known.sum()), "accuracy": float(hits.mean()) if hits.size else None,
        "accuracy_interval": wilson_interval(int(hits.sum()), int(hits.size), level), "ita_mae": mae, "ita_mae_interval": mae_interval,
        "unread": int((made[known] == 0).sum()), "per_group": per_group, "reading": READING, "target": TARGET, "judge": None,
    }
    if judge_tones is not None:
        judged = judge_tones[prompted > 0] == prompted[prompted > 0]
        result["judge"] = {"accuracy": float(judged.mean()) if judged.size else None,
                           "accuracy_interval": wilson_interval(int(judged.sum()), int(judged.size), level),
                           "reading": "the judge's skin-tone head against the prompted Fitzpatrick type"}
    return result


def tone_set_following(tone_set: Any, real_batch: dict[str, Any], info: DataInfo, judge_heads: dict[str, int], cfg: Any) -> tuple[dict[str, Any], ToneTable]:
    """Tone-following of a drawn tone-balanced ``SampleSet`` against the real evaluation set; also its readings."""
    conditions = tone_set.conditions
    generated = read_images(tone_set.thumbnails)
    judge = None
    if info.tone_field == "skin_tone" and SKIN_TONE_HEAD in judge_heads:
        judge = (tone_set.judge_logits[SKIN_TONE_HEAD].argmax(1) + 1).numpy()
    figures = following_figures(
        tones_of(conditions, info).numpy(), torch.as_tensor(conditions["tone_group"]).long().numpy(),
        torch.as_tensor(conditions["ita"]).double().numpy(), generated, tones_of(real_batch, info).numpy(),
        torch.as_tensor(real_batch["tone_group"]).long().numpy(), group_names(info), float(cfg["bootstrap"]["level"]),
        int(cfg["bootstrap"]["resamples"]), int(cfg["bootstrap"]["seed"]), judge,
    )
    return figures, generated


def save_tone_distribution(real: ToneTable, generated: ToneTable, tone_set: tuple[np.ndarray, ToneTable] | None,
                           real_tones: np.ndarray, names: tuple[str, ...], path: Path) -> Path:
    """ITA of real vs generated images (left) and, per prompted tone, of the tone-prompted samples beside real images of it (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if tone_set is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.4), squeeze=False)
    left = axes[0, 0]
    finite = [values[np.isfinite(values)] for values in (real.ita, generated.ita)]
    low, high = min([-90.0, *(v.min() for v in finite if v.size)]), max([135.0, *(v.max() for v in finite if v.size)])
    bins = np.linspace(low, high, 46)
    for values, label in zip(finite, (f"real ({finite[0].size})", f"generated ({finite[1].size})")):
        left.hist(values, bins=bins, density=True, histtype="step", linewidth=1.4, label=label)
    for edge in GROUP_EDGES:
        left.axvline(edge, color="grey", linewidth=0.5, linestyle=":")
    left.set_xlabel("ITA (degrees); dotted: group edges 55 / 41 / 28 / 10 / -30")
    left.set_ylabel("density")
    left.set_title("healthy-skin ITA, same reading (no masks)", fontsize=9)
    left.legend(fontsize=7)
    if tone_set is not None:
        prompted, readings = tone_set
        right = axes[0, 1]
        data, labels, positions = [], [], []
        for tone, name in enumerate(names, start=1):
            made = readings.ita[(prompted == tone) & np.isfinite(readings.ita)]
            truth = real.ita[(real_tones == tone) & np.isfinite(real.ita)]
            if made.size or truth.size:
                data += [truth, made]
                positions += [3 * tone - 0.5, 3 * tone + 0.5]
                labels.append((3 * tone, f"{name}\n(n={made.size})"))
        boxes = right.boxplot([d if d.size else np.array([np.nan]) for d in data], positions=positions, widths=0.8, patch_artist=True,
                              showfliers=False)
        for index, box in enumerate(boxes["boxes"]):
            box.set_facecolor("#bbbbbb" if index % 2 == 0 else "#e07b39")
        right.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=7)
        for edge in GROUP_EDGES:
            right.axhline(edge, color="grey", linewidth=0.5, linestyle=":")
        right.set_ylabel("ITA (degrees)")
        right.set_title("per prompted tone: real (grey) vs generated (orange)", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_tone_grid(tone_set: Any, prompted: np.ndarray, readings: ToneTable, real_images: Tensor, real_tones: np.ndarray,
                   names: tuple[str, ...], path: Path, columns: int = 8) -> Path:
    """Per prompted tone, a row of samples (captioned with the groups the first four read as) above real images of that tone."""
    def pixels(batch: Tensor) -> Any:
        return ((batch.float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()

    generated, real = pixels(tone_set.thumbnails), pixels(real_images)
    rows = []
    for tone, name in enumerate(names, start=1):
        chosen = np.flatnonzero(prompted == tone)[:columns]
        if chosen.size:
            read = [TONE_GROUPS[g - 1] if g else "unread" for g in readings.group[chosen]]
            rows.append((f"prompted {name}: generated\nread as: {', '.join(read[:4])}...", [generated[i] for i in chosen]))
            references = np.flatnonzero(real_tones == tone)[:columns]
            rows.append((f"{name}: real", [real[i] for i in references]))
    return save_captioned_rows(rows, path, columns, title="per prompted skin tone: generated above real", dpi=110)


def tone_block(main_set: Any, tone_set: Any, real_batch: dict[str, Any], real_features: Tensor, features_name: str, info: DataInfo,
               judge_heads: dict[str, int], cfg: Any, cond_accuracy_of: Any, eval_dir: Path | None) -> dict[str, Any]:
    """metrics.json ``per_skin_tone``: per-group figures, tone-following (``tone_set``: a SampleSet or why there is none), figures on disk."""
    names = group_names(info)
    real_tones = tones_of(real_batch, info)
    main_readings = read_images(main_set.thumbnails)
    if main_set.conditions is not None and info.tone_field in main_set.conditions:
        fake_tones, source = tones_of(main_set.conditions, info), "condition"
    elif info.tone_field == "skin_tone":
        fake_tones, source = main_set.judge_logits[SKIN_TONE_HEAD].argmax(1) + 1, "judge"
    else:
        fake_tones, source = torch.as_tensor(main_readings.group), "ita"
    block = per_skin_tone(real_features, real_tones, main_set.features[features_name], fake_tones, source, names,
                          cond_accuracy_of=cond_accuracy_of, min_fid_images=int(cfg["tone"]["min_fid_images"]),
                          kid_size=int(cfg["kid_subset_size"]), seed=int(cfg["seeds"][0]))
    block["scale"] = "fitzpatrick" if info.tone_field == "skin_tone" else "ita"
    real_readings = read_images(real_batch["image"])
    if isinstance(tone_set, str):
        block["tone_following"], block["nulls"] = None, {"tone_following": tone_set}
        prompted_readings = None
    else:
        block["tone_following"], generated = tone_set_following(tone_set, real_batch, info, judge_heads, cfg)
        prompted = tones_of(tone_set.conditions, info).numpy()
        prompted_readings = (prompted, generated)
        for name, entry in block["tone_following"]["per_group"].items():
            block["groups"][name]["tone_following"] = entry
    block["ita"] = {"real_median": _median(real_readings.ita), "generated_median": _median(main_readings.ita),
                    "real_groups": np.bincount(real_readings.group, minlength=7).tolist(),
                    "generated_groups": np.bincount(main_readings.group, minlength=7).tolist(), "reading": READING}
    block["distribution_plot"] = block["tone_grid"] = None
    if eval_dir is not None:
        save_tone_distribution(real_readings, main_readings, prompted_readings, real_tones.numpy(), names, eval_dir / "tone_distribution.png")
        block["distribution_plot"] = "tone_distribution.png"
        if prompted_readings is not None:
            save_tone_grid(tone_set, prompted_readings[0], prompted_readings[1], real_batch["image"], real_tones.numpy(), names,
                           eval_dir / "by_tone.png")
            block["tone_grid"] = "by_tone.png"
    return block


def _median(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None

