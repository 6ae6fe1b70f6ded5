"""The evaluation protocol: one function fills every key of metrics.json for any generator.

Stages, each in its own module: set-up (``resources``: judge, feature networks, real sets; done
before training by the callback), sample (``sampling``) and extract (``extraction``) per evaluation
seed and held-out prompt set, score (``scoring``, ``conditioning``, ``memorization``, ``groups``,
``reconstruction``) and write (``writing``; metrics.json itself is written by the caller).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from evaluation.conditioning import conditioning_accuracy, confusion_by_head, readable
from evaluation.data import take
from evaluation.distributed import gather_rows, rank_and_world
from evaluation.generation import HOLDOUTS, SampleSet, draw_sample_set, eval_conditions, generate_shard, is_conditional
from evaluation.features import extract
from evaluation.fid import frechet_distance
from evaluation.memorization import memorization_report, training_reference
from evaluation.provenance import evaluation_provenance
from evaluation.reconstruction import reconstruction_metrics
from evaluation.resources import FLOOR_SPLIT, EvalResources, prepare_evaluation
from evaluation.schema import METRIC_KEYS, empty_metrics
from evaluation.scoring import bootstrap_weights, distribution_scores, domain_fd, floor_scores, spread
from evaluation.tone_following import tone_block
from evaluation.writing import save_closest_pairs, write_files
from models.classifier import batch_targets
from models.generative import ReconstructionSettings, SamplingSettings

NO_INCEPTION_SCORE = "the FID Inception file has pool3 features only, no classifier logits: no Inception Score"


@contextmanager
def evaluation_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def validation_fd(model: Any, datamodule: Any, resources: EvalResources, cfg: Any, num_images: int) -> float:
    """FD of ``num_images`` fresh samples against the prepared real set, in ``eval.val_fd.feature_extractor``'s space."""
    choice = cfg["val_fd"]["feature_extractor"]
    extractor = resources.domain if choice == "domain" else resources.primary
    if choice != "domain" and extractor.name == resources.domain.name:
        raise ValueError(f"eval.val_fd.feature_extractor={choice} needs eval.feature_extractor={choice}")
    seed = int(cfg["seeds"][0])
    conditions = eval_conditions(datamodule, num_images, seed, resources.split) if is_conditional(model) else None
    images, _, _ = generate_shard(model, conditions, num_images, int(cfg["batch_size"]), seed)
    features = gather_rows(extract(extractor, images, int(cfg["feature_batch_size"])), model.device)
    return frechet_distance(resources.real.features[extractor.name], features)


def draw_sets(model: Any, datamodule: Any, resources: EvalResources, cfg: Any, sampling: SamplingSettings | None, progress: bool) -> list[SampleSet]:
    """One sample set per evaluation seed, prompted like the evaluation split's images."""
    sets = []
    for seed in cfg["seeds"]:
        n = int(cfg["num_generated"])
        conditions = eval_conditions(datamodule, n, int(seed), resources.split) if is_conditional(model) else None
        sets.append(draw_sample_set(model, conditions, n, int(seed), resources, cfg, sampling, progress))
    return sets


def draw_prompt_set(model: Any, datamodule: Any, resources: EvalResources, cfg: Any, sampling: SamplingSettings | None,
                    progress: bool, kind: str, section: str, name: str) -> list[SampleSet] | str:
    """The sample set of one extra prompt kind (``eval.<section>.num_generated`` samples, first evaluation
    seed, judge only), or why there is none, worded with ``name``."""
    if not is_conditional(model):
        return "an unconditional model takes no prompts"
    n, seed = int(cfg[section]["num_generated"]), int(cfg["seeds"][0])
    if n <= 0:
        return f"eval.{section}.num_generated is 0"
    try:
        conditions = eval_conditions(datamodule, n, seed, resources.split, holdout=kind)
    except ValueError as error:
        return f"no {name} prompts: {error}"
    return [draw_sample_set(model, conditions, n, seed, resources, cfg, sampling, progress, features=False)]


