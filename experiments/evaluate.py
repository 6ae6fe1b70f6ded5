"""Evaluate a checkpoint, or any two image folders, into metrics.json.

    python -m experiments.evaluate ckpt=runs/hybrid/2026-01-01_00-00-00/checkpoints/last.ckpt eval.split=test
    python -m experiments.evaluate real=DIR fake=DIR [out=DIR] [data=phantom] [eval.feature_extractor=domain]

Settings: configs/evaluate.yaml, which holds the run config, so any run key can be overridden
(``eval.split=test``, ``eval.seeds=[0,1,2]``, ``eval.num_generated=2000``) and a typo fails listing the
valid keys. With ``ckpt=`` the run config stored in the checkpoint is the base and the overrides apply
on top of it; ``model.guidance.scale``, ``model.sampler.name`` and ``model.sampler.steps`` change how
the checkpoint samples (passed to it as ``SamplingSettings``). A checkpoint's evaluation goes into a
new folder, ``<run>/eval/<split>_<time>/`` or ``out=DIR``, never over a metrics.json (the run's own
included); data whose fingerprint differs from the checkpoint's is refused. Folder mode writes into
``out`` (default: a new ``<fake>_eval_<time>/`` beside ``fake``: a data set is not written into) and pairs
files by name for SSIM/PSNR; its domain features need ``data=`` (the data set whose training split the
judge learns). Either ``out`` follows every command's rule (experiments/output_folder.py: new or empty,
or an earlier evaluation's, replaced with ``overwrite=true``). Both modes print the metrics as one JSON
object on the last line of stdout.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from datamodules.transforms import read_rgb
from evaluation.data import cache_root
from evaluation.features import FeatureExtractor, build_feature_extractor, extract
from evaluation.fid import distribution_figures
from evaluation.judge import load_or_train_judge
from evaluation.protocol import NO_INCEPTION_SCORE, evaluate_generator
from evaluation.provenance import code_provenance
from evaluation.reconstruction import image_quality
from evaluation.schema import empty_metrics, read_metrics_json, write_metrics_json
from experiments.checks import check_sampling, check_steps_for
from experiments.command import command, task_overrides
from experiments.compose import checkpoint_config, parse_overrides, with_checkpoint_data
from experiments.output_folder import check_output_folder, clear_output_folder, write_manifest
from models.checkpoint import build_stored_datamodule, load_generator, read_checkpoint, stored_config
from models.generative import SamplingSettings

OWN_KEYS = ("ckpt", "real", "fake", "out", "size", "overwrite", "local_files")
EVALUATE_ENTRIES = ["metrics.json", "eval"]  # what an evaluation writes in its folder (evaluate.json lists them)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def load_folder(folder: str | Path, size: int | None = None) -> tuple[list[str], torch.Tensor]:
    """File names and images (N, 3, S, S) in [-1, 1] of an image folder, resized to ``size`` (default: the first image's)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    images = []
    for path in files:
        try:
            image = read_rgb(path)  # 16-bit scaled, a truncated file refused: never a silently white or black image
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
        size = size or image.width
        image = image.resize((size, size), Image.BICUBIC) if image.size != (size, size) else image
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return [p.name for p in files], torch.stack(images).float() / 127.5 - 1


def evaluate_folders(real_dir: str | Path, fake_dir: str | Path, eval_cfg: Any, extractor: FeatureExtractor, size: int | None = None) -> dict[str, Any]:
    """FD, KID, precision/recall between two folders; SSIM/PSNR over files present in both."""
    real_names, real = load_folder(real_dir, size)
    fake_names, fake = load_folder(fake_dir, real.shape[-1])
    batch_size = int(eval_cfg["feature_batch_size"])
    real_feats, fake_feats = extract(extractor, real, batch_size), extract(extractor, fake, batch_size)
    metrics = empty_metrics()
    seed = int(eval_cfg["seeds"][0])
    metrics.update(
        exp="folders", data=str(real_dir), image_size=int(real.shape[-1]), num_real=len(real_names),
        num_generated=len(fake_names), feature_extractor=extractor.name,
        provenance={**code_provenance(), "data_fingerprint": None, "judge": None, "feature_extractors": [extractor.provenance()],
                    "checkpoint": None, "eval": {"real": str(real_dir), "fake": str(fake_dir)}, "overrides": [], "setup": None},
    )
    metrics.update(distribution_figures(real_feats, fake_feats, int(eval_cfg["kid_subsets"]), int(eval_cfg["kid_subset_size"]), int(eval_cfg["pr_neighborhood"]), seed))
    reason = "folder mode compares two image folders"
    metrics["nulls"].update(is_mean=NO_INCEPTION_SCORE, is_std=NO_INCEPTION_SCORE, fd_domain=reason, cond_accuracy=f"{reason}: no prompts",
                            memorization=f"{reason}: no training split", per_skin_tone=f"{reason}: no skin tones", floor=f"{reason}: no second real split")
    shared = sorted(set(real_names) & set(fake_names))
    if shared:
        real_index, fake_index = {n: i for i, n in enumerate(real_names)}, {n: i for i, n in enumerate(fake_names)}
        quality = image_quality(fake[[fake_index[n] for n in shared]], real[[real_index[n] for n in shared]])
        metrics.update(ssim=quality["ssim"], psnr=quality["psnr"], reconstruction_protocol=f"paired files ({len(shared)})")
    else:
        metrics["nulls"].update(dict.fromkeys(("ssim", "psnr", "reconstruction_protocol"), "no file name is in both folders"))
    return metrics


SAMPLING_KEYS = {"model.guidance.scale": "guidance_scale", "model.sampler.name": "sampler", "model.sampler.steps": "steps"}


def sampling_settings(overrides: list[str]) -> SamplingSettings:
    """``model.guidance.scale`` / ``model.sampler.name`` / ``model.sampler.steps`` as the settings the model samples with.

    Other ``model.*`` keys would need retraining: they fail instead of being silently ignored.
    """
    from models.diffusion import sampler_name

    found: dict[str, Any] = {}
    for override in parse_overrides(overrides):
        key = override.key_or_group
        if key in SAMPLING_KEYS:
            found[SAMPLING_KEYS[key]] = override.value()
        elif key.startswith("model."):
            raise ValueError(f"{key}: a trained checkpoint's model cannot change; only {', '.join(SAMPLING_KEYS)} can")
    check_sampling(("model.guidance.scale", found.get("guidance_scale")), ("model.sampler.steps", found.get("steps")))
    return SamplingSettings(
        sampler=sampler_name(str(found["sampler"])) if found.get("sampler") is not None else None,
        steps=int(found["steps"]) if found.get("steps") is not None else None,
        guidance_scale=float(found["guidance_scale"]) if found.get("guidance_scale") is not None else None,
    )


def evaluation_folder(ckpt: str | Path, out: str | Path | None, split: str, overwrite: bool = False) -> tuple[Path, list[str]]:
    """``out`` or a new ``<run>/eval/<split>_<time>/``, and what of an earlier evaluation there ``overwrite`` replaces.

    The folder must be new or empty, or an earlier evaluation's (``evaluate.json``): a run folder, its
    metrics.json or a user's files are never written over.
    """
    if out is None:
        run_dir = Path(ckpt).resolve().parent.parent
        out = run_dir / "eval" / f"{split}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    return Path(out), check_output_folder(out, "evaluate", overwrite=overwrite)


def check_data(checkpoint: dict[str, Any], datamodule: Any, data_cfg: Any) -> None:
    """Refuse data whose fingerprint differs from the data the checkpoint was trained and validated on."""
    trained = (checkpoint.get("data_info") or {}).get("fingerprint")
    if trained and datamodule.info.fingerprint != trained:
        stored = ((checkpoint.get("dermsynth_config") or {}).get("data")) or {}
        current = OmegaConf.to_container(data_cfg, resolve=True)
        differing = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k) and k != "cache_dir")
        raise ValueError(
            f"data fingerprint {datamodule.info.fingerprint} differs from the checkpoint's {trained} "
            f"(data keys that differ from the checkpoint's config: {differing or 'none: the files on disk changed'}); "
            "its validation and test splits would not be the ones the run held out"
        )


