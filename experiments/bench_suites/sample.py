"""``sample`` suite: seconds and network evaluations per image for each sampler, and what speed costs in FD.

    python -m experiments.bench sample                                   # untrained ddpm: timings, NFE
    python -m experiments.bench sample sample.ckpt=runs/ddpm/<run>/checkpoints/last.ckpt    # + the FD ratio

Samplers (``models.diffusion``): DDPM-``ddpm_steps`` (1000), DDIM-``ddim_steps`` (50) and
DPM-Solver++ at each of ``dpm_steps`` (20, 10), all run on the same model in this process.

Keys:
- ``sample.nfe`` {"ddpm-1000": .., ...}: network evaluations per image (``model.nfe(sampling)``: steps,
  doubled under classifier-free guidance; a guided model batches cond + uncond in one forward).
- ``sample.s_per_image`` {...}: wall seconds per image over ``num_images`` (16) images, drawn in
  batches of ``eval.batch_size`` by the evaluation's own ``generate_shard``.
- ``sample.dpm20_fd_over_ddpm1000``: FD(DPM-Solver++-20) / FD(DDPM-1000), each over ``fd_images``
  (100) samples against the real validation split in the domain judge's feature space (the
  evaluation's cached judge, real features and Fréchet distance). Target <= 1.10 at 50x fewer NFE (``sample.nfe_ratio``).
  Both start from the same conditions and initial noise (same seeds). Needs a trained model
  (``ckpt=``, EMA weights); null otherwise.
- ``sample.fd`` {...}: the two FDs; ``sample.fd_floor_at_n``: FD of ``fd_images`` real test
  images against the same validation features (the evaluation's floor). FD over 100 images is biased upward; this floor is what
  a perfect generator would score at that n, so read the two FDs against it.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from evaluation.features import extract
from evaluation.fid import frechet_distance
from evaluation.resources import prepare_evaluation
from evaluation.generation import generate_shard
from experiments.bench_suites.common import (
    build_datamodule, compose_run_config, device, hydra_overrides, log, ratio, size_overrides,
)
from experiments.compose import checkpoint_config
from models.checkpoint import build_generator, build_stored_datamodule, load_generator, read_checkpoint, stored_config
from models.diffusion import sampler_name
from models.generative import SamplingSettings



def load_model(options: dict[str, str]) -> tuple[Any, Any, DictConfig, bool]:
    """The model, its data module, its run config (data and eval groups) and whether it is trained."""
    if options["ckpt"]:
        where = options["ckpt"]
        cfg = checkpoint_config(stored_config(read_checkpoint(where), where), hydra_overrides(options), "evaluate")
        return load_generator(where, map_location=device()), build_stored_datamodule(cfg.data, f"{where}: dermsynth_config.data"), cfg, True
    cfg = compose_run_config(options["exp"], options["budget"], [*size_overrides(options), *hydra_overrides(options)])
    datamodule = build_datamodule(cfg.data)
    torch.manual_seed(int(options["seed"]))
    return build_generator(cfg.model, datamodule.info).eval().to(device()), datamodule, cfg, False


def sampler_labels(options: dict[str, str]) -> list[tuple[str, str, int]]:
    """(label, sampler, steps) in run order; the first DPM-Solver++ entry is the FD one."""
    specs = [("ddpm", int(options["ddpm_steps"])), ("ddim", int(options["ddim_steps"]))]
    specs += [("dpm_solver++", int(steps)) for steps in options["dpm_steps"].split(",") if steps]
    if len(specs) < 3:
        raise ValueError("bench sample: dpm_steps needs at least one step count (the FD comparison's DPM-Solver++)")
    return [(f"{name}-{steps}", sampler_name(name), steps) for name, steps in specs]


def draw(model: Any, datamodule: Any, sampler: str, steps: int, count: int, batch_size: int, seed: int) -> tuple[torch.Tensor, float]:
    """``count`` samples with the given sampler (conditions from the training distribution) and their seconds."""
    conditional = model.conditioning != "none"
    conditions = datamodule.sample_conditions(count, seed=seed) if conditional else None
    images, _, seconds = generate_shard(model, conditions, count, batch_size, seed, progress=False, sampling=SamplingSettings(sampler, steps))
    return images, seconds


def fd_pair(model: Any, datamodule: Any, cfg: DictConfig, specs: list[tuple[str, str, int]], s_per_image: dict[str, float],
            fd_images: int, batch_size: int, seed: int) -> tuple[dict[str, float], float, str]:
    """FD of ``fd_images`` samples per sampler against the real validation images (judge features), and the floor."""
    eval_cfg = cfg.eval.copy()
    with open_dict(eval_cfg):
        # FD in the domain feature space (available offline), on the validation split (a tuning figure)
        eval_cfg.feature_extractor, eval_cfg.split, eval_cfg.floor, eval_cfg.num_generated = "domain", "val", True, fd_images
    resources = prepare_evaluation(datamodule, eval_cfg, model.device, bool(eval_cfg.progress))
    extractor = resources.domain
    real_feats = resources.real.features[extractor.name]
    fd: dict[str, float] = {}
    for label, sampler, steps in specs:
        started = time.perf_counter()
        log.info("sample: FD of %s over %d images, ~%.0f s", label, fd_images, s_per_image[label] * fd_images)
        images, _ = draw(model, datamodule, sampler, steps, fd_images, batch_size, seed)
        fd[label] = round(frechet_distance(real_feats, extract(extractor, images, batch_size)), 4)
        log.info("sample: FD %s = %.3f (%.0f s)", label, fd[label], time.perf_counter() - started)
    return fd, round(frechet_distance(real_feats, resources.floor.features[extractor.name]), 4), extractor.name


def suite(options: dict[str, str]) -> dict[str, Any]:
    model, datamodule, cfg, trained = load_model(options)
    if not model.sampling_description():
        raise SystemExit(f"bench sample: {type(model).__name__} has no diffusion sampler (use a ddpm, ddpm_class or hybrid model)")
    batch_size, seed = int(cfg.eval.get("batch_size", 64)), int(options["seed"])
    num_images, fd_images = int(options["num_images"]), int(options["fd_images"])
    specs = sampler_labels(options)
    draw(model, datamodule, specs[0][1], 2, 1, batch_size, seed)  # warm-up: lazy initialisation, allocator

    nfe, s_per_image = {}, {}
    per_evaluation = None  # seconds per image and network evaluation, to announce the long runs
    for label, sampler, steps in sorted(specs, key=lambda spec: spec[2]):  # cheapest first
        sampling = SamplingSettings(sampler, steps)
        expected = f", ~{per_evaluation * num_images * model.nfe(sampling):.0f} s" if per_evaluation else ""
        log.info("sample: %s on %d images%s", label, num_images, expected)
        _, seconds = draw(model, datamodule, sampler, steps, num_images, batch_size, seed)
        nfe[label], s_per_image[label] = int(model.nfe(sampling)), seconds / num_images
        per_evaluation = s_per_image[label] / nfe[label]
    nfe, s_per_image = {s[0]: nfe[s[0]] for s in specs}, {s[0]: round(s_per_image[s[0]], 4) for s in specs}

    dpm_label, ddpm_label = next(s for s in specs if s[1] == "dpm_solver++")[0], specs[0][0]
    fd, floor, extractor_name = fd_pair(model, datamodule, cfg, [s for s in specs if s[0] in (dpm_label, ddpm_label)],
                                        s_per_image, fd_images, batch_size, seed) if trained else ({}, None, None)

    guidance = model.sampling_description()["guidance_scale"]
    guided = guidance is not None and guidance != 1.0
    return {
        "sample.nfe": nfe,
        "sample.s_per_image": s_per_image,
        "sample.nfe_ratio": ratio(nfe[ddpm_label], nfe[dpm_label], 2),
        "sample.fd": fd or None,
        "sample.fd_floor_at_n": floor,
        "sample.dpm20_fd_over_ddpm1000": ratio(fd.get(dpm_label), fd.get(ddpm_label)),
        "sample.settings": {
            "options": dict(options),
            "model": type(model).__name__,
            "exp": cfg.get("exp_name"),
            "trained": trained,
            "image_size": int(model.image_size),
            "guided": guided,
            "guidance_scale": guidance,
            "generation_batch": batch_size,
            "device": model.device.type,
            "threads": torch.get_num_threads(),
            "fd_pair": [dpm_label, ddpm_label],
            "feature_extractor": extractor_name,
            "note": None if trained else "untrained model (no ckpt=): timings and NFE only; FD needs a trained checkpoint",
        },
    }
