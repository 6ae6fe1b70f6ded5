"""Draw images from a trained generator into a folder that is itself a data set.

    python -m experiments.generate ckpt=PATH prompt="..." num_images=64 out=DIR
    python -m experiments.generate ckpt=PATH prompts=prompts.txt num_images=100 out=DIR seed=3
    python -m experiments.generate ckpt=PATH balanced=true num_images=1000 out=DIR guidance_scale=2 sampler.steps=25

Writes ``00000.png ...`` (names never come from prompts), ``metadata.csv`` (file, prompt, seed,
guidance, sampler, steps), ``captions.csv`` (file, caption, label: the ``folder`` source format,
so ``data=folder data.root=DIR`` trains or evaluates on it) and, where labels are known,
``ham10000_metadata.csv`` (image_id, lesion_id, dx, dx_type, ...), ``NOTICE`` (the training data's licence;
synthetic images, research use only) and ``generate.json`` (the files,
the settings, and prompt words the model's vocabulary lacks). ``out`` must be new or empty;
``overwrite=true`` replaces an earlier generate's set there (experiments/generated_set.py).
A prompt reaches the model exactly as the shell passed it (experiments/command.py).
Settings: configs/generate.yaml.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.info import DataInfo
from datamodules.licences import write_notice
from evaluation.data import take
from experiments.checks import check_sampling, check_steps_for
from experiments.command import command
from experiments.generated_set import clear_previous_set, planned_files, previous_set, write_manifest
from models.conditioners import prompt_conditions
from models.generative import GenerativeModule, SamplingSettings

log = logging.getLogger(__name__)


def load_reference(path: str | Path, size: int) -> Tensor:
    """A reference image file -> (1, 3, size, size) in [-1, 1] (short side resized, centre crop)."""
    from datamodules.transforms import read_rgb, square

    try:
        array = square(read_rgb(path), size)
    except OSError as error:
        raise ValueError(f"cannot read reference image {path}: {error}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def sampling_settings(model: GenerativeModule, guidance_scale: float | None, sampler: str | None, steps: int | None) -> SamplingSettings:
    """The requested sampling overrides; one the model has no such setting for fails clearly."""
    check_steps_for(model, "sampler.steps", steps)
    settings = SamplingSettings(sampler=sampler, steps=None if steps is None else int(steps), guidance_scale=guidance_scale)
    described = model.sampling_description()
    for name, value in (("sampler", sampler), ("steps", steps), ("guidance_scale", guidance_scale)):
        if value is not None and described.get(name) is None:
            raise ValueError(f"{type(model).__name__} has no '{name}' setting to override")
    model.sampling_description(settings)  # an unknown sampler name fails here, before any image is drawn
    return settings


@torch.no_grad()
def generate_images(
    model: GenerativeModule,
    out: str | Path,
    conditions: dict[str, Any] | None,
    num_images: int,
    seed: int = 0,
    batch_size: int = 32,
    reference: Tensor | None = None,
    progress: bool = False,
    sampling: SamplingSettings | None = None,
) -> list[dict[str, Any]]:
    """Generate ``num_images`` into ``out`` and write the CSVs; returns the metadata rows.

    ``conditions`` holds ``num_images`` rows (or None for an unconditional model); batch b uses
    ``torch.Generator().manual_seed(seed + b)``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    rows: list[dict[str, Any]] = []
    described = model.sampling_description(sampling)
    sampler, steps, guidance = (described.get(key, "") for key in ("sampler", "steps", "guidance_scale"))
    for batch_index, start in enumerate(tqdm(range(0, num_images, batch_size), disable=not progress, desc="generate")):
        count = min(batch_size, num_images - start)
        chunk = None if conditions is None else take(conditions, slice(start, start + count))
        if chunk is not None and reference is not None:
            chunk["reference"] = reference.expand(count, -1, -1, -1).to(model.device)
        images = model.generate(chunk, count, generator=torch.Generator().manual_seed(seed + batch_index), sampling=sampling)
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for row in range(count):
            name = f"{start + row:05d}.png"
            Image.fromarray(pixels[row]).save(out / name)
            label = int(chunk["label"][row]) if chunk is not None and "label" in chunk else -1
            rows.append({
                "file": name,
                "prompt": chunk["caption"][row] if chunk is not None else "",
                "seed": seed + batch_index,
                "guidance": guidance,
                "sampler": sampler,
                "steps": steps,
                "label": model.data_info.class_names[label] if label >= 0 else "",
            })
    _write_csv(out / "metadata.csv", rows, ["file", "prompt", "seed", "guidance", "sampler", "steps"])
    _write_csv(out / "captions.csv", [{"file": r["file"], "caption": r["prompt"], "label": r["label"]} for r in rows], ["file", "caption", "label"])
    if rows and all(r["label"] for r in rows):
        ham = [{"image_id": Path(r["file"]).stem, "lesion_id": f"synthetic_{Path(r['file']).stem}", "dx": r["label"], "dx_type": "synthetic",
                "age": "", "sex": "", "localization": ""} for r in rows]
        _write_csv(out / "ham10000_metadata.csv", ham, ["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization"])
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


