"""The judge, the feature-extractor choice and the whole protocol on tiny blob data and fake generators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.info import DataInfo
from evaluation.conditioning import confusion_by_head
from evaluation.features import DomainFeatures, build_feature_extractor
from evaluation.judge import load_or_train_judge
from evaluation.protocol import evaluate_generator
from evaluation.schema import METRIC_KEYS, write_metrics_json
from experiments import CONFIG_DIR
from models.classifier import batch_targets, head_sizes, train_classifier
from tests.eval_fakes import BlobDataModule, BlobGenerator, NoiseGenerator


def tiny_eval_cfg(cache: Path, **overrides) -> OmegaConf:
    """The real eval config, shrunk: 16 px blobs, a 10-epoch judge, small sample counts."""
    cfg = OmegaConf.load(CONFIG_DIR / "eval" / "default.yaml")
    cfg.merge_with({
        "seed": 0, "cache_dir": str(cache), "progress": False, "num_generated": 64, "num_real": None, "batch_size": 32,
        "kid_subsets": 20, "kid_subset_size": 50, "num_recon": 16, "feature_extractor": "domain",
        "judge": {"epochs": 10, "num_sanity_images": 128}, "memorization": {"num_train": 128},
    })
    cfg.merge_with(overrides)
    return cfg


@pytest.fixture(scope="module")
def blobs() -> BlobDataModule:
    return BlobDataModule(size=16)


def test_classifier_training_is_deterministic_for_a_seed(blobs: BlobDataModule) -> None:
    subset = torch.utils.data.Subset(blobs.train_set, range(96))
    weights = []
    for _ in range(2):
        model = train_classifier(head_sizes(blobs.info), subset, epochs=1, batch_size=32, seed=3)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = train_classifier(head_sizes(blobs.info), subset, epochs=1, batch_size=32, seed=4).state_dict()
    assert not all(torch.equal(weights[0][k], other[k]) for k in other)


def test_judge_is_cached_and_reports_sanity(blobs: BlobDataModule, session_cache: Path) -> None:
    cfg = tiny_eval_cfg(session_cache)
    judge = load_or_train_judge(blobs, cfg.judge, session_cache)
    assert judge.name.startswith("domain:test_resnet-")
    assert set(judge.heads) == {"label", "attr:border", "skin_tone"}
    sanity = judge.sanity
    assert sanity["test_accuracy"] > sanity["chance_accuracy"] + 0.2  # it learned the blobs
    assert sanity["pure_noise_accuracy"] < sanity["test_accuracy"]
    again = load_or_train_judge(blobs, cfg.judge, session_cache)  # from disk now
    images = blobs.test_set[0]["image"][None]
    assert torch.equal(judge.logits(images)["label"], again.logits(images)["label"])


def test_missing_inception_weights_fall_back_to_domain_with_a_warning(blobs: BlobDataModule, session_cache: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    cfg = tiny_eval_cfg(session_cache, feature_extractor="auto")
    judge = load_or_train_judge(blobs, cfg.judge, session_cache)
    with pytest.warns(UserWarning, match="Inception weights not found"):
        extractor = build_feature_extractor(cfg, lambda: judge)
    assert isinstance(extractor, DomainFeatures) and extractor.name == judge.name
    with pytest.raises(FileNotFoundError, match="eval.inception_weights"):
        build_feature_extractor(tiny_eval_cfg(session_cache, feature_extractor="inception"), lambda: judge)
    with pytest.raises(FileNotFoundError):
        build_feature_extractor(tiny_eval_cfg(session_cache, feature_extractor="auto", inception_weights=str(tmp_path / "nope.pth")), lambda: judge)


def test_protocol_fills_every_key_and_ranks_generators(blobs: BlobDataModule, session_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_eval_cfg(session_cache)
    extra = {"exp": "blob", "seed": 0, "train_steps": 5, "train_time_s": 1.5}
    good = evaluate_generator(BlobGenerator(blobs.info), blobs, cfg, tmp_path / "good", extra=extra)
    bad = evaluate_generator(NoiseGenerator(blobs.info), blobs, cfg, tmp_path / "bad", extra=extra)
    for metrics in (good, bad):
        write_metrics_json(tmp_path / "metrics.json", metrics)  # validates the schema
        assert metrics["feature_extractor"].startswith("domain:") and metrics["num_generated"] == 64
        assert metrics["train_steps"] == 5 and metrics["data"] == "blobs" and metrics["image_size"] == 16
    # A generator of the data itself beats noise on every figure.
    assert good["fid"] < bad["fid"] and good["kid_mean"] < bad["kid_mean"]
    assert good["precision"] > bad["precision"] and good["recall"] > bad["recall"]
    # Figures a model cannot have are null; the others are computed.
    none_for_bad = {"ssim", "psnr", "reconstruction_protocol", "cond_accuracy"}
    assert all(bad[k] is None for k in none_for_bad)
    assert all(good[k] is not None for k in METRIC_KEYS)
    assert good["reconstruction_protocol"] == "identity-plus-noise" and 0 < good["ssim"] < 1
    cond = good["cond_accuracy"]
    assert cond["fd"] == good["fid"] and cond["mean"] > cond["judge_sanity"]["chance_accuracy"]
    assert set(cond["per_attribute"]) == {"label", "border", "skin_tone"}
    assert good["per_skin_tone"]["generated_tone_source"] == "condition"
    assert bad["per_skin_tone"]["generated_tone_source"] == "judge"
    assert bad["memorization"]["pixel"]["copy_rate"] == 0.0
    for name in ("samples.png", "closest_pairs.png", "details.json", "by_class.png"):
        assert (tmp_path / "good" / "eval" / name).is_file()
    assert not (tmp_path / "bad" / "eval" / "by_class.png").exists()  # unconditional: no prompted diagnosis
    details = json.loads((tmp_path / "good" / "eval" / "details.json").read_text())
    assert details["fd_floor"]["fid"] >= 0 and details["judge_sanity"]["test_accuracy"] > 0
    # Per prompted diagnosis: the counts add up, and the count-weighted accuracies give the label accuracy.
    by_class = details["cond_accuracy_by_class"]
    assert set(by_class) == set(blobs.info.class_names) and sum(c["num_generated"] for c in by_class.values()) == 64
    weighted = sum(c["accuracy"] * c["num_generated"] for c in by_class.values() if c["num_generated"]) / 64
    assert weighted == pytest.approx(cond["per_attribute"]["label"])
    # Each head's confusion table: rows are what was prompted, so a row's sum is that value's count and the
    # diagonal holds the hits that make up the head's accuracy.
    confusion = details["cond_confusion"]
    assert set(confusion) == set(cond["per_attribute"]) and confusion["label"]["values"] == list(blobs.info.class_names)
    label_counts = torch.tensor(confusion["label"]["prompted_by_read"])
    assert label_counts.sum(1).tolist() == [by_class[name]["num_generated"] for name in blobs.info.class_names]
    for head, table in confusion.items():
        counts = torch.tensor(table["prompted_by_read"])
        assert counts.shape == (len(table["values"]), len(table["values"]))
        assert (counts.trace() / counts.sum()).item() == pytest.approx(cond["per_attribute"][head]), head


def test_protocol_is_reproducible_for_a_seed(blobs: BlobDataModule, session_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_eval_cfg(session_cache, num_generated=32)
    first = evaluate_generator(BlobGenerator(blobs.info, noise=0.3), blobs, cfg, tmp_path / "a", extra={"seed": 1})
    second = evaluate_generator(BlobGenerator(blobs.info, noise=0.3), blobs, cfg, tmp_path / "b", extra={"seed": 1})
    for key in ("fid", "kid_mean", "precision", "recall", "is_mean", "ssim"):
        assert first[key] == second[key], key
    with pytest.raises(ValueError, match="outside the metrics.json schema"):
        evaluate_generator(BlobGenerator(blobs.info), blobs, cfg, tmp_path / "c", extra={"nonsense": 1})


def test_fd_floor_subset_is_random_not_the_first_rows(monkeypatch) -> None:
    """A split sorted by class (as HAM10000's metadata is) must not give a floor from one class only."""
    import evaluation.protocol as protocol

    g = torch.Generator().manual_seed(0)
    classes = torch.arange(4).repeat_interleave(250)  # sorted: 250 rows of class 0, then class 1, ...
    val = torch.randn(1000, 8, generator=g) + 3.0 * torch.nn.functional.one_hot(classes, 8).float()
    test = torch.randn(1000, 8, generator=g) + 3.0 * torch.nn.functional.one_hot(torch.arange(4).repeat(250), 8).float()
    monkeypatch.setattr(protocol, "collect", lambda *args, **kwargs: {"image": torch.zeros(1000, 3, 4, 4)})
    monkeypatch.setattr(protocol, "real_features", lambda *args, **kwargs: (val, None))
    floor = protocol.fd_floor(None, type("D", (), {"val_set": None})(), {"num_generated": 250}, test, progress=False)
    first_rows = protocol.frechet_distance(test, val[:250])  # one class only: far from the test split
    assert floor["num_generated"] == 250 and floor["fid_at_num_generated"] < first_rows / 5


def test_confusion_tables_count_prompted_against_read_values() -> None:
    info = DataInfo("blobs", 16, ("red", "green", "blue"), {"border": ("small", "large")}, True, "blobs16")
    prompted = {"label": [0, 0, 1, 2, 2, 2], "attributes": {"border": [1, 1, 0, -1, 1, -1]}, "skin_tone": [1, 6, 6, 0, 3, 3]}
    read = {"label": [0, 1, 1, 2, 0, 2], "attr:border": [1, 0, 0, 1, 1, 0], "skin_tone": [0, 5, 4, 2, 2, 2]}
    heads = {"label": 3, "attr:border": 2, "skin_tone": 6}
    logits = {head: torch.nn.functional.one_hot(torch.tensor(read[head]), heads[head]).float() for head in heads}
    tables = confusion_by_head(logits, batch_targets(prompted, heads), info)
    assert tables["label"] == {"values": ["red", "green", "blue"], "prompted_by_read": [[1, 1, 0], [0, 1, 0], [1, 0, 2]]}
    # Unknown prompts (border -1, skin tone 0) are left out of their head's table.
    assert tables["border"] == {"values": ["small", "large"], "prompted_by_read": [[1, 0], [1, 2]]}
    tone = torch.tensor(tables["skin_tone"]["prompted_by_read"])
    assert tables["skin_tone"]["values"][0] == "I" and tone.sum() == 5
    assert tone[0, 0] == 1 and tone[5].tolist() == [0, 0, 0, 0, 1, 1] and tone[2, 2] == 2
    # A head that no prompt names gets an all-zero table, not an error.
    unnamed = confusion_by_head({"attr:border": logits["attr:border"]}, {"attr:border": torch.full((6,), -1)}, info)
    assert unnamed["border"]["prompted_by_read"] == [[0, 0], [0, 0]]
