"""The latent route's training latents, encoded once: every training image in each of its eight dihedral poses.

On the latent route the training augmentation (mirror, quarter turns) acts on images, so without a
cache every step runs the first stage's encoder on its batch. The encoder is frozen and the UNet
reads posterior means, so an (image, pose) pair has exactly one latent: they are all computed here
once per data set and fitted first stage, kept in memory as float16 (rounding ~5e-4 relative) and
on disk beside the first stage, and a training step looks its batch up by ``index`` and ``pose``
(``data.with_pose``). The brightness jitter has no exact counterpart in latent space; the cached
route trains without it (``recipe/latent_cached.yaml`` sets ``data.augment_brightness=0``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.atomic import write_bytes_atomic
from datamodules.transforms import POSES, posed, to_tensor

log = logging.getLogger(__name__)
METADATA_KEY = "dermsynth_latent_cache"


class LatentCache:
    """Latents (N, 8, C, h, w) of the N training images in poses 0-7 (``datamodules.transforms.posed``)."""

    def __init__(self, latents: Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != POSES:
            raise ValueError(f"a latent cache holds (images, {POSES} poses, C, h, w) latents, got shape {tuple(latents.shape)}")
        self.latents = latents

    def __len__(self) -> int:
        return self.latents.shape[0]

    def lookup(self, index: Tensor, pose: Tensor) -> Tensor:
        """(B, C, h, w) float32 latents of training images ``index`` (B,) in poses ``pose`` (B,)."""
        return self.latents[index.long().cpu(), pose.long().cpu()].float()


@torch.no_grad()
def encode_poses(encode: Callable[[Tensor], Tensor], images: Any, batch_size: int, progress: bool = False) -> Tensor:
    """(N, 8, C, h, w) float16: ``encode`` of every uint8 (H, W, 3) image of ``images`` in each dihedral pose
    (``batch_size`` images, so 8 x ``batch_size`` poses, per call)."""
    count, rows = len(images), []
    for start in tqdm(range(0, count, batch_size), desc="latent cache", disable=not progress, leave=False):
        chunk = [np.asarray(images[i]) for i in range(start, min(start + batch_size, count))]
        batch = torch.stack([to_tensor(posed(image, pose)) for image in chunk for pose in range(POSES)])  # (8b, 3, H, W)
        latents = encode(batch).to(torch.float16).cpu()
        rows.append(latents.view(len(chunk), POSES, *latents.shape[1:]))
    return torch.cat(rows)


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers: the cache must come from these very weights."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_encode(
    encode: Callable[[Tensor], Tensor], images: Any, path: Path | None, identity: dict[str, Any], batch_size: int, progress: bool = False,
) -> LatentCache:
    """The cache at ``path`` if it was written for ``identity`` (data, first stage, image count), else encode and write it."""
    if path is not None and path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            stored = json.loads((handle.metadata() or {}).get(METADATA_KEY, "null") or "null")
            if stored == identity:
                log.info("latent cache: loaded %s", path)
                return LatentCache(handle.get_tensor("latents"))
        log.warning("latent cache %s was written for other data or another first stage; encoding again", path)
    latents = encode_poses(encode, images, batch_size, progress)
    if path is not None:
        write_bytes_atomic(path, save({"latents": latents.contiguous()}, metadata={METADATA_KEY: json.dumps(identity, sort_keys=True)}))
        log.info("latent cache: %d images x %d poses encoded, %.0f MB at %s", len(images), POSES, latents.numel() * 2 / 1e6, path)
    return LatentCache(latents)