CONDITIONING_KEYS = ("prompt", "prompts", "balanced", "reference", "guidance_scale")
# Words that name a skin type; a prompt with one that the model cannot read gets a warning.
SKIN_TYPE_WORDS = re.compile(r"\b(fitzpatrick|phototype|skin\s+type|type\s+[ivx0-9]+\s+skin)\b", re.IGNORECASE)
TONE_GROUP_WORDS = re.compile(r"\b(very\s+light|light|intermediate|tan|brown|dark)\s+skin\b", re.IGNORECASE)


def check_settings(cfg: DictConfig) -> None:
    """Values no model can use, refused before anything is loaded or written."""
    for key in ("num_images", "batch_size"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value}: must be a positive integer")
    if sum(bool(cfg[key]) for key in ("prompt", "prompts", "balanced")) > 1:
        raise ValueError("give one of prompt=..., prompts=FILE or balanced=true")
    check_sampling(("guidance_scale", cfg.guidance_scale), ("sampler.steps", cfg.sampler.steps))


def check_conditioning(model: GenerativeModule, cfg: DictConfig) -> None:
    """An unconditional model has nothing to do with prompts, references or guidance: say so."""
    name = type(model).__name__
    given = [key for key in CONDITIONING_KEYS if cfg[key] not in (None, False)]
    if model.conditioning == "none" and given:
        raise ValueError(f"the checkpoint holds an unconditional {name}: it cannot use {', '.join(given)}; leave "
                         f"{'them' if len(given) > 1 else 'it'} out")
    if cfg.reference and (model.conditioning != "text" or not getattr(getattr(model, "fusion", None), "enabled", False)):
        raise ValueError(f"reference= feeds the hybrid's visual branch; this {name} has none")


def unrecognised(prompt: str, parsed: dict[str, Any], info: DataInfo) -> list[str]:
    """What a prompt names that the model's vocabulary does not hold (empty when it reads all of it)."""
    problems = []
    if "label" not in parsed and info.num_classes > 1:
        problems.append(f"no diagnosis this model knows ({', '.join(info.class_names)})")
    if SKIN_TYPE_WORDS.search(prompt) and "skin_tone" not in parsed:
        problems.append("a skin type this model cannot read (Fitzpatrick I-VI)" if info.skin_tones
                        else "a skin type, but this model was trained without skin types")
    if TONE_GROUP_WORDS.search(prompt) and not info.tone_groups:
        problems.append("a skin tone, but this model was trained without ITA tone groups")
    return problems


def read_prompts(cfg: DictConfig) -> list[str] | None:
    if cfg.prompts:
        try:
            text = Path(cfg.prompts).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"prompts file {cfg.prompts} is not UTF-8 (byte {error.object[error.start]:#x} at offset {error.start})") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"prompts file {cfg.prompts} has no prompts")
        return lines
    return [str(cfg.prompt)] if cfg.prompt is not None else None


