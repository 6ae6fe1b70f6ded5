"""The one interface every generator offers, so callbacks and evaluation treat them alike.

A model is a LightningModule that can (1) draw images for given conditions and (2) optionally
reconstruct real images for the SSIM/PSNR protocol. Conditions are a batch without its images:
``{"caption": list[str], "label": (N,), "attributes": {name: (N,)}, "skin_tone": (N,)}``.
Unconditional models ignore them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor

from datamodules.info import DataInfo

Conditions = dict[str, Any]


class GenerativeModule(L.LightningModule):
    """Base class of the hybrid and the baselines.

    Subclasses set ``conditioning`` (``"none"``, ``"label"`` or ``"text"``) and implement
    ``generate``; those with a reconstruction protocol implement ``reconstruct`` and name it in
    ``reconstruction_protocol``.
    """

    conditioning: ClassVar[str] = "none"
    reconstruction_protocol: ClassVar[str | None] = None

    def __init__(self, data_info: DataInfo | dict[str, Any]) -> None:
        super().__init__()
        self.data_info = data_info if isinstance(data_info, DataInfo) else DataInfo.from_dict(data_info)
        # The resolved run config; the runner sets it so a checkpoint can rebuild its model.
        self.run_config: dict[str, Any] | None = None

    @property
    def image_size(self) -> int:
        return self.data_info.image_size

    @property
    def nfe(self) -> int | None:
        """Network evaluations per generated image (None where it does not apply)."""
        return 1

    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions | None,
        num_images: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``num_images`` images, shape (N, 3, H, W), values in [-1, 1], on ``self.device``.

        ``conditions`` holds ``num_images`` entries per key, or is None (unconditional draw).
        ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible.
        """
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor | None:
        """Reconstruct ``batch["image"]`` by the model's protocol; None if it has none."""
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        from models.checkpoint import safe_container

        checkpoint["data_info"] = self.data_info.to_dict()
        if self.run_config is not None:
            checkpoint["dermsynth_config"] = safe_container(self.run_config)
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = safe_container(dict(checkpoint[key]))
