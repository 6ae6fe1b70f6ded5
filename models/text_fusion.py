"""The hybrid's conditioner: a frozen text encoder's tokens plus a fused text + image code.

Per row the UNet reads the caption's token states by cross-attention and a global vector added
to its timestep embedding: the PCA-reduced pooled text embedding fused with a visual code
(``models.fusion``). The visual code is a reference image's CNN code: in training, the stored
code of another training image of the same diagnosis or the retrieval prior (never the target
itself); at generation a user's reference image or, by default, the retrieval prior. The
unconditional input is the empty caption with a zero global vector (the mean code).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from datamodules.info import DataInfo
from models.conditioners import Conditioner, Conditioning, prompt_conditions
from models.fusion import FusionConditioner, attribute_matrix
from models.text_encoder import TextEncoder

log = logging.getLogger(__name__)
REFERENCE_SOURCES = ("table", "batch")


class TextFusion(Conditioner):
    """Caption (+ reference image) -> cross-attention tokens and a fused global vector.

    Args:
        data_info: vocabulary; captions without labels are parsed against it (free prompts).
        time_embed_dim: unused (the UNet projects the global vector to its own width).
        text_encoder: builds the ``TextEncoder`` (a Hydra partial of ``model.conditioner.text_encoder``).
        fusion: builds the ``FusionConditioner`` given ``text_dim`` and ``attribute_names``.
        cross_attention_dim: width of the text tokens inside the UNet (projected from the encoder's).
        prior_prob: share of training rows whose visual code is the retrieval prior, as at
            default generation; the others take a reference.
        reference_source: ``table``: the stored code of a different fitted training image of
            the same label (needs ``batch["index"]``, ``data.with_index``); ``batch``: the CNN on
            ``batch["reference"]`` (``data.with_reference``), exact but a CNN forward per step.
    """

    kind: ClassVar[str] = "text"
    reconstruction_input: ClassVar[str] = "its own caption (visual branch: the retrieval prior)"

    def __init__(
        self,
        data_info: DataInfo,
        time_embed_dim: int,
        text_encoder: Callable[[], TextEncoder],
        fusion: Callable[..., FusionConditioner],
        cross_attention_dim: int = 128,
        prior_prob: float = 0.5,
        reference_source: str = "table",
    ) -> None:
        super().__init__()
        if reference_source not in REFERENCE_SOURCES:
            raise ValueError(f"conditioner.reference_source must be one of {list(REFERENCE_SOURCES)}, got '{reference_source}'")
        self.data_info = data_info
        self.cross_attention_dim = int(cross_attention_dim)
        self.prior_prob, self.reference_source = float(prior_prob), reference_source
        self.text_encoder = text_encoder()
        self.fusion = fusion(text_dim=self.text_encoder.hidden_size, attribute_names=data_info.attribute_names)

    def unet_inputs(self) -> dict[str, Any]:
        return {
            "cross_attention_dim": self.cross_attention_dim,
            "encoder_hid_dim": self.text_encoder.hidden_size,
            "global_dim": self.fusion.output_dim,
        }

    @property
    def needs(self) -> str | None:
        """The data flag its training references need (``with_index`` / ``with_reference``), None if none."""
        if not self.fusion.enabled or self.prior_prob >= 1:
            return None
        return "with_index" if self.reference_source == "table" else "with_reference"

    def forward(self, conditions: dict[str, Any], count: int, *, training: bool = False) -> Conditioning:
        captions = list(conditions["caption"])
        if len(captions) != count:
            raise ValueError(f"conditions hold {len(captions)} captions for {count} images")
        text = self.text_encoder(captions)
        # A free prompt without labels: what it names, parsed from the text.
        targets = conditions if conditions.get("label") is not None else prompt_conditions(captions, self.data_info)
        labels = torch.as_tensor(targets["label"]).long().to(text.pooled.device)
        attributes = attribute_matrix(targets, self.data_info.attribute_names, count).to(text.pooled.device)
        visual = self.visual_codes(conditions, labels, attributes, training)
        return Conditioning(self.fusion(text.pooled, visual), text.tokens, text.mask)

    def null(self, count: int) -> Conditioning:
        text = self.text_encoder([""] * count)
        return Conditioning(torch.zeros(count, self.fusion.output_dim, device=text.tokens.device), text.tokens, text.mask)

    def visual_codes(self, conditions: dict[str, Any], labels: Tensor, attributes: Tensor, training: bool) -> Tensor | None:
        """Visual code per row (B, k_v): reference image, a different same-label table entry, or the prior."""
        if not self.fusion.enabled:
            return None
        count = labels.shape[0]
        reference, index = conditions.get("reference"), conditions.get("index")
        exclude = torch.as_tensor(index).long() if training and index is not None else None
        codes = self.fusion.prior(labels, attributes, exclude=exclude)
        if training:
            # The reference is never the target: the data module draws a different image
            # (``reference``), and table entries of the target's own index are excluded, from
            # the prior too; with neither at hand the row keeps the prior.
            use_reference = torch.rand(count, device=codes.device) >= self.prior_prob
            use_table = index is not None and int(self.fusion.table_size) > 0
            if reference is not None and (self.reference_source == "batch" or not use_table):
                if use_reference.any():
                    features = self.fusion.image_features(torch.as_tensor(reference)[use_reference.cpu()])
                    codes[use_reference] = self.fusion.visual_code(features)
            elif use_table:
                table = self.fusion.table_reference(labels, exclude=exclude)
                codes = torch.where(use_reference[:, None], table, codes)
        elif reference is not None:  # a user's reference image at generation
            codes = self.fusion.visual_code(self.fusion.image_features(torch.as_tensor(reference)))
        return codes

    @torch.no_grad()
    def fit(self, batches: Iterable[dict[str, Any]]) -> int:
        """Embed up to ``fusion.max_fit_images`` training images and captions; fit the PCAs and the
        retrieval table. Returns how many images were embedded."""
        pooled, features, labels, attributes, indices = [], [], [], [], []
        seen = 0
        for batch in batches:
            count = len(batch["caption"])
            pooled.append(self.text_encoder(list(batch["caption"])).pooled.cpu())
            if self.fusion.enabled:
                features.append(self.fusion.image_features(batch["image"]).cpu())
            labels.append(torch.as_tensor(batch["label"]).long().cpu())
            attributes.append(attribute_matrix(batch, self.data_info.attribute_names, count))
            index = batch.get("index")
            indices.append(torch.as_tensor(index).long().cpu() if index is not None else torch.full((count,), -1))
            seen += count
            if seen >= self.fusion.max_fit_images:
                break
        if not pooled:
            raise ValueError("the training split yielded no batches to fit the fusion PCA on")
        self.fusion.fit(
            torch.cat(pooled), torch.cat(features) if features else None, torch.cat(labels), torch.cat(attributes), torch.cat(indices)
        )
        self.text_encoder.flush()
        log.info("fusion fitted on %d training images", seen)
        return seen
