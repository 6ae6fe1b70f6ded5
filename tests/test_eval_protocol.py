"""The judge, the set-up and the whole protocol on tiny blob data and fake generators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.info import DataInfo
from evaluation.conditioning import confusion_by_head
from evaluation.features import DomainFeatures, build_feature_extractor
from evaluation.fid import frechet_distance
from evaluation.judge import load_or_train_judge
from evaluation.protocol import evaluate_generator
from evaluation.resources import prepare_evaluation
from evaluation.schema import METRIC_KEYS, write_metrics_json
from experiments import CONFIG_DIR
from models.classifier import batch_targets, head_sizes, train_classifier
from models.generative import SamplingSettings
from tests.eval_fakes import BlobDataModule, BlobGenerator, CopyGenerator, NoiseGenerator


def tiny_eval_cfg(cache: Path, **overrides) -> OmegaConf:
    """The real eval config, shrunk: 16 px blobs, a 10-epoch judge, small sample counts, domain features."""
    cfg = OmegaConf.load(CONFIG_DIR / "eval" / "default.yaml")
    cfg.merge_with({
        "seeds": [0], "cache_dir": str(cache), "progress": False, "num_generated": 64, "num_real": None, "batch_size": 32,
        "kid_subsets": 20, "kid_subset_size": 50, "num_recon": 16, "feature_extractor": "domain",
        "bootstrap": {"resamples": 100}, "heldout": {"num_generated": 32},
        "balanced": {"num_generated": 30}, "judge": {"epochs": 10, "num_sanity_images": 128},
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
    assert judge.name.startswith("test_resnet-") and judge.trained_here in (True, False)
    assert DomainFeatures(judge).name == f"domain:{judge.name}"
    assert set(judge.heads) == {"label", "attr:border", "skin_tone"}
    sanity = judge.sanity
    assert sanity["val_accuracy"] > sanity["chance_accuracy"] + 0.2  # it learned the blobs (read on the validation split)
    assert sanity["pure_noise_accuracy"] < sanity["val_accuracy"]
    again = load_or_train_judge(blobs, cfg.judge, session_cache)  # from disk now
    assert not again.trained_here
    images = blobs.test_set[0]["image"][None]
    assert torch.equal(judge.logits(images)["label"], again.logits(images)["label"])


def test_unknown_feature_extractor_and_split_fail_clearly(blobs: BlobDataModule, session_cache: Path) -> None:
    judge = load_or_train_judge(blobs, tiny_eval_cfg(session_cache).judge, session_cache)
    with pytest.raises(ValueError, match="eval.feature_extractor must be one of inception, domain"):
        build_feature_extractor("auto", judge)
    with pytest.raises(ValueError, match="eval.split must be one of val, test"):
        prepare_evaluation(blobs, tiny_eval_cfg(session_cache, split="train"))


def test_protocol_fills_every_key_and_ranks_generators(blobs: BlobDataModule, session_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_eval_cfg(session_cache)
    extra = {"exp": "blob", "seed": 0, "train_steps": 5, "train_time_s": 1.5}
    good = evaluate_generator(BlobGenerator(blobs.info), blobs, cfg, tmp_path / "good", extra=extra)
    bad = evaluate_generator(NoiseGenerator(blobs.info), blobs, cfg, tmp_path / "bad", extra=extra)
    for metrics in (good, bad):
        write_metrics_json(tmp_path / "metrics.json", metrics)  # validates the schema, null reasons included
        assert metrics["feature_extractor"].startswith("domain:") and metrics["num_generated"] == 64
        assert metrics["train_steps"] == 5 and metrics["data"] == "blobs" and metrics["image_size"] == 16
        assert metrics["eval_split"] == "val" and metrics["num_real"] == len(blobs.val_set)
    # A generator of the data itself beats noise on every figure.
    assert good["fid"] < bad["fid"] and good["kid_mean"] < bad["kid_mean"]
    assert good["precision"] > bad["precision"] and good["recall"] > bad["recall"]
    # Figures a model cannot have are null, each with its reason; the others are computed.
    for key in ("ssim", "psnr", "reconstruction_protocol", "cond_accuracy"):
        assert bad[key] is None and bad["nulls"][key]
    assert good["is_mean"] is None and "no Inception Score" in good["nulls"]["is_mean"]
    assert good["fd_domain"] is None and "feature space" in good["nulls"]["fd_domain"]  # fid is already the domain FD
    assert all(good[k] is not None for k in METRIC_KEYS if k not in good["nulls"])
    assert good["reconstruction_protocol"] == "identity-plus-noise" and 0 < good["ssim"] < 1
    assert good["per_skin_tone"]["generated_tone_source"] == "condition"
    assert bad["per_skin_tone"]["generated_tone_source"] == "judge"
    for name in ("samples.png", "closest_pairs.png", "details.json", "by_class.png"):
        assert (tmp_path / "good" / "eval" / name).is_file()
    assert not (tmp_path / "bad" / "eval" / "by_class.png").exists()  # unconditional: no prompted diagnosis


def test_intervals_floor_and_provenance(blobs: BlobDataModule, session_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_eval_cfg(session_cache, seeds=[0, 1])
    metrics = evaluate_generator(BlobGenerator(blobs.info, noise=0.2), blobs, cfg, tmp_path, extra={"seed": 0}, budget="tiny")
    intervals = metrics["intervals"]
    for key in ("fid", "kid_mean", "precision", "recall"):
        low, high = intervals[key]
        assert low <= high and len(intervals["per_seed"][key]) == 2  # two evaluation seeds, aggregated
        assert metrics[key] == pytest.approx(sum(intervals["per_seed"][key]) / 2)
        assert intervals["seed_spread"][key] is not None
    assert 0.0 <= intervals["fid"][0] and 0.0 <= intervals["precision"][0] <= intervals["precision"][1] <= 1.0
    assert "bootstrap" in intervals["method"]
    floor = metrics["floor"]
    assert floor["n"] == floor["num_generated"] == 64 and floor["reference"] == "train vs val" and "test" not in floor["definition"]
    resources = prepare_evaluation(blobs, cfg)  # the same cached real sets: the floor is FD(real training subset, real val)
    name = resources.primary.name
    assert resources.floor.split == "train" and resources.floor.size == 64
    assert floor["fid"] == pytest.approx(frechet_distance(resources.real.features[name], resources.floor.features[name]))
    assert set(floor["intervals"]) == {"fid", "kid_mean", "precision", "recall"}
    provenance = metrics["provenance"]
    assert provenance["data_fingerprint"] == blobs.info.fingerprint and provenance["judge"] == metrics["cond_accuracy"]["judge"]
    assert set(provenance["versions"]) >= {"python", "torch", "lightning", "diffusers", "transformers", "timm", "torchmetrics"}
    assert provenance["git"]["commit"] and isinstance(provenance["git"]["dirty"], bool)
    assert provenance["eval"]["split"] == "val" and provenance["eval"]["seeds"] == [0, 1] and provenance["eval"]["budget"] == "tiny"
    assert provenance["eval"]["n"] == 64 and provenance["eval"]["sampler"] == "blob"
    assert {"judge_s", "real_features_s"} <= set(provenance["setup"])
    write_metrics_json(tmp_path / "metrics.json", metrics)


class OneDiagnosisGenerator(BlobGenerator):
    """Draws every sample as diagnosis 0, whatever the prompt asks (attributes and tone as prompted)."""

    def generate(self, conditions, num_images, **kwargs):
        return super().generate({**conditions, "label": torch.zeros_like(torch.as_tensor(conditions["label"]))}, num_images, **kwargs)


def test_conditioning_accuracy_carries_its_references(blobs: BlobDataModule, session_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_eval_cfg(session_cache)
    good = evaluate_generator(BlobGenerator(blobs.info), blobs, cfg, tmp_path / "good", extra={"seed": 0})
    cond = good["cond_accuracy"]
    assert set(cond["per_head"]) == {"diagnosis", "border", "skin_tone"}
    diagnosis = cond["per_head"]["diagnosis"]
    # The judge sees the diagnosis on real images; a perfect generator scores near that ceiling, far above the
    # shuffled-prompt baseline and the majority rate.
    assert diagnosis["ceiling_interval"][0] > diagnosis["chance"]
    assert diagnosis["accuracy"] > diagnosis["shuffled"] + 0.3 and diagnosis["accuracy"] > diagnosis["chance"] + 0.3
    low, high = diagnosis["interval"]
    assert low <= diagnosis["accuracy"] <= high and good["intervals"]["cond_accuracy.diagnosis"] == [low, high]
    assert cond["diagnosis"] == diagnosis["accuracy"] and cond["mean_visual"] is not None
    # Per prompted diagnosis: Wilson intervals, counts adding up to the samples.
    assert sum(c["n"] for c in cond["per_class"].values()) == 64
    for stats in cond["per_class"].values():
        assert stats["accuracy"] is None or stats["interval"][0] <= stats["accuracy"] <= stats["interval"][1]
    # Held-out prompts: the same heads for unseen paraphrases and the held-out combination.
    assert set(cond["heldout"]) == {"paraphrase", "combo"}
    combo = cond["heldout"]["combo"]
    assert combo["n"] == 32 and combo["per_head"]["diagnosis"]["chance"] == 1.0  # every combo prompt is "blue"
    assert combo["per_head"]["diagnosis"]["accuracy"] > 0.8
    # Balanced accuracy: the natural prompts' and the class-balanced set's, beside the judge's on real images.
    for entry in (cond["diagnosis_balanced"], cond["balanced"]["diagnosis_balanced"]):
        assert entry["chance"] == pytest.approx(1 / 3) and entry["ceiling"] > 0.8
        assert entry["interval"][0] <= entry["accuracy"] <= entry["interval"][1]
        assert entry["ratio_to_ceiling"] == pytest.approx(entry["accuracy"] / entry["ceiling"]) and entry["ratio_to_ceiling"] > 0.8
    assert cond["balanced"]["n"] == 30 and [c["n"] for c in cond["balanced"]["per_class"].values()] == [10, 10, 10]
    assert good["intervals"]["cond_accuracy.balanced.diagnosis_balanced"] == cond["balanced"]["diagnosis_balanced"]["interval"]
    one_class = evaluate_generator(OneDiagnosisGenerator(blobs.info), blobs, cfg, tmp_path / "one", extra={"seed": 0})
    ratio = one_class["cond_accuracy"]["balanced"]["diagnosis_balanced"]["ratio_to_ceiling"]
    assert ratio < 0.5  # one diagnosis right of three: about a third of the judge's balanced accuracy
    details = json.loads((tmp_path / "good" / "eval" / "details.json").read_text())
    confusion = details["cond_confusion"]
    assert set(confusion) == {"label", "border", "skin_tone"}
    counts = torch.tensor(confusion["label"]["prompted_by_read"])
    assert counts.sum() == 64 and (counts.trace() / counts.sum()).item() == pytest.approx(diagnosis["accuracy"])


def test_sampling_settings_are_passed_in_not_set(blobs: BlobDataModule, session_cache: Path, tmp_path: Path) -> None:
    model = BlobGenerator(blobs.info)
    metrics = evaluate_generator(model, blobs, tiny_eval_cfg(session_cache, num_generated=32), tmp_path, sampling=SamplingSettings(steps=7))
    assert model.received and all(s == SamplingSettings(steps=7) for s in model.received)
    assert metrics["provenance"]["eval"]["steps"] == 7


def test_protocol_is_reproducible_for_a_seed(blobs: BlobDataModule, session_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_eval_cfg(session_cache, num_generated=32, seeds=[1])
    first = evaluate_generator(BlobGenerator(blobs.info, noise=0.3), blobs, cfg, tmp_path / "a")
    second = evaluate_generator(BlobGenerator(blobs.info, noise=0.3), blobs, cfg, tmp_path / "b")
    for key in ("fid", "kid_mean", "precision", "recall", "ssim", "intervals"):
        assert first[key] == second[key], key
    with pytest.raises(ValueError, match="outside the metrics.json schema"):
        evaluate_generator(BlobGenerator(blobs.info), blobs, cfg, tmp_path / "c", extra={"nonsense": 1})


def test_memorization_finds_a_memorizing_generator(blobs: BlobDataModule, session_cache: Path, tmp_path: Path) -> None:
    """Verbatim training images are copies; the real validation images (the baseline) are not."""
    training = torch.stack([blobs.train_set[i]["image"] for i in range(20)])
    cfg = tiny_eval_cfg(session_cache, num_generated=20)
    copies = evaluate_generator(CopyGenerator(blobs.info, training), blobs, cfg, tmp_path / "copies")["memorization"]
    assert copies["copy_rate"] == 1.0 and copies["nn_distance_median"] == pytest.approx(0.0, abs=1e-3)
    assert copies["real_copy_rate"] == 0.0 and copies["real_nn_distance_median"] > copies["threshold"] > 0
    assert copies["reference"] == f"train split, un-augmented, {len(blobs.train_set)} images"
    noise = evaluate_generator(NoiseGenerator(blobs.info), blobs, cfg, tmp_path / "noise")["memorization"]
    assert noise["copy_rate"] == 0.0


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


class NoTestSplit(BlobDataModule):
    """A data module whose test split must not be read (a validation figure may not look at it)."""

    @property
    def test_set(self):  # type: ignore[override]
        raise AssertionError("the validation evaluation read the test split")

    @test_set.setter
    def test_set(self, value) -> None:
        pass


def test_a_validation_floor_never_reads_the_test_split(session_cache: Path, tmp_path: Path) -> None:
    blobs = NoTestSplit(size=16)
    cfg = tiny_eval_cfg(session_cache, heldout={"num_generated": 0}, balanced={"num_generated": 0})
    metrics = evaluate_generator(BlobGenerator(blobs.info, noise=0.2), blobs, cfg, tmp_path, extra={"seed": 0}, budget="tiny")
    assert metrics["eval_split"] == "val" and metrics["floor"]["reference"] == "train vs val"


def test_a_floor_smaller_than_the_generated_sets_says_so(session_cache: Path, tmp_path: Path) -> None:
    blobs = BlobDataModule(size=16, num_train=48)
    cfg = tiny_eval_cfg(session_cache, heldout={"num_generated": 0}, balanced={"num_generated": 0}, memorization={"enabled": False})
    floor = evaluate_generator(BlobGenerator(blobs.info, noise=0.2), blobs, cfg, tmp_path, extra={"seed": 0}, budget="tiny")["floor"]
    assert floor["n"] == 48 and floor["num_generated"] == 64 and "fewer than the 64" in floor["definition"]