def draw_heldout(model: Any, datamodule: Any, resources: EvalResources, cfg: Any, sampling: SamplingSettings | None, progress: bool) -> dict[str, Any]:
    """Per held-out prompt kind: its sample set, or why there is none."""
    return {kind: draw_prompt_set(model, datamodule, resources, cfg, sampling, progress, kind, "heldout", f"held-out {kind}")
            for kind in HOLDOUTS}


def draw_balanced(model: Any, datamodule: Any, resources: EvalResources, cfg: Any, sampling: SamplingSettings | None,
                  progress: bool) -> list[SampleSet] | str:
    """The class-balanced prompt set, or why there is none."""
    return draw_prompt_set(model, datamodule, resources, cfg, sampling, progress, "balanced", "balanced", "class-balanced")


def distribution_block(sets: list[SampleSet], resources: EvalResources, cfg: Any) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """FID/KID/precision/recall (and fd_domain) with intervals and seed spread; the bootstrap weights used."""
    primary, domain, real = resources.primary, resources.domain, resources.real
    weights = bootstrap_weights([real.size, *(s.size for s in sets)], cfg)
    scores = distribution_scores(real.features[primary.name], [s.features[primary.name] for s in sets], [int(s) for s in cfg["seeds"]], weights, cfg)
    metrics = dict(scores["figures"])
    intervals = dict(scores["intervals"])
    per_seed = dict(scores["per_seed"])
    if domain is not primary:
        metrics["fd_domain"], intervals["fd_domain"], per_seed["fd_domain"] = domain_fd(
            real.features[domain.name], [s.features[domain.name] for s in sets], weights, cfg
        )
    intervals.update(per_seed=per_seed, seed_spread=spread(per_seed), method=(
        f"{cfg['bootstrap']['level']:.0%} bootstrap intervals ({cfg['bootstrap']['resamples']} replicates resampling the "
        f"real and generated sets) of the mean over {len(sets)} evaluation seed(s): estimate -/+ z sd for fid, fd_domain, KID, "
        "precision and recall (the spread at this n; FD's finite-n offset is shared by runs at the same n and shown by the "
        "floor), percentiles for accuracies; Wilson for per-class proportions"
    ))
    if resources.floor is not None:
        floor = resources.floor
        metrics["floor"] = floor_scores(real.features[primary.name], floor.features[primary.name], weights[0], cfg, floor.split, resources.split,
                                        int(cfg["num_generated"]))
        if domain is not primary:
            metrics["floor"]["fd_domain"] = frechet_distance(real.features[domain.name], floor.features[domain.name])
    return metrics, intervals, weights


def memorization_block(sets: list[SampleSet], datamodule: Any, resources: EvalResources, cfg: Any, eval_dir: Path | None, progress: bool) -> dict[str, Any]:
    """Nearest training images of every generated sample (all seeds) beside those of the real evaluation images."""
    reference = training_reference(datamodule, resources.judge, cfg, progress)
    generated = torch.cat([s.thumbnails for s in sets])
    generated_features = torch.cat([s.features[resources.domain.name] for s in sets])
    report, distances, nearest_index = memorization_report(
        generated, generated_features, resources.real.batch["image"], resources.real.features[resources.domain.name],
        reference, cfg["memorization"], resources.split,
    )
    report["pairs_grid"] = None
    if eval_dir is not None:
        save_closest_pairs(generated, distances, nearest_index, reference["pixels"], eval_dir / "closest_pairs.png", int(cfg["memorization"]["num_pairs"]))
        report["pairs_grid"] = "closest_pairs.png"
    return report


def visual_accuracy_of(first: SampleSet, cond: dict[str, Any], heads: dict[str, int]) -> Callable[[torch.Tensor], float | None]:
    """Mean accuracy over the visual heads that have one, for a subset of the first set's samples (a row mask)."""
    visual = {h for h, e in cond["per_head"].items() if e["visual"] and e["accuracy"] is not None}
    targets = batch_targets(first.conditions, heads)
    hits = {h: (first.judge_logits[h].argmax(1) == t, t >= 0) for h, t in targets.items() if readable(h) in visual}

    def accuracy_of(rows: torch.Tensor) -> float | None:
        values = [float(hit[rows & known].float().mean()) for hit, known in hits.values() if (rows & known).any()]
        return sum(values) / len(values) if values else None

    return accuracy_of