def build_conditions(model: GenerativeModule, cfg: DictConfig) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    """The conditions of ``cfg.num_images`` images, and per prompt what its words named that the model does not know."""
    if model.conditioning == "none":
        return None, {}
    if cfg.balanced:
        from datamodules.cache import default_cache_dir
        from models.checkpoint import build_stored_datamodule
        from models.local_paths import local_data_config

        if not model.run_config or "data" not in model.run_config:
            raise ValueError("balanced=true needs the run's data config in the checkpoint")
        where = f"{cfg.ckpt}: dermsynth_config.data"
        data = local_data_config(model.run_config["data"], where, default_cache_dir(), {"root": cfg.data_root},
                                 keys={"root": "data_root", "csv": "data_root"})
        datamodule = build_stored_datamodule(data, where)
        return datamodule.sample_conditions(cfg.num_images, seed=cfg.seed), {}
    lines = read_prompts(cfg)
    if lines is None:
        raise ValueError(f"{type(model).__name__} is conditional: give prompt=..., prompts=FILE or balanced=true")
    from datamodules.captions import parse_caption

    unknown = {p: problems for p in dict.fromkeys(lines) if (problems := unrecognised(p, parse_caption(p, model.data_info), model.data_info))}
    for prompt, problems in unknown.items():
        log.warning("prompt %r names %s; it is generated as written and recorded in generate.json", prompt, " and ".join(problems))
    return prompt_conditions([lines[i % len(lines)] for i in range(cfg.num_images)], model.data_info), unknown


def generate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Load ``cfg.ckpt`` and write ``cfg.num_images`` images and their tables to ``cfg.out``."""
    from models.checkpoint import load_generator

    check_settings(cfg)
    previous = previous_set(cfg.out, bool(cfg.overwrite))  # refuses a folder it may not write to, deletes nothing yet
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model = load_generator(cfg.ckpt, use_ema=cfg.use_ema, map_location=device, local_files=cfg.local_files)
    check_conditioning(model, cfg)
    sampling = sampling_settings(model, cfg.guidance_scale, cfg.sampler.name, cfg.sampler.steps)
    reference = load_reference(cfg.reference, model.image_size) if cfg.reference else None
    conditions, unknown = build_conditions(model, cfg)
    out = clear_previous_set(cfg.out, previous)
    files = planned_files(cfg.num_images, bool(cfg.grid))
    record = {"checkpoint": str(Path(cfg.ckpt).absolute()), "settings": OmegaConf.to_container(cfg, resolve=True),
              "unrecognised_prompts": unknown}
    write_manifest(out, files, record, complete=False)  # first, so overwrite=true can clear a half-written set
    rows = generate_images(model, out, conditions, cfg.num_images, cfg.seed, cfg.batch_size, reference, cfg.progress, sampling)
    write_notice(out, model.data_info.source, "Images generated by a model")
    if cfg.grid:
        save_captioned_grid(rows, out, int(cfg.grid_columns))
    write_manifest(out, files, record, complete=True)
    return rows


def save_captioned_grid(rows: list[dict[str, Any]], out: Path, columns: int = 8) -> Path:
    """``out/grid.png``: one row per distinct prompt (first ``columns`` images of it), the prompt wrapped beside it."""
    from evaluation.writing import save_captioned_rows

    by_prompt: dict[str, list[str]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"], []).append(row["file"])
    captioned = []
    for prompt, files in by_prompt.items():
        images = []
        for name in files[:columns]:
            with Image.open(out / name) as image:
                images.append(np.asarray(image.convert("RGB")))
        captioned.append((prompt or "(unconditional)", images))
    return save_captioned_rows(captioned, out / "grid.png", columns)


@command("generate", verbatim=("prompt",))
def main(cfg: DictConfig) -> None:
    rows = generate(cfg)
    print(f"wrote {len(rows)} images, metadata.csv and generate.json to {Path(cfg.out).absolute()}", flush=True)


if __name__ == "__main__":
    main()
