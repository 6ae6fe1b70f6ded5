"""A blinded reader study from a checkpoint: real and synthetic images for a dermatologist, the key apart.

    python -m experiments.export_reader_study ckpt=PATH out=DIR [num_real=50 num_synthetic=50 split=test]
    python -m experiments.score_reader_study key=DIR-answer-key/answers.csv responses=DIR/responses.csv

Settings: configs/export_reader_study.yaml. The real images are a seeded subset of the checkpoint's
evaluation split (its data, refused if the fingerprint differs); the synthetic ones are prompted like
real images of that split. ``out`` (new or empty) gets images/, responses.csv, README.md and NOTICE;
the answer key goes to ``key_out`` (default ``<out>-answer-key/``), which the organiser keeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from datamodules.licences import write_notice
from evaluation.data import collect
from evaluation.reader_study import write_study
from evaluation.resources import split_dataset
from experiments.command import command, task_overrides
from experiments.compose import checkpoint_config, with_checkpoint_data
from experiments.evaluate import check_data
from experiments.output_folder import check_output_folder, write_manifest
from models.checkpoint import build_stored_datamodule, load_generator, read_checkpoint, stored_config

OWN_KEYS = ("ckpt", "out", "key_out", "num_real", "num_synthetic", "split", "display_size", "study_seed", "batch_size", "overwrite", "local_files")


def export_reader_study(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    out = Path(cfg.out)
    key_out = Path(cfg.key_out) if cfg.key_out else out.with_name(out.name + "-answer-key")
    for folder, key in ((out, "out"), (key_out, "key_out")):
        check_output_folder(folder, "export_reader_study", overwrite=False, key=key)  # a study is never replaced
    checkpoint = read_checkpoint(cfg.ckpt)
    run_cfg = checkpoint_config(stored_config(checkpoint, cfg.ckpt), overrides, "export_reader_study", OWN_KEYS)
    model = load_generator(cfg.ckpt, cache_dir=run_cfg.paths.cache_dir, local_files=cfg.local_files)
    datamodule = build_stored_datamodule(run_cfg.data, f"{cfg.ckpt}: dermsynth_config.data")
    check_data(checkpoint, datamodule, run_cfg.data)
    names = list(datamodule.info.class_names)
    real = collect(split_dataset(datamodule, str(cfg.split)), int(cfg.num_real), seed=int(cfg.study_seed))
    real_rows = [{"diagnosis": names[int(label)], "caption": caption, "origin": f"{cfg.split} image {index}"}
                 for index, (label, caption) in enumerate(zip(real["label"].tolist(), real["caption"]))]
    conditions = datamodule.sample_conditions(int(cfg.num_synthetic), seed=int(cfg.study_seed), split=str(cfg.split))
    chunks, generator = [], torch.Generator().manual_seed(int(cfg.study_seed))
    for start in range(0, int(cfg.num_synthetic), int(cfg.batch_size)):
        rows = slice(start, min(start + int(cfg.batch_size), int(cfg.num_synthetic)))
        part = {k: (v[rows] if not isinstance(v, dict) else {a: t[rows] for a, t in v.items()}) for k, v in conditions.items()}
        chunks.append(model.generate(None if model.conditioning == "none" else part, rows.stop - rows.start, generator=generator).cpu())
    synthetic_rows = [{"diagnosis": names[int(label)], "caption": caption, "origin": f"prompt seed {cfg.study_seed} row {index}"}
                      for index, (label, caption) in enumerate(zip(torch.as_tensor(conditions["label"]).tolist(), conditions["caption"]))]
    write_manifest(out, "export_reader_study", ["images", "responses.csv", "README.md", "NOTICE"])
    write_manifest(key_out, "export_reader_study", ["answers.csv", "study.json"])
    counts = write_study(out, key_out, real["image"], real_rows, torch.cat(chunks), synthetic_rows,
                         diagnoses=names, display_size=int(cfg.display_size), seed=int(cfg.study_seed))
    write_notice(out, str(run_cfg.data.source), "real and synthetic dermoscopic images for a reader study")
    summary = {**counts, "split": str(cfg.split), "checkpoint": str(cfg.ckpt), "key": str(key_out / "answers.csv")}
    (key_out / "study.json").write_text(json.dumps(summary, indent=2))
    return summary


@command("export_reader_study", prepare=lambda argv: with_checkpoint_data(argv, ckpt_key="ckpt"))
def main(cfg: DictConfig) -> None:
    print(json.dumps(export_reader_study(cfg, task_overrides())))


if __name__ == "__main__":
    main()