def draw_tone(model: Any, datamodule: Any, resources: EvalResources, cfg: Any, sampling: SamplingSettings | None,
              progress: bool) -> list[SampleSet] | str:
    """The tone-balanced prompt set (every skin tone of the split equally often), or why there is none."""
    return draw_prompt_set(model, datamodule, resources, cfg, sampling, progress, "tone", "tone", "tone-balanced")


def evaluate_generator(
    model: Any, datamodule: Any, eval_cfg: Any, out_dir: str | Path, *, extra: dict[str, Any] | None = None,
    resources: EvalResources | None = None, sampling: SamplingSettings | None = None,
    checkpoint: str | Path | None = None, overrides: list[str] | None = None, budget: str | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` against the real ``eval.split`` of ``datamodule``; return the metrics.json dict.

    ``extra`` supplies what only the runner knows (exp, data, seed, train_steps, train_time_s);
    ``resources`` the prepared set-up (prepared here when None); ``sampling`` the sampler settings;
    ``checkpoint``, ``overrides``, ``budget`` and ``training`` (the run's step budget and what stopped it) go to
    the provenance. Rank 0 writes ``out_dir/eval/``;
    the caller writes metrics.json.
    """
    unknown = set(extra or {}) - set(METRIC_KEYS)
    if unknown:
        raise ValueError(f"extra has keys outside the metrics.json schema: {sorted(unknown)}")
    rank = rank_and_world()[0]
    progress = bool(eval_cfg["progress"]) and rank == 0
    resources = resources or prepare_evaluation(datamodule, eval_cfg, model.device, progress)
    settings = ReconstructionSettings(strength=float(eval_cfg["recon_strength"]), projection_steps=int(eval_cfg["gan_projection_steps"]))
    with evaluation_mode(model):
        sets = draw_sets(model, datamodule, resources, eval_cfg, sampling, progress)
        heldout = draw_heldout(model, datamodule, resources, eval_cfg, sampling, progress)
        balanced = draw_balanced(model, datamodule, resources, eval_cfg, sampling, progress)
        tone = draw_tone(model, datamodule, resources, eval_cfg, sampling, progress) if datamodule.info.tone_field else "no skin tones"
        recon_real = take(resources.real.batch, slice(0, int(eval_cfg["num_recon"])))
        recon = reconstruction_metrics(model, recon_real, settings, sampling, int(eval_cfg["batch_size"]), int(eval_cfg["seeds"][0]), progress)
    eval_dir = Path(out_dir) / "eval" if rank == 0 else None
    metrics, details = score(model, datamodule, sets, heldout, balanced, resources, eval_cfg, eval_dir, progress, tone)
    if recon is not None:
        metrics.update(ssim=recon["ssim"], psnr=recon["psnr"], reconstruction_protocol=model.reconstruction_protocol(settings, sampling))
        details["ms_ssim"] = recon["ms_ssim"]
    else:
        metrics["nulls"].update(dict.fromkeys(("ssim", "psnr", "reconstruction_protocol"), f"{type(model).__name__} has no reconstruction protocol"))
    metrics.update({k: v for k, v in (extra or {}).items()})
    metrics.update(
        nfe=model.nfe(sampling), sample_time_s_per_image=sum(s.seconds for s in sets) / max(1, sum(s.drawn for s in sets)),
        provenance=evaluation_provenance(
            data_fingerprint=datamodule.info.fingerprint, judge=resources.judge, extractors=resources.extractors,
            settings=eval_settings(model, eval_cfg, resources, sampling, settings, budget), setup=resources.timing,
            checkpoint=checkpoint, overrides=overrides, model=model.provenance(),
        ),
    )
    if training is not None:
        metrics["provenance"]["training"] = dict(training)
    if eval_dir is not None:
        grid_set = sets[0] if isinstance(balanced, str) else balanced[0]
        write_files(eval_dir, sets[0], grid_set, resources.real.batch, datamodule.info, metrics, details)
    return metrics


def eval_settings(model: Any, cfg: Any, resources: EvalResources, sampling: SamplingSettings | None,
                  settings: ReconstructionSettings, budget: str | None) -> dict[str, Any]:
    """``provenance.eval``: what was sampled, how many, against what."""
    return {
        "split": resources.split, "floor_split": FLOOR_SPLIT if resources.floor is not None else None,
        "n": int(cfg["num_generated"]), "num_real": resources.real.size, "seeds": [int(s) for s in cfg["seeds"]],
        **model.sampling_description(sampling),
        "reconstruction": {"strength": settings.strength, "projection_steps": settings.projection_steps, "num": int(cfg["num_recon"])},
        "bootstrap": {"resamples": int(cfg["bootstrap"]["resamples"]), "level": float(cfg["bootstrap"]["level"])},
        "heldout_n": int(cfg["heldout"]["num_generated"]), "balanced_n": int(cfg["balanced"]["num_generated"]),
        "tone_n": int(cfg["tone"]["num_generated"]), "budget": budget,
    }


def score(model: Any, datamodule: Any, sets: list[SampleSet], heldout: dict[str, Any], balanced: list[SampleSet] | str,
          resources: EvalResources, cfg: Any, eval_dir: Path | None, progress: bool,
          tone: list[SampleSet] | str = "no tone-balanced prompts") -> tuple[dict[str, Any], dict[str, Any]]:
    """Every set-level figure; metrics (with intervals and null reasons) and the details.json extras."""
    info = datamodule.info
    metrics = empty_metrics()
    metrics.update(
        data=info.source, image_size=info.image_size, eval_split=resources.split, num_real=resources.real.size,
        num_generated=sets[0].size, feature_extractor=resources.primary.name,
    )
    nulls: dict[str, str] = {"is_mean": NO_INCEPTION_SCORE, "is_std": NO_INCEPTION_SCORE}
    figures, intervals, weights = distribution_block(sets, resources, cfg)
    metrics.update(figures)
    if resources.domain is resources.primary:
        nulls["fd_domain"] = "fid is itself in the judge's feature space (eval.feature_extractor=domain)"
    if resources.floor is None:
        nulls["floor"] = "eval.floor is off"
    details: dict[str, Any] = {"judge": resources.judge.name, "judge_sanity": resources.judge.sanity, "world_size": rank_and_world()[1]}
    if is_conditional(model):
        held = {kind: group if isinstance(group, str) else (group, bootstrap_weights([s.size for s in group], cfg, stream=2 + i))
                for i, (kind, group) in enumerate(heldout.items())}
        balanced_group = balanced if isinstance(balanced, str) else (balanced, bootstrap_weights([s.size for s in balanced], cfg, stream=2 + len(held)))
        cond, cond_intervals, cond_nulls = conditioning_accuracy(sets, weights[1:], held, balanced_group, resources, tuple(info.class_names), cfg)
        metrics["cond_accuracy"] = cond
        intervals.update(cond_intervals)
        nulls.update(cond_nulls)
        details["cond_confusion"] = confusion_by_head(sets[0].judge_logits, batch_targets(sets[0].conditions, resources.judge.heads), info)
    else:
        nulls["cond_accuracy"] = f"{type(model).__name__} is unconditional"
    if cfg["memorization"]["enabled"]:
        metrics["memorization"] = memorization_block(sets, datamodule, resources, cfg, eval_dir, progress)
    else:
        nulls["memorization"] = "eval.memorization.enabled is false"
    if info.tone_field is not None:
        cond = metrics["cond_accuracy"]
        metrics["per_skin_tone"] = tone_block(
            sets[0], tone if isinstance(tone, str) else tone[0], resources.real.batch, resources.real.features[resources.primary.name],
            resources.primary.name, info, resources.judge.heads, cfg,
            None if cond is None else visual_accuracy_of(sets[0], cond, resources.judge.heads), eval_dir,
        )
        following = metrics["per_skin_tone"]["tone_following"]
        if following is not None:
            intervals["tone_following"] = following["accuracy_interval"]
    else:
        nulls["per_skin_tone"] = f"{info.source} has no skin tones (no Fitzpatrick types, no ITA reading)"
    metrics["intervals"], metrics["nulls"] = intervals, nulls
    return metrics, details