def evaluate_checkpoint(cfg: DictConfig, overrides: list[str]) -> tuple[dict[str, Any], Path]:
    """The checkpoint's generator under its stored run config with ``overrides`` on top, into a new folder."""
    sampling = sampling_settings(overrides)  # a bad sampling value fails before anything loads
    checkpoint = read_checkpoint(cfg.ckpt)
    run_cfg = checkpoint_config(stored_config(checkpoint, cfg.ckpt), overrides, "evaluate", OWN_KEYS)
    out, previous = evaluation_folder(cfg.ckpt, cfg.out, str(run_cfg.eval.split), bool(cfg.overwrite))
    model = load_generator(cfg.ckpt, map_location="cuda" if torch.cuda.is_available() else "cpu",
                           cache_dir=run_cfg.paths.cache_dir, local_files=cfg.local_files)
    check_steps_for(model, "model.sampler.steps", sampling.steps)
    datamodule = build_stored_datamodule(run_cfg.data, f"{cfg.ckpt}: dermsynth_config.data")
    check_data(checkpoint, datamodule, run_cfg.data)
    clear_output_folder(out, previous)
    write_manifest(out, "evaluate", EVALUATE_ENTRIES, {"ckpt": str(cfg.ckpt), "overrides": overrides})
    run_metrics = Path(cfg.ckpt).resolve().parent.parent / "metrics.json"
    previous = read_metrics_json(run_metrics) if run_metrics.is_file() else {}
    extra = {
        "exp": run_cfg.get("exp_name"), "data": run_cfg.data.get("source"), "seed": int(run_cfg.get("seed", 0)),
        "train_steps": int(checkpoint.get("global_step", 0)), "train_time_s": previous.get("train_time_s"),
    }
    clock = checkpoint.get("cpu_clock")  # the training's CPU seconds when this checkpoint was written (callbacks/cpu_budget.py)
    metrics = evaluate_generator(
        model, datamodule, run_cfg.eval, out, extra=extra, sampling=sampling,
        checkpoint=cfg.ckpt, overrides=overrides, budget=run_cfg.get("budget_name"),
        training=dict(clock, steps=extra["train_steps"]) if isinstance(clock, dict) else None,
    )
    return metrics, out


