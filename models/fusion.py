"""The global conditioning vector: PCA-reduced text and CNN image embeddings, standardised and fused.

As in the seed paper, a CNN embeds a reference image, PCA fitted on the training split reduces
both the visual and the pooled text embeddings, each block is standardised, and a weighted
concatenation (``weight`` on the visual block, ``1 - weight`` on the text block) is the vector
the UNet adds to its timestep embedding. The CNN is by default the ImageNet EfficientNet-Lite0
that ships offline (``models.backbones``); any timm network with a user's weights can replace it.

At generation the reference is a user image or, by default, a retrieval prior: the mean visual
code of training images whose attributes best match the prompt. The per-image codes, labels and
attributes of the fitted images are buffers, so the prior travels in the checkpoint.

The CNN is frozen and kept out of the state dict (checkpoints stay small); a network without
pretrained weights is initialised from a fixed seed, so a reloaded model rebuilds the same one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.sampling import class_quotas
from models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, normalize, normalize_input

log = logging.getLogger(__name__)


def frozen_backbone(name: str, pretrained: bool | str, seed: int) -> nn.Module:
    """A frozen timm feature extractor (pooled features); random weights come from ``seed``."""
    if pretrained:
        return build_backbone(name, pretrained).requires_grad_(False).eval()
    log.info("fusion backbone '%s' has random weights (seed %d): the visual codes carry coarse colour and shape only", name, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(name, False)
    return model.requires_grad_(False).eval()


INPUT_NORMALIZATIONS = ("backbone", "imagenet")


def upgrade_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Fusion settings of an earlier checkpoint, read as today's keys.

    Checkpoints without ``input_normalization`` fed every backbone ImageNet mean/std and fitted
    their PCA and retrieval table on those codes: ``imagenet`` rebuilds them. Those that name
    their CNN ``cnn`` (``cnn_seed``) fed a timm network without weights on disk, i.e. the seeded
    random one, the images at their own size: ``pretrained=False`` and ``input_size=None``.
    """
    settings = {"input_normalization": "imagenet", **settings}
    if "cnn" not in settings:
        return settings
    upgraded = {k: v for k, v in settings.items() if k not in ("cnn", "cnn_seed")}
    upgraded.update(backbone=settings["cnn"], backbone_seed=settings.get("cnn_seed", 0), input_size=None)
    if not isinstance(settings.get("pretrained"), str):
        upgraded["pretrained"] = False
    return upgraded


def fit_indices(labels: Sequence[int] | np.ndarray, count: int) -> list[int]:
    """``count`` training indices for the fit: each diagnosis in proportion to its size, at least one each.

    The retrieval prior of a diagnosis is built from its own table entries; a diagnosis without
    any would silently borrow another's. Within a diagnosis the picks are evenly spaced.
    """
    labels = np.asarray(labels)
    if count >= len(labels):
        return list(range(len(labels)))
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = class_quotas(sizes, 0.0, count)  # proportional, largest remainder
    for index in np.flatnonzero(quotas == 0):  # a rare diagnosis takes one pick from the largest quota
        if quotas.max() < 2:  # fewer picks than diagnoses
            break
        quotas[int(np.argmax(quotas))] -= 1
        quotas[index] = 1
    picks = []
    for label, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == label)
        picks.extend(members[np.linspace(0, len(members) - 1, int(quota)).round().astype(np.int64)].tolist())
    return sorted(picks)


def attribute_matrix(conditions: dict[str, Any], attribute_names: tuple[str, ...], count: int) -> Tensor:
    """(N, A + 1) long: each attribute's value (-1 unknown) and skin tone as 0-5 (-1 unknown) last."""
    columns = []
    attributes = conditions.get("attributes") or {}
    for name in attribute_names:
        value = attributes.get(name)
        columns.append(torch.full((count,), -1, dtype=torch.long) if value is None else torch.as_tensor(value).long().cpu())
    tone = conditions.get("skin_tone")
    columns.append(torch.full((count,), -1, dtype=torch.long) if tone is None else torch.as_tensor(tone).long().cpu() - 1)
    return torch.stack(columns, dim=1)


