"""Downstream benchmark: does adding synthetic images help a classifier of real skin images?

    python -m experiments.augment data=ham10000 data.root=DIR data.image_size=64
    python -m experiments.augment data=folder data.root=DIR train_generators=false \\
        'generators.syn.checkpoints={0.1: A.ckpt, 0.25: B.ckpt, 1.0: C.ckpt}' 'generators.syn_class.checkpoints={...}'

For every real fraction (``data.train_fraction``), the generators are trained on that fraction only
(or given, and refused if their data fingerprint shows more), N class-balanced images are drawn from
each, and one classifier per (arm, seed) is trained (``evaluation.downstream``) and read on the whole
real test split. Each cell is written atomically to ``<out>/cells/`` as it finishes; a second call with
the same ``out`` skips the finished cells (and reuses generators and synthetic sets), so an interrupted
run resumes (``resume=never overwrite=true`` starts afresh; ``out`` follows every command's rule, so a folder
holding anything else is refused: experiments/output_folder.py). ``<out>/downstream.json`` holds every cell, the summary (figures over seeds, deltas against
``real`` and ``real_balanced`` paired by seed, with intervals) and the protocol; the plot of Δ balanced
accuracy against the real fraction goes beside it, and ``python -m experiments.report`` adds both to
report.md. The last stdout line is the headline as one JSON object. Settings: configs/augment.yaml.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from datamodules.atomic import atomic_write, write_text_atomic
from evaluation.bootstrap import draw_weights
from evaluation.data import collect, split_hash
from evaluation.downstream import ARMS, SYNTHETIC_OF_ARM, LabelledImages, draw_plan, synthetic_images, train_and_test
from evaluation.downstream_metrics import cell_figures
from evaluation.downstream_summary import summarize
from evaluation.provenance import code_provenance, file_hash
from experiments.augment_generators import generator_checkpoint, generator_spec, run_overrides, sampling_settings
from experiments.command import command, task_overrides
from experiments.compose import compose_config
from experiments.output_folder import check_output_folder, clear_output_folder, write_manifest
from experiments.report_downstream import headline, plot_deltas
from models.checkpoint import load_generator

COMMAND = "augment"
ENTRIES = ["cells", "synthetic", "generators", "downstream.json", "downstream_delta_balanced_accuracy.png"]


def augment(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """The command (``cfg`` composed from configs/augment.yaml); ``overrides``: its command line (default: Hydra's)."""
    started = time.perf_counter()
    check_settings(cfg)
    previous = earlier_output(cfg)  # a folder it may not write into is refused before anything is trained
    overrides = task_overrides() if overrides is None else list(overrides)
    fractions = [float(f) for f in cfg.real_fractions]
    datamodules = {f: fraction_datamodule(cfg.data, f) for f in fractions}
    context = shared_context(cfg, datamodules)
    clear_output_folder(cfg.out, previous)
    write_manifest(cfg.out, COMMAND, ENTRIES, complete=False)
    context.update(out=Path(cfg.out), forwarded=run_overrides(overrides, set(cfg.keys()) - set(compose_config("config").keys())))
    cells: list[dict[str, Any]] = []
    with tqdm(total=len(fractions) * len(cfg.arms) * len(cfg.seeds), desc="downstream cells", disable=not cfg.progress) as bar:
        for fraction in fractions:
            cells += fraction_cells(cfg, fraction, datamodules[fraction], context, bar)
    labels, class_names, level = context["test"]["label"].numpy(), context["class_names"], float(cfg.bootstrap.level)
    summary = summarize(cells, labels, context["weights"], class_names, level)
    results = {
        "data": cfg.data.source, "image_size": int(cfg.data.image_size), "class_names": class_names,
        "data_fingerprints": {f"{f:g}": dm.info.fingerprint for f, dm in datamodules.items()},
        "num_real": {f"{f:g}": len(dm.train_set) for f, dm in datamodules.items()},
        "test": {"n": len(labels), "split_hash": context["test_hash"], "class_counts": np.bincount(labels, minlength=len(class_names)).tolist()},
        "protocol": protocol(cfg), "generators": context["generators"],
        # Figures from the stored probabilities under this call's bootstrap, so resumed and fresh cells agree.
        "cells": [{**{k: v for k, v in cell.items() if k not in ("probabilities", "key")},
                   **cell_figures(np.asarray(cell["probabilities"]), labels, context["weights"], class_names, level)} for cell in cells],
        "summary": summary, "headline": headline(summary),
        "time_s": round(time.perf_counter() - started, 1), "provenance": code_provenance(),
    }
    write_text_atomic(context["out"] / "downstream.json", json.dumps(results, indent=1))
    plot_deltas(results, context["out"] / "downstream_delta_balanced_accuracy.png")
    write_manifest(context["out"], COMMAND, ENTRIES, complete=True)
    return results


def earlier_output(cfg: DictConfig) -> list[str]:
    """What this call clears of an earlier benchmark in ``out``: [] for a new or empty folder, and for its own earlier
    benchmark that it continues (finished cells kept); ``resume=never overwrite=true`` replaces that one instead.

    ``out`` follows every command's rule (experiments/output_folder.py): a folder holding anything else is refused.
    """
    out = Path(cfg.out)
    listed = (out / f"{COMMAND}.json").is_file()
    if listed or not (out / "cells").is_dir():
        if listed and cfg.resume != "never":
            check_output_folder(out, COMMAND, overwrite=True)  # refuses files besides its own; deletes nothing
            return []
        return check_output_folder(out, COMMAND, overwrite=bool(cfg.overwrite))
    entries = sorted(p.name for p in out.iterdir())  # a benchmark from before augment.json: its entries are ENTRIES
    foreign = [name for name in entries if name not in ENTRIES]
    if foreign:
        raise ValueError(f"out={out} holds files besides an earlier benchmark's ({', '.join(foreign[:5])}); move them or "
                         "choose another folder; nothing was deleted")
    if cfg.resume == "never" and not cfg.overwrite:
        raise ValueError(f"out={out} holds an earlier benchmark (resume=never); choose a new folder, or overwrite=true to replace it")
    return entries if cfg.resume == "never" else []


def shared_context(cfg: DictConfig, datamodules: dict[float, Any]) -> dict[str, Any]:
    """What every cell shares: the test and validation images, the bootstrap replicates, the class names."""
    first = next(iter(datamodules.values()))
    if first.info.num_classes < 2:
        raise ValueError(f"data {cfg.data.source!r} has {first.info.num_classes} class: the benchmark needs labelled data (a label column)")
    for split in ("val_set", "test_set"):
        if len({split_hash(getattr(dm, split)) for dm in datamodules.values()}) != 1:
            raise ValueError(f"the {split.removesuffix('_set')} split changes with data.train_fraction; every fraction must share it")
    test = collect(first.test_set)
    return {
        "test": test, "test_hash": split_hash(first.test_set), "class_names": list(first.info.class_names),
        "validation": collect(first.val_set, cfg.classifier.num_val, seed=0),
        "weights": draw_weights(len(test["label"]), int(cfg.bootstrap.resamples), int(cfg.bootstrap.seed)).numpy(),
        "generators": {},
    }


def check_settings(cfg: DictConfig) -> None:
    """Clear errors for settings that cannot make a benchmark, before anything is trained."""
    unknown = [arm for arm in cfg.arms if arm not in ARMS]
    if unknown or not cfg.arms:
        raise ValueError(f"arms: {unknown or 'empty'}; valid arms: {', '.join(ARMS)}")
    if not cfg.real_fractions or any(not 0.0 < float(f) <= 1.0 for f in cfg.real_fractions):
        raise ValueError(f"real_fractions must be a non-empty list of numbers in (0, 1], got {list(cfg.real_fractions or [])}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or len(set(cfg.real_fractions)) != len(cfg.real_fractions):
        raise ValueError(f"seeds and real_fractions: non-empty lists without repeats, got {list(cfg.seeds or [])}, {list(cfg.real_fractions)}")
    for key in ("steps", "batch_size", "eval_points"):
        if int(cfg.classifier[key]) < 1:
            raise ValueError(f"classifier.{key} must be a positive integer, got {cfg.classifier[key]}")
    if any(SYNTHETIC_OF_ARM[arm] for arm in cfg.arms) and int(cfg.num_synthetic) < 1:
        raise ValueError(f"num_synthetic must be positive for the arms {[a for a in cfg.arms if SYNTHETIC_OF_ARM[a]]}")


def fraction_datamodule(data_cfg: DictConfig, fraction: float) -> Any:
    """The data module of one scarcity level (``data.train_fraction``), set up."""
    node = data_cfg.copy()
    with open_dict(node):
        node.train_fraction = fraction
    datamodule = instantiate(node)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def protocol(cfg: DictConfig) -> dict[str, Any]:
    """The protocol as downstream.json states it: everything that fixes the figures."""
    keys = ("real_fractions", "seeds", "arms", "num_synthetic", "synthetic_share", "classifier", "bootstrap", "train_generators")
    stated = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key] for key in keys}
    generators = OmegaConf.to_container(cfg.generators, resolve=True)
    stated.update(generators=generators, budget=cfg.budget_name, image_size=int(cfg.data.image_size), seed=int(cfg.seed),
                  mixing="concatenated" if cfg.synthetic_share is None else f"{cfg.synthetic_share:g} of every batch synthetic",
                  selection=f"best validation balanced accuracy at {cfg.classifier.eval_points} evenly spaced steps")
    return stated


