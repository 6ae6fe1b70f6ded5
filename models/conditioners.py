"""Conditioners: what a diffusion model is conditioned on, turned into what its UNet reads.

A conditioner maps the conditions of B rows (a batch without its images, ``models.generative``)
to one :class:`Conditioning`, and gives the unconditional input (``null``) that classifier-free
guidance and conditioning dropout use. It also names what the UNet needs to read it
(``unet_inputs``, keyword arguments of ``models.unets.build_unet``). ``DiffusionModule`` does the
rest, so a new kind of conditioning is one class here (or beside it) and one YAML node:

- :class:`NoConditioning` (``ddpm``): nothing; every row is unconditional.
- :class:`Label` (``ddpm_class``): a learned embedding of diagnosis, attributes and skin tone
  (Fitzpatrick type, or the ITA tone group on real data), added to the UNet's timestep embedding.
- ``models.text_fusion.TextFusion`` (``hybrid``): text tokens for cross-attention plus a fused
  text + image code added to the timestep embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.captions import parse_caption
from datamodules.info import DataInfo

NUM_SKIN_TONES = 6  # Fitzpatrick I-VI or ITA groups very light .. dark; batches carry 1-6, 0 = unknown


@dataclass
class Conditioning:
    """The UNet's conditioning inputs for B rows, by their diffusers argument names."""

    class_labels: Tensor | None = None  # (B, D): added to the timestep embedding
    encoder_hidden_states: Tensor | None = None  # (B, L, H): cross-attention tokens
    encoder_attention_mask: Tensor | None = None  # (B, L) bool: False at padding

    def unet_kwargs(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def _tokens_padded_with(self, other: Conditioning) -> tuple[Conditioning, Conditioning]:
        """Both with token sequences padded (masked) to the longer length."""
        if self.encoder_hidden_states is None or other.encoder_hidden_states is None:
            return self, other
        length = max(self.encoder_hidden_states.shape[1], other.encoder_hidden_states.shape[1])

        def pad(c: Conditioning) -> Conditioning:
            extra = length - c.encoder_hidden_states.shape[1]
            if extra == 0:
                return c
            return Conditioning(
                c.class_labels, F.pad(c.encoder_hidden_states, (0, 0, 0, extra)), F.pad(c.encoder_attention_mask, (0, extra), value=False)
            )

        return pad(self), pad(other)

    def cat(self, other: Conditioning) -> Conditioning:
        """Rows ``[self; other]`` (2B rows): one batched forward for guided sampling."""
        first, second = self._tokens_padded_with(other)
        joined = [None if a is None else torch.cat([a, b]) for a, b in zip(first._values(), second._values())]
        return Conditioning(*joined)

    def where(self, take_other: Tensor, other: Conditioning) -> Conditioning:
        """Rows of ``other`` where ``take_other`` (B,) is True, of ``self`` elsewhere (conditioning dropout)."""
        first, second = self._tokens_padded_with(other)
        merged = []
        for a, b in zip(first._values(), second._values()):
            row = take_other.view(-1, *([1] * (a.ndim - 1))) if a is not None else None
            merged.append(None if a is None else torch.where(row, b, a))
        return Conditioning(*merged)

    def _values(self) -> list[Tensor | None]:
        return [getattr(self, f.name) for f in fields(self)]


class Conditioner(nn.Module):
    """Base class: conditions of B rows -> :class:`Conditioning`.

    Subclasses set ``kind`` (``GenerativeModule.conditioning``: ``none``, ``label`` or ``text``)
    and implement ``forward`` and ``null``; ``unet_inputs`` names what the UNet must offer.
    Constructed as ``conditioner(data_info=..., time_embed_dim=...)`` by ``DiffusionModule``.
    """

    kind: ClassVar[str] = "none"
    reconstruction_input: ClassVar[str] = "no conditioning"  # what the img2img protocol denoises with

    def unet_inputs(self) -> dict[str, Any]:
        """Keyword arguments of ``models.unets.build_unet`` this conditioning needs."""
        return {}

    def forward(self, conditions: dict[str, Any], count: int, *, training: bool = False) -> Conditioning:
        raise NotImplementedError

    def null(self, count: int) -> Conditioning:
        """The unconditional input of ``count`` rows."""
        raise NotImplementedError


class NoConditioning(Conditioner):
    """Unconditional diffusion (``ddpm``): the UNet sees only x_t and t."""

    kind: ClassVar[str] = "none"

    def __init__(self, data_info: DataInfo, time_embed_dim: int) -> None:
        super().__init__()

    def forward(self, conditions: dict[str, Any], count: int, *, training: bool = False) -> Conditioning:
        return Conditioning()

    def null(self, count: int) -> Conditioning:
        return Conditioning()


class ConditionEmbedding(nn.Module):
    """Conditions -> (B, ``dim``): the sum of one learned embedding per known field.

    ``ddpm_class`` (through :class:`Label`), the conditional VAE and the GAN's generator and
    projection discriminator all read labels through this module, so "label conditioning" means
    the same in every row of the comparison table. Each field has its own table with one extra
    "unknown" row: an unknown attribute (-1), an unknown skin tone (0) and a dropped row all take
    it, so the unconditional input is simply "everything unknown".

    Args:
        data_info: vocabulary (diagnoses, attribute values, whether skin tones exist).
        dim: embedding width.
        use_attributes: embed ``conditions["attributes"]`` besides the label.
        use_skin_tone: embed the skin tone, ``conditions[data_info.tone_field]``: the Fitzpatrick type where the
            data records one (the phantom), else the ITA tone group read from the healthy skin (HAM10000),
            unknown where neither is known.
    """

    def __init__(self, data_info: DataInfo, dim: int, use_attributes: bool = True, use_skin_tone: bool = True) -> None:
        super().__init__()
        self.dim = dim
        sizes = {"label": data_info.num_classes}
        if use_attributes:
            sizes.update({f"attribute_{name}": len(values) for name, values in data_info.attribute_classes.items()})
        self.tone_field = data_info.tone_field if use_skin_tone else None
        if self.tone_field is not None:
            sizes["skin_tone"] = NUM_SKIN_TONES
        self.sizes = sizes
        # Row ``size`` of each table is "unknown / dropped"; small init keeps the sum O(1).
        self.tables = nn.ModuleDict({name: nn.Embedding(size + 1, dim) for name, size in sizes.items()})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=1.0 / len(sizes) ** 0.5)

    def indices(self, conditions: dict[str, Any], count: int, device: torch.device | str) -> dict[str, Tensor]:
        """Per-field indices (B,) into the tables; unknown or out-of-range values map to the last row."""
        attributes = conditions.get("attributes") or {}
        out = {}
        for name, size in self.sizes.items():
            if name == "label":
                value = conditions.get("label")
            elif name == "skin_tone":
                tone = conditions.get(self.tone_field)
                value = None if tone is None else torch.as_tensor(tone).long() - 1  # 1-6 -> 0-5, unknown -> -1
            else:
                value = attributes.get(name.removeprefix("attribute_"))
            if value is None:
                index = torch.full((count,), size, dtype=torch.long)
            else:
                index = torch.as_tensor(value).long().cpu()
                if index.shape != (count,):
                    raise ValueError(f"conditions['{name}'] has shape {tuple(index.shape)}, expected ({count},)")
                index = torch.where((index < 0) | (index >= size), torch.full_like(index, size), index)
            out[name] = index.to(device)
        return out

    def forward(self, conditions: dict[str, Any] | None, count: int, drop: Tensor | None = None) -> Tensor:
        """Embed ``count`` rows of ``conditions`` (None = all unknown); rows where ``drop`` (B,) are unknown."""
        device = next(self.parameters()).device
        if conditions is None:
            drop = torch.ones(count, dtype=torch.bool, device=device)
        indices = self.indices(conditions or {}, count, device)
        total = torch.zeros(count, self.dim, device=device)
        for name, index in indices.items():
            if drop is not None:
                index = torch.where(drop.to(device), torch.full_like(index, self.sizes[name]), index)
            total = total + self.tables[name](index)  # (B, dim)
        return total


