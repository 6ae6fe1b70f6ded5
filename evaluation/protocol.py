"""The evaluation protocol: one function fills every key of metrics.json for any generator.

Steps: (1) the domain judge and the feature extractor; (2) real test features (cached);
(3) generation, split across DDP ranks in fixed chunks whose seeds depend on the chunk only, so
the union of samples is the same for any number of ranks; (4) per-sample work on each rank
(features, judge logits, thumbnails) gathered to every rank; (5) set-level figures: FD, KID, IS,
precision/recall, conditioning accuracy, memorization, per skin tone, reconstruction; the FD floor
(real validation vs real test) and the extras that metrics.json has no key for go to
``eval/details.json`` beside it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.resumable import rank_and_world
from evaluation.conditioning import (
    accuracy_by_class,
    conditioning_accuracy,
    confusion_by_head,
    head_correct_from_logits,
    save_class_grid,
    summarize,
)
from evaluation.data import cache_root, collect, split_hash, take
from evaluation.features import FeatureExtractor, build_feature_extractor, extract
from evaluation.fid import RealFeatureCache, all_figures, frechet_distance, inception_score
from evaluation.groups import per_skin_tone
from evaluation.judge import Judge, load_or_train_judge
from evaluation.memorization import memorization_report, save_pairs
from evaluation.reconstruction import reconstruction_metrics
from evaluation.schema import METRIC_KEYS, empty_metrics
from models.classifier import ATTRIBUTE_PREFIX, LABEL_HEAD, SKIN_TONE_HEAD, batch_targets, head_values

log = logging.getLogger(__name__)


def gather_rows(tensor: Tensor, device: torch.device) -> Tensor:
    """Concatenate a per-rank (n_r, ...) tensor over ranks (uneven n_r allowed); identity on one process."""
    if rank_and_world()[1] == 1:
        return tensor
    from torchmetrics.utilities.distributed import gather_all_tensors

    on_device = tensor.to(device if dist.get_backend() == "nccl" else "cpu")
    return torch.cat([t.cpu() for t in gather_all_tensors(on_device.contiguous())])


def shared_judge(datamodule: Any, eval_cfg: Any, progress: bool) -> Judge:
    """The cached judge; on several ranks, rank 0 trains or loads it first and the others then load it."""
    rank, world = rank_and_world()
    cache = cache_root(eval_cfg)
    if world > 1 and rank != 0:
        dist.barrier()
    judge = load_or_train_judge(datamodule, eval_cfg["judge"], cache, progress=progress)
    if world > 1 and rank == 0:
        dist.barrier()
    return judge


def real_features(
    extractor: FeatureExtractor, dataset: Any, split: str, datamodule: Any, eval_cfg: Any, images: Tensor, progress: bool
) -> tuple[Tensor, Tensor]:
    """Features and logits of real ``images`` of a split, from the cache when they were computed before."""
    info = datamodule.info
    key = RealFeatureCache.key(
        data=info.fingerprint or info.to_dict(), split=split, members=split_hash(dataset), num=int(images.shape[0]),
        size=info.image_size, extractor=extractor.name,
    )
    cache = RealFeatureCache(cache_root(eval_cfg))
    stored = cache.load(key)
    if stored is not None:
        return stored["features"], stored["logits"]
    features, logits = extract(extractor, images, eval_cfg.get("batch_size", 64), progress, desc=f"{split} features")
    if rank_and_world()[0] == 0:
        cache.save(key, {"features": features, "logits": logits})
    return features, logits


def ensure_setup(datamodule: Any) -> None:
    if getattr(datamodule, "test_set", None) is None or getattr(datamodule, "train_set", None) is None:
        datamodule.setup()


@torch.no_grad()
def generate_shard(model: Any, conditions: dict[str, Any] | None, num_images: int, batch_size: int, seed: int, progress: bool) -> tuple[Tensor, Tensor, float]:
    """This rank's share of the samples: images, their global indices, and seconds spent generating.

    Chunk c (rows c*batch_size ...) is drawn by rank c % world with seed ``seed * 1_000_003 + c``.
    """
    rank, world = rank_and_world()
    chunks = [c for c in range(math.ceil(num_images / batch_size)) if c % world == rank]
    images, indices, seconds = [], [], 0.0
    for chunk in tqdm(chunks, desc="generate", disable=not progress, leave=False):
        rows = list(range(chunk * batch_size, min(num_images, (chunk + 1) * batch_size)))
        generator = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
        start = time.perf_counter()
        batch = model.generate(take(conditions, rows) if conditions is not None else None, len(rows), generator=generator)
        if batch.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        images.append(batch.float().clamp(-1, 1).cpu())
        indices.append(torch.tensor(rows))
    if not images:
        return torch.empty(0, 3, model.image_size, model.image_size), torch.empty(0, dtype=torch.long), 0.0
    return torch.cat(images), torch.cat(indices), seconds


def evaluate_generator(model: Any, datamodule: Any, eval_cfg: Any, out_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` against ``datamodule``'s real test split; return the metrics.json dict.

    ``extra`` supplies what only the runner knows (exp, data, seed, train_steps, train_time_s).
    Rank 0 writes ``out_dir/eval/`` (sample grid, closest-pairs grid, details.json); the caller
    writes metrics.json.
    """
    extra = dict(extra or {})
    unknown = set(extra) - set(METRIC_KEYS)
    if unknown:
        raise ValueError(f"extra has keys outside the metrics.json schema: {sorted(unknown)}")
    out_dir = Path(out_dir)
    eval_dir = out_dir / "eval"
    rank, world = rank_and_world()
    progress = bool(eval_cfg.get("progress", True)) and rank == 0
    seed = int(extra.get("seed", eval_cfg.get("seed", 0)))
    batch_size = int(eval_cfg.get("batch_size", 64))
    ensure_setup(datamodule)
    info = datamodule.info
    device = model.device

    # (1) judge and feature extractor
    judge = shared_judge(datamodule, eval_cfg, progress)
    extractor = build_feature_extractor(eval_cfg, lambda: judge, device)

    # (2) real test images and their features (subset fixed by seed 0, so runs share it)
    real = collect(datamodule.test_set, eval_cfg.get("num_real"), seed=0, progress=progress)
    real_feats, _ = real_features(extractor, datamodule.test_set, "test", datamodule, eval_cfg, real["image"], progress)

    # (3) generation, sharded by rank
    num_generated = int(eval_cfg["num_generated"])
    conditional = getattr(model, "conditioning", "none") != "none"
    conditions = datamodule.sample_conditions(num_generated, seed=seed) if conditional else None
    was_training = model.training
    model.eval()
    images, indices, seconds = generate_shard(model, conditions, num_generated, batch_size, seed, progress)

    # (4) per-sample work on this rank, then gathered and put back in sample order
    feats, logits = extract(extractor, images, batch_size, progress, desc="generated features")
    judge_logits = judge.logits(images) if images.shape[0] else {h: torch.empty(0, n) for h, n in judge.heads.items()}
    thumb_size = int(eval_cfg["memorization"].get("thumbnail_size", 64))
    thumbs = torch.nn.functional.interpolate(images, size=thumb_size, mode="area") if images.shape[-1] > thumb_size else images
    gathered = {name: gather_rows(t, device) for name, t in {"index": indices, "features": feats, "logits": logits, "thumbs": thumbs}.items()}
    judge_logits = {h: gather_rows(t, device) for h, t in judge_logits.items()}
    order = gathered["index"].argsort()
    fake_feats, fake_logits, fake_thumbs = (gathered[k][order] for k in ("features", "logits", "thumbs"))
    judge_logits = {h: t[order] for h, t in judge_logits.items()}

    # (5) set-level figures
    metrics = empty_metrics()
    metrics.update(
        data=info.source, image_size=info.image_size, seed=seed, num_real=int(real["image"].shape[0]),
        num_generated=int(fake_feats.shape[0]), feature_extractor=extractor.name, nfe=getattr(model, "nfe", None),
        sample_time_s_per_image=seconds / max(1, images.shape[0]) if images.shape[0] else None,
    )
    metrics.update(extra)
    figures = all_figures(
        real_feats, fake_feats, int(eval_cfg.get("kid_subsets", 100)), int(eval_cfg.get("kid_subset_size", 1000)),
        int(eval_cfg.get("pr_neighborhood", 3)), seed,
    )
    metrics.update(figures)
    metrics["is_mean"], metrics["is_std"] = inception_score(fake_logits, int(eval_cfg.get("is_splits", 10)), seed)

    details: dict[str, Any] = {"feature_extractor": extractor.name, "judge": judge.name, "judge_sanity": judge.sanity, "world_size": world}
    correct = None
    if conditional:
        targets = batch_targets(conditions, judge.heads)
        correct = head_correct_from_logits(judge_logits, targets)
        metrics["cond_accuracy"] = conditioning_accuracy(judge, correct, figures["fid"], extractor.name)
        details["cond_confusion"] = confusion_by_head(judge_logits, targets, info)

    memorization_cfg = eval_cfg["memorization"]
    if memorization_cfg.get("enabled", True):
        train = collect(datamodule.train_set, memorization_cfg.get("num_train"), seed=0, progress=progress)
        train_feats, _ = real_features(extractor, datamodule.train_set, "train", datamodule, eval_cfg, train["image"], progress)
        metrics["memorization"] = memorization_report(
            fake_thumbs, fake_feats, train["image"], train_feats,
            grid_path=eval_dir / "closest_pairs.png" if rank == 0 else None,
            pixel_size=int(memorization_cfg.get("pixel_size", 32)), percentile=float(memorization_cfg.get("percentile", 1.0)),
            num_pairs=int(memorization_cfg.get("num_pairs", 16)),
        )

    if info.skin_tones:
        if conditional and "skin_tone" in conditions:
            fake_tones, source = torch.as_tensor(conditions["skin_tone"]).long(), "condition"
        else:
            fake_tones, source = judge_logits[SKIN_TONE_HEAD].argmax(1) + 1, "judge"
        metrics["per_skin_tone"] = per_skin_tone(
            real_feats, real["skin_tone"], fake_feats, fake_tones, source,
            cond_accuracy_of=(lambda rows: summarize(correct, rows)[0]) if correct is not None else None,
            min_group_size=int(eval_cfg.get("min_group_size", 10)), kid_subset_size=int(eval_cfg.get("kid_subset_size", 1000)), seed=seed,
        )

    _apply_recon_settings(model, eval_cfg)
    recon = reconstruction_metrics(model, take(real, slice(0, int(eval_cfg.get("num_recon", 64)))), batch_size, seed, progress)
    if recon is not None:
        metrics.update(ssim=recon["ssim"], psnr=recon["psnr"], reconstruction_protocol=model.reconstruction_protocol)
        details["ms_ssim"] = recon["ms_ssim"]

    if eval_cfg.get("fd_floor", True) and getattr(datamodule, "val_set", None) is not None and len(datamodule.val_set) > 1:
        details["fd_floor"] = fd_floor(extractor, datamodule, eval_cfg, real_feats, progress)
    model.train(was_training)

    if rank == 0:
        save_pairs(images[:64], eval_dir / "samples.png") if images.shape[0] else None
        write_sample_table(images[:64], conditions, judge_logits, info, eval_dir)
        if correct is not None and LABEL_HEAD in correct:
            labels = torch.as_tensor(conditions["label"]).long()
            details["cond_accuracy_by_class"] = accuracy_by_class(correct, labels, tuple(info.class_names))
            save_class_grid(fake_thumbs, labels, details["cond_accuracy_by_class"], tuple(info.class_names), eval_dir / "by_class.png")
        (eval_dir / "details.json").write_text(json.dumps(details, indent=1, default=str))
    return metrics


