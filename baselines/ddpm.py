"""Diffusion baselines ``ddpm`` (no conditioning) and ``ddpm_class`` (label embedding + guidance).

Both are the hybrid's ``DiffusionModule`` (same UNet family, noise process, samplers and
optimiser: ``model/_diffusion.yaml``) with another conditioner: ``NoConditioning`` or ``Label``
(``model/ddpm.yaml``, ``model/ddpm_class.yaml``). ``ddpm_class`` answers whether the hybrid's
language model adds anything over a label embedding.
"""

from __future__ import annotations

from typing import Any

from models.diffusion_module import DiffusionModule

CONDITIONINGS = ("none", "label")


class DiffusionBaseline(DiffusionModule):
    """A ``DiffusionModule`` whose conditioner is not text (see ``DiffusionModule`` for the arguments)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"a diffusion baseline's model.conditioner must be one of {list(CONDITIONINGS)}, got '{self.conditioning}'")
