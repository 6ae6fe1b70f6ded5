"""Save and restore the random number generators, so a resumed run draws what a straight run draws.

Diffusion training samples timesteps and noise from the global generators every step; without
this, a resumed run restarts them from ``seed`` and repeats the noise of the first steps. The
states are plain tensors and lists, so checkpoints still load with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def collect_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python generator states as weights-only-safe containers."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGState(Callback):
    """Checkpoint the generator states of the saving step; restore them on resume.

    Under DDP the checkpoint holds rank 0's states; the other ranks re-seed from
    ``(seed, step, rank)`` on resume, so ranks keep drawing different noise.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Applied at the start of the resumed loop, after Lightning's own set-up has drawn numbers.
        pending = getattr(self, "_pending", None)
        if pending is None:
            return
        self._pending = None
        if trainer.global_rank == 0:
            restore_rng_states(pending)
        else:
            L.seed_everything(self.seed * 1_000_003 + trainer.global_step * 101 + trainer.global_rank, workers=True, verbose=False)
