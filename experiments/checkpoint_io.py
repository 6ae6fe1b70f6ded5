"""The runner's checkpoint writer (a Lightning ``CheckpointIO`` plugin): never a half-written file.

A run killed during a save (pre-emption, out-of-memory, Ctrl-C) must leave the previous
``last.ckpt`` intact, because ``resume=auto`` continues from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from datamodules.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on local file systems (``os.replace``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_write(Path(path), "wb") as file:
            torch.save(checkpoint, file)