class Label(Conditioner):
    """Class-conditional diffusion (``ddpm_class``): a :class:`ConditionEmbedding` of the UNet's
    timestep-embedding width, added to that embedding (diffusers ``class_embed_type="identity"``).

    Args:
        use_attributes, use_skin_tone: fields of the embedding besides the diagnosis.
    """

    kind: ClassVar[str] = "label"
    reconstruction_input: ClassVar[str] = "its own label"

    def __init__(self, data_info: DataInfo, time_embed_dim: int, use_attributes: bool = True, use_skin_tone: bool = True) -> None:
        super().__init__()
        self.embedding = ConditionEmbedding(data_info, time_embed_dim, use_attributes, use_skin_tone)

    def unet_inputs(self) -> dict[str, Any]:
        return {"class_embed_type": "identity"}

    def forward(self, conditions: dict[str, Any], count: int, *, training: bool = False) -> Conditioning:
        return Conditioning(class_labels=self.embedding(conditions, count))

    def null(self, count: int) -> Conditioning:
        return Conditioning(class_labels=self.embedding(None, count))


def prompt_conditions(prompts: list[str], info: DataInfo) -> dict[str, Any]:
    """Conditions for free prompts: the captions plus whatever label, attributes and skin tone (Fitzpatrick type or
    ITA tone group) they name."""
    parsed = [parse_caption(p, info) for p in prompts]
    return {
        "caption": list(prompts),
        "label": torch.tensor([p.get("label", -1) for p in parsed]),
        "attributes": {n: torch.tensor([p.get("attributes", {}).get(n, -1) for p in parsed]) for n in info.attribute_names},
        "skin_tone": torch.tensor([p.get("skin_tone", 0) for p in parsed]),
        "tone_group": torch.tensor([p.get("tone_group", 0) for p in parsed]),
    }
