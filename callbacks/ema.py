"""Exponential moving average of the trainable weights, used for sampling and evaluation.

Diffusion models and GANs sample markedly better from EMA weights (Ho et al. 2020, Karras et
al. 2018). The average lives in this callback, not in the model, so every model gets it the same
way; it is saved in checkpoints twice: as callback state (for lossless resume) and as
``checkpoint["ema_state_dict"]`` (a plain state dict that ``models.checkpoint`` loads for
generation).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor


class EMA(Callback):
    """Keep ``shadow = decay * shadow + (1 - decay) * weights`` after every optimiser step.

    Args:
        decay: the decay per step once warmed up.
        warmup_steps: use ``min(decay, (1 + n) / (10 + n))`` for the first ``warmup_steps``
            updates (null: for the whole run), so the average never carries the random
            initialisation; with the ramp kept, short CPU runs average over a window that grows
            with the run (about 55 steps at n = 500) instead of 1 / (1 - decay) steps.
        evaluate_with_ema: swap the EMA weights in for validation.
        power: the power-function EMA of Karras et al. 2024 (EDM2, arXiv:2312.02696, eq. 3): decay
            ``(1 - 1/n)^(power + 1)`` at update n, in place of ``decay`` and ``warmup_steps``. Its
            average spans a fixed share of the run, however long (relative width sigma_rel
            ``sqrt((g + 1) / ((g + 2)^2 (g + 3)))``: 0.14 at g = 4, 0.05 at g = 17). The default ramp
            ``(1 + n) / (10 + n)`` behaves as g ~ 8 (sigma_rel 0.09) until it reaches ``decay``.
    """

    def __init__(
        self, decay: float = 0.999, warmup_steps: int | None = None, evaluate_with_ema: bool = True, power: float | None = None,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in [0, 1), got {decay}")
        if power is not None and power <= 0:
            raise ValueError(f"callbacks.ema.power must be positive (or null), got {power}")
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.power = power
        self.evaluate_with_ema = evaluate_with_ema
        self.shadow: dict[str, Tensor] | None = None
        self.num_updates = 0
        self._backup: dict[str, Tensor] | None = None
        self._swapped_for_validation = False

    @staticmethod
    def _tracked(pl_module: L.LightningModule) -> dict[str, Tensor]:
        # Frozen parts (the text encoder) never change, so averaging them only costs memory.
        return {name: p for name, p in pl_module.named_parameters() if p.requires_grad and p.is_floating_point()}

    def current_decay(self) -> float:
        if self.power is not None:  # n = updates so far + 1: the first update copies the weights
            return (1.0 - 1.0 / (self.num_updates + 1)) ** (self.power + 1.0)
        if self.warmup_steps is None or self.num_updates < self.warmup_steps:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = self._tracked(pl_module)
        if self.shadow is None:
            self.shadow = {name: p.detach().clone() for name, p in params.items()}
            return
        missing = sorted(set(params) - set(self.shadow))
        if missing:
            raise RuntimeError(f"EMA state in the checkpoint lacks parameters of this model: {missing[:5]}")
        self.shadow = {name: t.to(params[name].device) for name, t in self.shadow.items() if name in params}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.shadow is None:
            return
        decay = self.current_decay()
        for name, param in self._tracked(pl_module).items():
            self.shadow[name].lerp_(param.detach(), 1.0 - decay)
        self.num_updates += 1

    def swap_in(self, pl_module: L.LightningModule) -> bool:
        """Put the EMA weights into the model, keeping the trained ones aside; False if there is nothing to swap."""
        if self.shadow is None or self._backup is not None:
            return False
        params = self._tracked(pl_module)
        self._backup = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self.shadow[name])
        return True

    def swap_out(self, pl_module: L.LightningModule) -> None:
        """Put the trained weights back after ``swap_in``."""
        if self._backup is None:
            return
        with torch.no_grad():
            for name, param in self._tracked(pl_module).items():
                param.copy_(self._backup[name])
        self._backup = None

    @contextmanager
    def swapped(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Run the block with the EMA weights in the model; the trained weights come back after."""
        swapped = self.swap_in(pl_module)
        try:
            yield
        finally:
            if swapped:
                self.swap_out(pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.evaluate_with_ema and not trainer.sanity_checking:
            self._swapped_for_validation = self.swap_in(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped_for_validation:
            self.swap_out(pl_module)
            self._swapped_for_validation = False

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = state_dict["shadow"]
        self.num_updates = int(state_dict["num_updates"])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.shadow is None:
            return
        # Weights as they would be after swapping: trained ones for untracked entries.
        ema_state = {name: t.detach().clone() for name, t in pl_module.state_dict().items()}
        if self._backup is not None:  # saving while swapped: the model holds the EMA weights
            ema_state.update({name: t.detach().clone() for name, t in self._backup.items()})
            checkpoint["state_dict"] = {**checkpoint["state_dict"], **self._backup}
        ema_state.update({name: t.detach().clone() for name, t in self.shadow.items()})
        checkpoint["ema_state_dict"] = ema_state


def find_ema(trainer: L.Trainer | None) -> EMA | None:
    """The EMA callback of a trainer, if it has one."""
    if trainer is None:
        return None
    return next((c for c in trainer.callbacks if isinstance(c, EMA)), None)


@contextmanager
def ema_weights(trainer: L.Trainer | None, module: L.LightningModule) -> Iterator[None]:
    """Run the block in eval mode with the EMA weights (when the trainer has the EMA callback).

    The trained weights and the module's training mode come back afterwards, also on an error.
    """
    ema = find_ema(trainer)
    was_training = module.training
    module.eval()
    try:
        with ema.swapped(module) if ema is not None else nullcontext():
            yield
    finally:
        module.train(was_training)
