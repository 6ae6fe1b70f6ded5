"""Learned embedding of a row's label, attributes and skin tone: the baselines' stand-in for text.

``ddpm_class``, the conditional VAE and the GAN's generator and projection discriminator all
read conditions through this one module, so that "label conditioning" means the same thing in
every row of the comparison table. Each field has its own table with one extra "unknown" row:
an unknown attribute (-1), an unknown skin tone (0) and a dropped row (classifier-free guidance)
all take that row, so the unconditional input is simply "everything unknown".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from datamodules.info import DataInfo

NUM_SKIN_TONES = 6  # Fitzpatrick I-VI; batches carry 1-6, 0 = unknown


class ConditionEmbedding(nn.Module):
    """Conditions -> (B, ``dim``): the sum of one embedding per known field.

    Args:
        data_info: vocabulary (diagnoses, attribute values, whether skin tones exist).
        dim: embedding width.
        use_attributes: embed ``conditions["attributes"]`` besides the label.
        use_skin_tone: embed ``conditions["skin_tone"]`` (only where ``data_info.skin_tones``).
    """

    def __init__(self, data_info: DataInfo, dim: int, use_attributes: bool = True, use_skin_tone: bool = True) -> None:
        super().__init__()
        self.dim = dim
        sizes = {"label": data_info.num_classes}
        if use_attributes:
            sizes.update({f"attribute_{name}": len(values) for name, values in data_info.attribute_classes.items()})
        if use_skin_tone and data_info.skin_tones:
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
                tone = conditions.get("skin_tone")
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