def write_sample_table(images: Tensor, conditions: dict[str, Any] | None, judge_logits: dict[str, Tensor], info: Any, eval_dir: Path) -> None:
    """``eval/samples/<i>.png`` plus ``eval/samples.json``: each sample's prompt and what the judge reads in it.

    The runner turns these into a W&B table (image, prompt, predicted attributes).
    """
    from torchvision.utils import save_image

    sample_dir = eval_dir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    names = head_values(info)
    rows = []
    for i, image in enumerate(images):
        save_image((image.float().cpu().clamp(-1, 1) + 1) / 2, sample_dir / f"{i:03d}.png")
        predicted = {}
        for head, logits in judge_logits.items():
            index = int(logits[i].argmax())
            if head == SKIN_TONE_HEAD:
                predicted["skin_tone"] = index + 1
            else:
                predicted["diagnosis" if head == LABEL_HEAD else head.removeprefix(ATTRIBUTE_PREFIX)] = names[head][index]
        caption = str(conditions["caption"][i]) if conditions is not None else None
        rows.append({"file": f"samples/{i:03d}.png", "caption": caption, "predicted": predicted})
    (eval_dir / "samples.json").write_text(json.dumps({"nrow": 8, "captions": [r["caption"] for r in rows], "samples": rows}, indent=1))