def _pca(data: Tensor, components: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean (D,), basis (k, D) zero-padded past the rank, and one scale giving unit mean variance."""
    data = data.double()
    mean = data.mean(0)
    _, _, vh = torch.linalg.svd(data - mean, full_matrices=False)  # rows of vh: principal axes
    basis = torch.zeros(components, data.shape[1], dtype=torch.float64)
    kept = min(components, vh.shape[0])
    basis[:kept] = vh[:kept]
    coords = (data - mean) @ basis[:kept].T
    scale = coords.pow(2).mean().sqrt().clamp_min(1e-8)  # block standardisation keeps PCA's ranking
    return mean.float(), basis.float(), scale.float()


class FusionConditioner(nn.Module):
    """Text + visual codes -> global conditioning vector (B, ``output_dim``).

    Args:
        text_dim: width of the pooled text embedding.
        attribute_names: attribute vocabulary (``DataInfo.attribute_names``), the prior's match keys.
        enabled: False drops the visual branch (the ``fusion.enabled=false`` ablation).
        backbone: timm architecture of the visual branch (``models.backbones.build_backbone``).
        pretrained: True (the offline ImageNet weights of ``efficientnet_lite0``), a weights
            file for any timm architecture, or False for a seeded random network.
        input_size: side the images are resized to before the CNN (ImageNet networks need
            more than the 32 px of the quick budget to see structure); None keeps their size.
        text_components, visual_components: PCA sizes.
        weight: weight of the visual block in the concatenation (text block: ``1 - weight``).
        max_fit_images: training images embedded for PCA and the retrieval table.
        backbone_seed: initialisation seed of a backbone without pretrained weights.
    """

    def __init__(
        self,
        *,
        text_dim: int,
        attribute_names: tuple[str, ...] = (),
        enabled: bool = True,
        backbone: str = "efficientnet_lite0",
        pretrained: bool | str = True,
        input_size: int | None = 96,
        text_components: int = 32,
        visual_components: int = 32,
        weight: float = 0.5,
        max_fit_images: int = 512,
        backbone_seed: int = 0,
        input_normalization: str = "backbone",
    ) -> None:
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"fusion.weight must be in [0, 1], got {weight}")
        if input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(f"fusion.input_normalization must be one of {INPUT_NORMALIZATIONS}, got {input_normalization!r}")
        self.input_normalization = input_normalization
        self.enabled, self.weight = enabled, weight
        self.attribute_names = tuple(attribute_names)
        self.text_components, self.visual_components = text_components, visual_components
        self.max_fit_images, self.input_size = max_fit_images, input_size
        self.register_buffer("text_mean", torch.zeros(text_dim))
        self.register_buffer("text_basis", torch.zeros(text_components, text_dim))
        self.register_buffer("text_scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        if enabled:
            object.__setattr__(self, "_cnn", frozen_backbone(backbone, pretrained, backbone_seed))  # not in the state dict
            features = int(self._cnn.num_features)
            self.register_buffer("visual_mean", torch.zeros(features))
            self.register_buffer("visual_basis", torch.zeros(visual_components, features))
            self.register_buffer("visual_scale", torch.ones(()))
            self.register_buffer("table_codes", torch.zeros(max_fit_images, visual_components))
            self.register_buffer("table_labels", torch.full((max_fit_images,), -1, dtype=torch.long))
            self.register_buffer("table_attributes", torch.full((max_fit_images, len(self.attribute_names) + 1), -1, dtype=torch.long))
            self.register_buffer("table_index", torch.full((max_fit_images,), -1, dtype=torch.long))
            self.register_buffer("table_size", torch.zeros((), dtype=torch.long))

    @property
    def output_dim(self) -> int:
        return self.text_components + (self.visual_components if self.enabled else 0)

    def _normalize(self, images: Tensor) -> Tensor:
        if self.input_normalization == "imagenet":
            return normalize(images, IMAGENET_MEAN, IMAGENET_STD)
        return normalize_input(images, self._cnn)

    @torch.no_grad()
    def image_features(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> CNN pooled features (N, F) of the images at ``input_size`` (None: as given)."""
        device = self.text_mean.device
        if next(self._cnn.parameters()).device != device:
            self._cnn.to(device)
        chunks = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device).float()
            if self.input_size is not None and x.shape[-2:] != (self.input_size, self.input_size):
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=x.shape[-1] > self.input_size)
            chunks.append(self._cnn(self._normalize(x)).float())
        return torch.cat(chunks)

    @torch.no_grad()
    def fit(
        self,
        text_pooled: Tensor,
        visual_features: Tensor | None,
        labels: Tensor,
        attributes: Tensor,
        indices: Tensor | None = None,
    ) -> None:
        """Fit both PCAs on training embeddings and fill the retrieval table.

        Args:
            text_pooled: (N, text_dim) pooled text embeddings of the training captions.
            visual_features: (N, F) CNN features of the same images (None when disabled).
            labels: (N,) diagnoses; attributes: (N, A + 1) from ``attribute_matrix``.
            indices: (N,) training-set indices of the images (lets training exclude the target).
        """
        mean, basis, scale = _pca(text_pooled.cpu(), self.text_components)
        self.text_mean.copy_(mean), self.text_basis.copy_(basis), self.text_scale.copy_(scale)
        if self.enabled:
            if visual_features is None:
                raise ValueError("fusion is enabled, so fit() needs the CNN features of the training images")
            mean, basis, scale = _pca(visual_features.cpu(), self.visual_components)
            self.visual_mean.copy_(mean), self.visual_basis.copy_(basis), self.visual_scale.copy_(scale)
            count = min(self.max_fit_images, visual_features.shape[0])
            self.table_codes.zero_()
            self.table_codes[:count] = self.visual_code(visual_features[:count].to(self.table_codes.device))
            self.table_labels.fill_(-1)
            self.table_labels[:count] = labels[:count].to(self.table_labels.device)
            self.table_attributes.fill_(-1)
            self.table_attributes[:count] = attributes[:count].to(self.table_attributes.device)
            self.table_index.fill_(-1)
            if indices is not None:
                self.table_index[:count] = indices[:count].to(self.table_index.device)
            self.table_size.fill_(count)
        self.fitted.fill_(True)

    def text_code(self, pooled: Tensor) -> Tensor:
        """(B, text_dim) -> standardised PCA coordinates (B, text_components)."""
        return (pooled - self.text_mean) @ self.text_basis.T / self.text_scale

    def visual_code(self, features: Tensor) -> Tensor:
        """(B, F) CNN features -> standardised PCA coordinates (B, visual_components)."""
        return (features - self.visual_mean) @ self.visual_basis.T / self.visual_scale

    def _is_excluded(self, exclude: Tensor, size: int) -> Tensor:
        """(B, M) True where table entry m is row b's excluded training index (-1 excludes nothing)."""
        exclude = exclude.to(self.table_index.device)
        return (self.table_index[None, :size] == exclude[:, None]) & (exclude[:, None] >= 0)

    def prior(self, labels: Tensor, attributes: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Retrieval prior (B, visual_components): mean code of the table entries matching best.

        The diagnosis dominates the match (weight 100), then the count of agreeing known
        attributes; ties are averaged. An empty table (unfitted model) gives zeros. ``exclude``
        (B,) training-set indices left out for that row: in training the target itself, which
        always matches best and would otherwise often be the prior's only entry.
        """
        size = int(self.table_size)
        if size == 0:
            return torch.zeros(labels.shape[0], self.visual_components, device=self.table_codes.device)
        labels, attributes = labels.to(self.table_labels.device), attributes.to(self.table_attributes.device)
        table_labels, table_attributes = self.table_labels[:size], self.table_attributes[:size]
        label_match = (labels[:, None] == table_labels[None]) & (labels[:, None] >= 0)  # (B, M)
        known = (attributes[:, None] >= 0) & (table_attributes[None] >= 0)  # (B, M, A + 1)
        agree = ((attributes[:, None] == table_attributes[None]) & known).sum(-1)  # (B, M)
        score = 100 * label_match.long() + agree
        if exclude is not None:
            masked = score.masked_fill(self._is_excluded(exclude, size), -1)
            # A target that is its label's only table entry stays: a prior of another label is worse.
            lost_label = (score.max(dim=1).values >= 100) & (masked.max(dim=1).values < 100)
            score = torch.where(lost_label[:, None], score, masked)
        selected = (score == score.max(dim=1, keepdim=True).values).float()  # (B, M)
        return selected @ self.table_codes[:size] / selected.sum(1, keepdim=True)

    def table_reference(self, labels: Tensor, exclude: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """A random table entry's code per row (B, visual_components) with the same diagnosis.

        ``exclude`` (B,) training-set indices never chosen for that row (the target itself, -1
        none). Rows with no other same-label entry get their label's prior.
        """
        size = int(self.table_size)
        candidates = (labels.to(self.table_labels.device)[:, None] == self.table_labels[None, :size]).float()  # (B, M)
        if exclude is not None:
            candidates = candidates.masked_fill(self._is_excluded(exclude, size), 0.0)
        empty = candidates.sum(1) == 0
        candidates[empty] = 1.0 / max(size, 1)  # placeholder; replaced by the prior below
        uniform = torch.rand(candidates.shape, generator=generator, device="cpu").to(candidates.device)
        choice = (uniform * candidates).argmax(1)  # a uniformly random candidate
        codes = self.table_codes[choice]
        if empty.any():
            attrs = torch.full((int(empty.sum()), self.table_attributes.shape[1]), -1, dtype=torch.long)
            codes[empty] = self.prior(labels[empty], attrs)
        return codes

    def forward(self, text_pooled: Tensor, visual_code: Tensor | None = None) -> Tensor:
        """Global conditioning vector (B, output_dim): [(1 - w) * text code, w * visual code]."""
        text = self.text_code(text_pooled)
        if not self.enabled:
            return text
        if visual_code is None:
            raise ValueError("fusion is enabled: pass a visual code (reference, table entry or prior)")
        return torch.cat([(1.0 - self.weight) * text, self.weight * visual_code.to(text.dtype)], dim=1)
