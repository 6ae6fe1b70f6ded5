"""Parts of the GPU path on the CPU: bf16 autocast training of every model and route, the judge and the visual branch at 128-256 px."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from datamodules.info import DataInfo
from evaluation import judge as judge_module
from evaluation import resources as resources_module
from models.checkpoint import build_generator
from models.classifier import SkinClassifier, head_sizes
from tests import gpu_path
from tests.gpu_path import DIFFUSION, EXPERIMENTS, cpu_config, fit_and_sample, gpu_overrides, routes
from tests.helpers import compose_config

BF16_BATCHES = 4
# The network that does the model's work: autocast must reach it (its output in bf16).
MAIN_NETWORK = {"vae": "decoder", "gan": "generator", **{exp: "unet" for exp in DIFFUSION}}


def _first_convolution(module: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def _bf16_run(exp: str, route: str, precision: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], set[torch.dtype]]:
    """Losses of ``BF16_BATCHES`` batches of the full budget at 64 px, and the dtypes the main network's first conv gave."""
    cfg = cpu_config(exp, "full", 64, tmp_path / precision, "gpu", f"trainer.precision={precision}", batches=BF16_BATCHES, route=route)
    dtypes: set[torch.dtype] = set()

    def build_and_watch(model_cfg, info):
        model = build_generator(model_cfg, info)
        conv = _first_convolution(getattr(model, MAIN_NETWORK[exp]))
        # training forwards only (the 2-image draw runs without autocast, under no_grad)
        conv.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype) if torch.is_grad_enabled() else None)
        return model

    monkeypatch.setattr(gpu_path, "build_generator", build_and_watch)
    _, trainer, losses, images = fit_and_sample(cfg)
    assert trainer.precision == precision and torch.isfinite(images).all()
    return losses, dtypes


@pytest.mark.parametrize(("exp", "route"), [(exp, route) for exp in EXPERIMENTS for route in routes(exp)])
def test_bf16_autocast_trains_with_finite_losses_close_to_float32(exp: str, route: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bf16, bf16_dtypes = _bf16_run(exp, route, "bf16-mixed", tmp_path, monkeypatch)
    fp32, fp32_dtypes = _bf16_run(exp, route, "32-true", tmp_path, monkeypatch)
    assert bf16_dtypes == {torch.bfloat16} and fp32_dtypes == {torch.float32}  # autocast reached the network, and only under bf16
    assert len(bf16) == BF16_BATCHES and all(torch.isfinite(torch.tensor(bf16))), bf16
    # Same seed, same initial weights, batch and noise: the first loss differs only by bf16 rounding.
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05), (bf16, fp32)


def _info(size: int) -> DataInfo:
    cfg = compose_config(*gpu_overrides("hybrid", "full", size), "data.num_train=8", "data.num_val=4", "data.num_test=4")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.info


def _forward_backward(classifier: SkinClassifier, heads: dict[str, int], size: int) -> None:
    images = torch.rand(2, 3, size, size) * 2 - 1
    logits = classifier(images)
    assert {name: tuple(value.shape) for name, value in logits.items()} == {name: (2, n) for name, n in heads.items()}
    sum(F.cross_entropy(value, torch.zeros(2, dtype=torch.long)) for value in logits.values()).backward()
    grads = [p.grad for p in classifier.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert classifier.predict_features(images).shape == (2, classifier.num_features)


@pytest.mark.parametrize("size", [128, 256])
def test_full_budget_judge_forward_and_backward_at_large_sizes(size: int) -> None:
    judge_cfg = compose_config(*gpu_overrides("hybrid", "full", size)).eval.judge
    assert judge_cfg.arch == "resnet18" and judge_cfg.input_size is None  # the judge reads the images at their own size
    heads = head_sizes(_info(size))
    torch.manual_seed(0)
    judge = SkinClassifier(heads, arch=judge_cfg.arch, pretrained=judge_cfg.pretrained, input_size=judge_cfg.input_size, augment=False)
    _forward_backward(judge, heads, size)


@pytest.mark.parametrize("size", [128, 256])
def test_visual_branch_at_large_sizes(size: int) -> None:
    cfg = compose_config(*gpu_overrides("hybrid", "full", size))
    fusion_cfg = cfg.model.conditioner.fusion
    fusion = instantiate(fusion_cfg, text_dim=384)()
    images = torch.rand(2, 3, size, size) * 2 - 1
    features = fusion.image_features(images)  # resized to the configured input size (96 px) for the frozen CNN
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    full_size = instantiate(fusion_cfg, text_dim=384, input_size=None)()
    assert torch.isfinite(full_size.image_features(images)).all()  # input_size=null: the CNN at the image's own size
    # Fine-tuned (the judge's pretrained option): forward and backward through the ImageNet network at full size.
    heads = head_sizes(_info(size))
    _forward_backward(SkinClassifier(heads, arch=fusion_cfg.backbone, pretrained=True, input_size=None, augment=False), heads, size)


@pytest.mark.parametrize(("device", "accelerator"), [("cpu", "cpu"), ("cuda:0", "gpu"), (torch.device("cuda", 1), "gpu")])
def test_the_judge_trains_on_the_runs_device(device, accelerator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full budget's judge (resnet18, 30 epochs, up to 256 px) would take hours of a GPU run's set-up on the CPU."""
    cfg = compose_config("budget=smoke", "logger=none")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    calls = []
    monkeypatch.setattr(judge_module, "train_classifier", lambda *args, **kwargs: calls.append(kwargs["accelerator"]))
    judge_module.train_judge(datamodule, cfg.eval.judge, device=device)
    assert calls == [accelerator]


def test_the_evaluation_hands_its_device_to_the_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config("budget=smoke", "logger=none")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    seen = []

    def stop(*args, **kwargs):
        seen.append(kwargs["device"])
        raise RuntimeError("judge requested")

    monkeypatch.setattr(resources_module, "load_or_train_judge", stop)
    with pytest.raises(RuntimeError, match="judge requested"):
        resources_module.prepare_evaluation(datamodule, cfg.eval, device=torch.device("cuda", 0), progress=False)
    assert seen == [torch.device("cuda", 0)]


def test_a_nested_classifier_fit_leaves_torch_flags_as_it_found_them() -> None:
    """The judge is trained inside a generator run's set-up: Lightning's deterministic=True must not leak into the run."""
    from models.classifier import train_classifier
    from torch.utils.data import TensorDataset

    class Items(TensorDataset):
        def __getitem__(self, index: int) -> dict:
            image, label = super().__getitem__(index)
            return {"image": image, "label": int(label), "attributes": {}, "skin_tone": 0}

    before = torch.are_deterministic_algorithms_enabled()
    data = Items(torch.rand(8, 3, 16, 16) * 2 - 1, torch.arange(8) % 2)
    train_classifier({"label": 2}, data, epochs=1, batch_size=4, seed=0)
    assert torch.are_deterministic_algorithms_enabled() == before