def fd_floor(extractor: FeatureExtractor, datamodule: Any, eval_cfg: Any, test_feats: Tensor, progress: bool) -> dict[str, Any]:
    """FD between the real validation and test splits: what "as close as real data" looks like."""
    val = collect(datamodule.val_set, eval_cfg.get("num_real"), seed=0, progress=progress)
    val_feats, _ = real_features(extractor, datamodule.val_set, "val", datamodule, eval_cfg, val["image"], progress)
    floor = {"fid": frechet_distance(test_feats, val_feats), "num_val": int(val_feats.shape[0]), "num_test": int(test_feats.shape[0])}
    # FD is biased upward at small n: the floor with as many real images as the run generated
    n = min(int(eval_cfg.get("num_generated") or 0), int(val_feats.shape[0]))
    if 1 < n < val_feats.shape[0]:
        # a seeded random subset: split files are often sorted (HAM10000 by diagnosis), so the first n are not a sample
        subset = torch.randperm(val_feats.shape[0], generator=torch.Generator().manual_seed(0))[:n]
        floor.update(fid_at_num_generated=frechet_distance(test_feats, val_feats[subset.to(val_feats.device)]), num_generated=n)
    return floor




def _apply_recon_settings(model: Any, eval_cfg: Any) -> None:
    """Hand the protocol's settings to models that read them (attributes ``recon_strength``, ``gan_projection_steps``)."""
    for key in ("recon_strength", "gan_projection_steps"):
        if hasattr(model, key) and eval_cfg.get(key) is not None:
            setattr(model, key, eval_cfg[key])


@torch.no_grad()
def quick_fd(model: Any, datamodule: Any, eval_cfg: Any, num_images: int, seed: int = 0) -> float:
    """FD of ``num_images`` samples against the real test features: a cheap training-time signal (``val/fd``)."""
    ensure_setup(datamodule)
    judge = shared_judge(datamodule, eval_cfg, progress=False)
    extractor = build_feature_extractor(eval_cfg, lambda: judge, model.device)
    real = collect(datamodule.test_set, eval_cfg.get("num_real"), seed=0)
    real_feats, _ = real_features(extractor, datamodule.test_set, "test", datamodule, eval_cfg, real["image"], False)
    conditions = datamodule.sample_conditions(num_images, seed=seed) if getattr(model, "conditioning", "none") != "none" else None
    images, _, _ = generate_shard(model, conditions, num_images, int(eval_cfg.get("batch_size", 64)), seed, False)
    feats, _ = extract(extractor, images, int(eval_cfg.get("batch_size", 64)))
    return frechet_distance(real_feats, gather_rows(feats, model.device))
