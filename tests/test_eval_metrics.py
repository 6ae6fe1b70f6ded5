"""Each evaluation figure against a reference computation on the same inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from evaluation.fid import frechet_distance, kernel_inception_distance, precision_recall
from evaluation.groups import per_skin_tone
from evaluation.memorization import memorization_report, nearest_in_any_pose
from evaluation.reconstruction import image_quality
from evaluation.schema import METRIC_KEYS, empty_metrics, read_metrics_json, write_metrics_json


def _features(seed: int, n: int = 300, d: int = 12, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale + shift


def test_schema_order_empty_and_atomic_write(tmp_path: Path) -> None:
    assert METRIC_KEYS[:5] == ("exp", "data", "image_size", "seed", "eval_split") and len(METRIC_KEYS) == 30
    assert METRIC_KEYS[-4:] == ("intervals", "floor", "provenance", "nulls") and METRIC_KEYS.index("fd_domain") == METRIC_KEYS.index("fid") + 1
    metrics = empty_metrics()
    assert list(metrics) == list(METRIC_KEYS) and all(v is None for k, v in metrics.items() if k != "nulls")
    metrics.update(fid=float("nan"), kid_mean=np.float32(0.5), seed=torch.tensor(3), eval_split="val")
    metrics["nulls"].update({key: "not computed in this test" for key in ("fid", "fd_domain", "kid_std", "is_mean", "is_std", "precision",
                             "recall", "ssim", "psnr", "reconstruction_protocol", "cond_accuracy", "memorization", "per_skin_tone", "floor")})
    path = write_metrics_json(tmp_path / "run" / "metrics.json", metrics)
    written = json.loads(path.read_text())
    assert list(written) == list(METRIC_KEYS)
    assert written["fid"] is None and written["kid_mean"] == 0.5 and written["seed"] == 3
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left behind
    assert read_metrics_json(path)["kid_mean"] == 0.5


def test_schema_rejects_missing_unknown_and_unexplained(tmp_path: Path) -> None:
    metrics = empty_metrics()
    del metrics["fid"]
    with pytest.raises(ValueError, match="missing \\['fid'\\]"):
        write_metrics_json(tmp_path / "m.json", metrics)
    with pytest.raises(ValueError, match="unknown \\['fidd'\\]"):
        write_metrics_json(tmp_path / "m.json", {**empty_metrics(), "fidd": 1.0})
    # A null figure needs its reason; intervals are pairs; eval_split is val or test; provenance is complete.
    with pytest.raises(ValueError, match="null without a reason in nulls: \\['fid'"):
        write_metrics_json(tmp_path / "m.json", empty_metrics())
    explained = {**empty_metrics(), "nulls": {key: "why" for key in METRIC_KEYS}}
    write_metrics_json(tmp_path / "ok.json", explained)
    for bad, message in (({"eval_split": "train"}, "eval_split"), ({"intervals": {"fid": [1.0]}}, "intervals must be"),
                         ({"provenance": {"git": {}}}, "provenance lacks")):
        with pytest.raises(ValueError, match=message):
            write_metrics_json(tmp_path / "m.json", {**explained, **bad})
    assert not (tmp_path / "m.json").exists()


def test_frechet_distance_matches_scipy() -> None:
    real, fake = _features(0), _features(1, n=200, shift=0.3, scale=1.3)
    mu1, mu2 = real.double().mean(0).numpy(), fake.double().mean(0).numpy()
    s1, s2 = np.cov(real.double().numpy(), rowvar=False), np.cov(fake.double().numpy(), rowvar=False)
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(real, fake) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)


def _poly_mmd_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018), written from the definition."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()


def test_kid_matches_its_definition() -> None:
    real, fake = _features(2, n=120), _features(3, n=120, shift=0.4)
    # One subset the size of both sets is the whole sets (MMD does not depend on order).
    mean, _ = kernel_inception_distance(real, fake, subsets=1, subset_size=120)
    assert mean == pytest.approx(_poly_mmd_reference(real.double().numpy(), fake.double().numpy()), rel=1e-6)
    mean_same, _ = kernel_inception_distance(real, _features(4, n=120), subsets=20, subset_size=60)
    assert abs(mean_same) < 0.05 < mean


def test_precision_recall_sanity() -> None:
    real = _features(6)
    assert precision_recall(real, real) == (1.0, 1.0)
    precision, recall = precision_recall(real, _features(7, shift=20.0))
    assert precision == 0.0 and recall == 0.0
    # Samples from half of the real manifold: precise, but low recall.
    half = real[real[:, 0] > 0]
    precision, recall = precision_recall(real, half)
    assert precision == 1.0 and recall < 0.8


def test_ssim_psnr_match_scikit_image() -> None:
    generator = torch.Generator().manual_seed(8)
    target = torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1
    noisy = (target + 0.2 * torch.randn(target.shape, generator=generator)).clamp(-1, 1)
    figures = image_quality(noisy, target)
    a, b = ((noisy + 1) / 2).double().numpy(), ((target + 1) / 2).double().numpy()
    ssim = np.mean([
        sk_ssim(b[i], a[i], data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for i in range(4)
    ])
    psnr = np.mean([sk_psnr(b[i], a[i], data_range=1.0) for i in range(4)])
    assert figures["ssim"] == pytest.approx(ssim, abs=2e-3)
    assert figures["psnr"] == pytest.approx(psnr, rel=1e-4)
    assert figures["ms_ssim"] is None  # 32 px is too small for 5 scales
    same = image_quality(target, target)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-5) and math.isinf(same["psnr"]) or same["psnr"] > 80


def test_memorization_finds_a_planted_copy_and_no_held_out_copies() -> None:
    generator = torch.Generator().manual_seed(9)
    train = torch.rand(200, 3, 16, 16, generator=generator) * 2 - 1
    reference = {"pixels": (train.flatten(1) / math.sqrt(3 * 16 * 16)).half(), "features": train.flatten(1)[:, :20]}
    held_out = torch.rand(50, 3, 16, 16, generator=generator) * 2 - 1
    generated = torch.rand(30, 3, 16, 16, generator=generator) * 2 - 1
    generated[7] = train[123]  # the planted copy
    settings = {"pixel_size": 32, "threshold_ratio": 0.2}
    report, distances, nearest_index = memorization_report(
        generated, generated.flatten(1)[:, :20], held_out, held_out.flatten(1)[:, :20], reference, settings, "val"
    )
    assert report["copy_rate"] == pytest.approx(1 / 30) and report["real_copy_rate"] == 0.0
    assert report["threshold"] == pytest.approx(0.2 * report["real_nn_distance_median"])
    assert report["feature"]["copy_rate"] == pytest.approx(1 / 30) and report["feature"]["real_copy_rate"] == 0.0
    assert int(nearest_index[7]) == 123 and float(distances[7]) == pytest.approx(0.0, abs=1e-6)
    assert report["reference"] == "train split, un-augmented, 200 images"


@pytest.mark.parametrize("pose", ["rot90", "rot180", "flip", "flip_rot270"])
def test_memorization_finds_a_copy_in_any_pose_of_the_augmentation(pose: str) -> None:
    generator = torch.Generator().manual_seed(3)
    train = torch.rand(100, 3, 16, 16, generator=generator) * 2 - 1
    reference = {"pixels": (train.flatten(1) / math.sqrt(3 * 16 * 16)).half(), "features": train.flatten(1)[:, :20]}
    held_out = torch.rand(40, 3, 16, 16, generator=generator) * 2 - 1
    generated = torch.rand(20, 3, 16, 16, generator=generator) * 2 - 1
    copy = train[42]
    posed = {"rot90": torch.rot90(copy, 1, (-2, -1)), "rot180": torch.rot90(copy, 2, (-2, -1)), "flip": torch.flip(copy, (-1,)),
             "flip_rot270": torch.flip(torch.rot90(copy, 3, (-2, -1)), (-2,))}[pose]
    generated[3] = posed
    report, _, _ = memorization_report(
        generated, generated.flatten(1)[:, :20], held_out, held_out.flatten(1)[:, :20], reference, {"pixel_size": 32, "threshold_ratio": 0.2}, "val"
    )
    assert report["copy_rate"] == pytest.approx(1 / 20) and report["real_copy_rate"] == 0.0
    distance, index = nearest_in_any_pose(generated[3:4], reference["pixels"].float(), 32)
    assert int(index) == 42 and float(distance) == pytest.approx(0.0, abs=2e-3)  # half-precision reference


def test_per_skin_tone_groups_and_worst() -> None:
    real = _features(10, n=300)
    tones = torch.arange(300) % 6 + 1
    fake = real.clone()
    fake[tones >= 5] += 3.0  # the generator serves dark skin badly
    result = per_skin_tone(real, tones, fake, tones, "condition", cond_accuracy_of=lambda rows: float(rows.float().mean()),
                           min_fid_images=40)
    groups = result["groups"]
    assert set(groups) == {"I", "II", "III", "IV", "V", "VI"} and groups["I"]["n"] == 50
    assert groups["I"]["fid"] == pytest.approx(0.0, abs=1e-6) and groups["VI"]["fid"] > 1.0
    assert result["worst_group_fid"] in ("V", "VI") and result["worst_fid"] == groups[result["worst_group_fid"]]["fid"]
    sparse = per_skin_tone(real, tones, fake, torch.ones(300, dtype=torch.long), "judge", min_fid_images=40)
    assert sparse["groups"]["VI"]["fid"] is None and sparse["groups"]["VI"]["num_generated"] == 0
    assert "FD needs 40" in sparse["groups"]["VI"]["nulls"]["fid"]
    few = per_skin_tone(real, tones, fake, tones, "condition")  # 50 per group: under the default 100, FD is not given
    assert all(entry["fid"] is None and entry["nulls"]["fid"] for entry in few["groups"].values())