def cell_key(cfg: DictConfig, fingerprint: str, test_hash: str, arm: str, seed: int, spec: dict[str, Any] | None) -> dict[str, Any]:
    """What a cell's figures depend on; a stored cell is reused only under the same key."""
    kind = SYNTHETIC_OF_ARM[arm]
    key = {"data_fingerprint": fingerprint, "test_split": test_hash, "arm": arm, "seed": int(seed),
           "classifier": OmegaConf.to_container(cfg.classifier, resolve=True)}
    if kind is not None:
        key.update(generator=spec, num_synthetic=int(cfg.num_synthetic), sampling=OmegaConf.to_container(cfg.generators.sampling),
                   synthetic_seed=int(cfg.seed), synthetic_share=None if arm == "syn" else cfg.synthetic_share)
    return json.loads(json.dumps(key))


def read_cell(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored cell at ``path`` if it was computed under ``key``; None if absent; an error if it differs."""
    if not path.is_file():
        return None
    cell = json.loads(path.read_text())
    if cell.get("key") != key:
        differ = sorted(k for k in set(key) | set(cell.get("key") or {}) if key.get(k) != (cell.get("key") or {}).get(k))
        raise ValueError(f"{path} was computed under other settings ({', '.join(differ)} differ): use another out= for this protocol")
    return cell


def fraction_cells(cfg: DictConfig, fraction: float, datamodule: Any, context: dict[str, Any], bar: Any) -> list[dict[str, Any]]:
    """The (arm, seed) cells of one real fraction: stored ones read back, missing ones trained and written."""
    train = datamodule.train_set
    real = LabelledImages(train.table.images, train.labels, datamodule.augmentation)
    kinds = sorted({SYNTHETIC_OF_ARM[arm] for arm in cfg.arms} - {None})
    specs = {kind: generator_spec(cfg, kind, fraction, context["forwarded"]) for kind in kinds}
    for kind, spec in specs.items():
        context["generators"].setdefault(kind, {})[f"{fraction:g}"] = dict(spec)
    synthetic: dict[str, LabelledImages] = {}
    cells = []
    for arm in cfg.arms:
        kind = SYNTHETIC_OF_ARM[arm]
        for seed in cfg.seeds:
            path = context["out"] / "cells" / f"f{fraction:g}" / arm / f"seed{int(seed)}.json"
            key = cell_key(cfg, datamodule.info.fingerprint, context["test_hash"], arm, int(seed), specs.get(kind))
            cell = read_cell(path, key)
            if cell is None:
                if kind is not None and kind not in synthetic:
                    synthetic[kind] = synthetic_set(cfg, kind, fraction, datamodule, context)
                cell = run_cell(cfg, arm, int(seed), fraction, real, synthetic.get(kind), context)
                write_text_atomic(path, json.dumps({**cell, "key": key}))
            cells.append(cell)
            bar.update(1)
    return cells


def synthetic_set(cfg: DictConfig, kind: str, fraction: float, datamodule: Any, context: dict[str, Any]) -> LabelledImages:
    """The N class-balanced images of the ``kind`` generator for ``fraction``; drawn once, kept in ``<out>/synthetic/``."""
    out, start = context["out"], time.perf_counter()
    path = generator_checkpoint(cfg, kind, fraction, datamodule.info.fingerprint, context["forwarded"], out)
    key = json.dumps({"checkpoint_sha1": file_hash(path), "num_synthetic": int(cfg.num_synthetic), "seed": int(cfg.seed),
                      "sampling": OmegaConf.to_container(cfg.generators.sampling)}, sort_keys=True)
    context["generators"][kind][f"{fraction:g}"].update(checkpoint=str(path), synthetic=json.loads(key))
    store = out / "synthetic" / f"{kind}_f{fraction:g}.npz"
    if store.is_file():
        with np.load(store) as saved:
            if str(saved["key"]) == key:
                return LabelledImages(saved["images"], saved["labels"], datamodule.augmentation)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_generator(path, map_location=device, cache_dir=cfg.paths.cache_dir, local_files=cfg.local_files)
    sampling = sampling_settings(cfg)
    context["generators"][kind][f"{fraction:g}"].update(sampler=model.sampling_description(sampling), nfe=model.nfe(sampling))
    images, labels = synthetic_images(model, datamodule, int(cfg.num_synthetic), int(cfg.seed), int(cfg.generators.batch_size),
                                      sampling=sampling, progress=bool(cfg.progress))
    with atomic_write(store, "wb") as handle:
        np.savez(handle, images=images, labels=labels, key=np.array(key))
    context["generators"][kind][f"{fraction:g}"]["time_s"] = round(time.perf_counter() - start, 1)
    return LabelledImages(images, labels, datamodule.augmentation)


def run_cell(cfg: DictConfig, arm: str, seed: int, fraction: float, real: LabelledImages,
             synthetic: LabelledImages | None, context: dict[str, Any]) -> dict[str, Any]:
    """Train, select and test one classifier: what it did and its test probabilities (rounded as stored)."""
    recipe = cfg.classifier
    plan = draw_plan(arm, real.labels, len(synthetic) if synthetic is not None else 0, int(recipe.steps), int(recipe.batch_size),
                     seed, cfg.synthetic_share)
    result = train_and_test(real, synthetic, plan, recipe, len(context["class_names"]), context["validation"], context["test"]["image"],
                            seed, description=f"{arm} f={fraction:g} seed={seed}", progress=bool(cfg.progress))
    probabilities = np.round(result.pop("probabilities"), 7)
    return {"real_fraction": fraction, "arm": arm, "seed": seed, "num_real": len(real) if arm != "syn" else 0,
            "num_synthetic": len(synthetic) if synthetic is not None else 0, **result, "probabilities": probabilities.tolist()}


@command("augment")
def main(cfg: DictConfig) -> None:
    # One Trainer per cell: Lightning's per-fit notices (accelerator, tips) would bury the progress bars.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    results = augment(cfg)
    print(json.dumps({"data": results["data"], "headline": results["headline"]}), flush=True)


if __name__ == "__main__":
    main()