def evaluate_two_folders(cfg: DictConfig, overrides: list[str]) -> tuple[dict[str, Any], Path]:
    """FD and the other figures between ``cfg.real`` and ``cfg.fake``; domain features need ``data=``."""
    has_data = any(o.key_or_group == "data" for o in parse_overrides(overrides))
    if cfg.eval.feature_extractor == "domain" and not has_data:
        raise ValueError("domain features need data=<source> (the judge learns its training split), or use eval.feature_extractor=inception")
    out = folders_output(cfg.fake, cfg.out)
    previous = check_output_folder(out, "evaluate", overwrite=bool(cfg.overwrite))  # before anything is computed
    judge = None
    if has_data:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup()
        judge = load_or_train_judge(datamodule, cfg.eval.judge, cache_root(cfg.eval), progress=True)
    extractor = build_feature_extractor(cfg.eval.feature_extractor, judge)
    # Domain features are only valid at the size the judge learned; Inception resizes itself.
    size = cfg.size or (cfg.data.image_size if has_data else None)
    metrics = evaluate_folders(cfg.real, cfg.fake, cfg.eval, extractor, int(size) if size else None)
    clear_output_folder(out, previous)
    write_manifest(out, "evaluate", EVALUATE_ENTRIES, {"real": str(cfg.real), "fake": str(cfg.fake), "overrides": overrides})
    return metrics, out


def folders_output(fake: str | Path, out: str | Path | None) -> Path:
    """Folder mode's ``out``: as given, or a new ``<fake>_eval_<time>/`` beside ``fake`` (never inside a data set)."""
    if out is not None:
        return Path(out)
    fake = Path(fake).absolute()
    return fake.parent / f"{fake.name}_eval_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """The command (``cfg`` composed from configs/evaluate.yaml): returns the metrics it wrote.

    ``overrides``: the command line's overrides (default: those of the running Hydra app); in
    checkpoint mode they apply on top of the run config the checkpoint stores.
    """
    overrides = task_overrides() if overrides is None else list(overrides)
    if cfg.ckpt:
        metrics, out = evaluate_checkpoint(cfg, overrides)
    elif cfg.real and cfg.fake:
        metrics, out = evaluate_two_folders(cfg, overrides)
    else:
        raise SystemExit("usage: python -m experiments.evaluate ckpt=PATH [out=DIR] | real=DIR fake=DIR [out=DIR] [key=value ...]")
    write_metrics_json(out / "metrics.json", metrics)
    return metrics


@command("evaluate", prepare=functools.partial(with_checkpoint_data, ckpt_key="ckpt"))
def main(cfg: DictConfig) -> None:
    metrics = evaluate(cfg)
    print(json.dumps(metrics, default=str), flush=True)


if __name__ == "__main__":
    main()
