"""The latent route's first stage: a small ``AutoencoderKL`` fitted once per data set, then frozen.

Latent diffusion (Rombach et al. 2022) runs the UNet on an autoencoder's latents instead of pixels.
Here the autoencoder is diffusers' ``AutoencoderKL`` with 4x downsampling (three levels), so 64 px
images become 16 x 16 x 4 latents: the UNet sees the 16 x 16 positions of the pixel route without
patches. No pretrained autoencoder ships offline, so it is fitted on the training split
(``models.first_stage_fit``: L1 + a small KL, no perceptual or adversarial term) before training
starts, and cached on disk keyed by the data fingerprint and these settings; every later run on
the same data loads it.

The diffusion model sees posterior means, shifted and scaled to zero mean and unit variance as
measured on the training split (Stable Diffusion's ``scaling_factor``, SD3's ``shift_factor``):
``latent = (mean(q(z|x)) - shift) * scale``. Its reconstruction PSNR/SSIM on the validation split
travels with the cache file, the checkpoint (buffers) and the run's metrics.json provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn
from torch.utils.data import Dataset

from datamodules.atomic import write_bytes_atomic
from models.first_stage_fit import FitRecipe, fit_autoencoder, latent_statistics, reconstruction_quality
from models.latent_cache import LatentCache, load_or_encode, weights_digest

log = logging.getLogger(__name__)
METADATA_KEY = "dermsynth_first_stage"
RECORD_BUFFERS = ("val_psnr", "val_ssim", "val_images", "fit_seconds", "fit_steps")


class FirstStage(nn.Module):
    """A frozen ``AutoencoderKL`` mapping images (B, 3, H, W) in [-1, 1] to latents (B, C, H/f, W/f) and back.

    Args:
        image_size: side of the images (pixels).
        block_out_channels: encoder/decoder widths, one level each; ``f = 2 ** (levels - 1)``.
        layers_per_block: ResNet blocks per level.
        latent_channels: C, channels of the latent.
        norm_num_groups: GroupNorm groups (divides every width).
        mid_attention: self-attention in the middle blocks (diffusers' default; off is cheaper).
        fit: the training recipe, ``{steps, batch_size, lr, kl_weight, seed}`` (``FitRecipe``).
        val_images: validation images the reconstruction PSNR/SSIM is measured on (None: all).
        cache_dir: where fitted first stages are cached (``<cache_dir>/first_stage/<key>.safetensors``).
        path: a fitted first-stage file to use instead of the cache (refused if fitted on other data).
        cache_latents: encode every training image in its eight dihedral poses once, before training
            (``models.latent_cache``), so a training step looks its latents up instead of encoding.
    """

    def __init__(
        self,
        *,
        image_size: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        latent_channels: int,
        norm_num_groups: int,
        mid_attention: bool,
        fit: Mapping[str, Any],
        val_images: int | None,
        cache_dir: str | None,
        path: str | None = None,
        cache_latents: bool = False,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        self.downsample = 2 ** (levels - 1)
        if image_size % self.downsample:
            raise ValueError(f"model.first_stage: image size {image_size} is not divisible by its downsampling {self.downsample}")
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"model.first_stage.block_out_channels {list(block_out_channels)} must be multiples of norm_num_groups={norm_num_groups}")
        self.recipe = FitRecipe.from_config(fit)
        self.architecture = {
            "block_out_channels": [int(c) for c in block_out_channels], "layers_per_block": int(layers_per_block),
            "latent_channels": int(latent_channels), "norm_num_groups": int(norm_num_groups), "mid_attention": bool(mid_attention),
        }
        self.vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(self.architecture["block_out_channels"]), layers_per_block=int(layers_per_block),
            latent_channels=int(latent_channels), norm_num_groups=int(norm_num_groups), sample_size=int(image_size),
            mid_block_add_attention=bool(mid_attention),
        )
        self.vae.requires_grad_(False)  # frozen: only its own fit trains it, never the diffusion optimiser
        self.image_size, self.latent_channels = int(image_size), int(latent_channels)
        self.latent_size = self.image_size // self.downsample
        self.val_limit = None if val_images is None else int(val_images)
        self.cache_dir, self.path = cache_dir, path
        self.cache_latents = bool(cache_latents)  # not a fit setting: the fitted weights do not depend on it
        self.latent_cache: LatentCache | None = None  # plain attribute: rebuilt or reloaded per run, never in a checkpoint
        self.register_buffer("latent_shift", torch.zeros(()))
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        for name in RECORD_BUFFERS:  # the fit's record, so a checkpoint carries it to every re-evaluation
            self.register_buffer(name, torch.full((), float("nan")))

    # ---------------------------------------------------------------------------------------
    # images <-> latents
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> standardised latents (B, C, H/f, W/f)."""
        posterior_mean = self.vae.encode(images).latent_dist.mode()
        return (posterior_mean - self.latent_shift) * self.latent_scale

    def decode(self, latents: Tensor) -> Tensor:
        """Standardised latents (B, C, h, w) -> images (B, 3, h*f, w*f), not clamped."""
        return self.vae.decode(latents / self.latent_scale + self.latent_shift).sample

    # ---------------------------------------------------------------------------------------
    # the fit, its cache and its record
    def settings(self) -> dict[str, Any]:
        """Everything the fitted weights depend on besides the data."""
        return {"image_size": self.image_size, **self.architecture, "fit": self.recipe.as_dict(), "val_images": self.val_limit}

    def cache_key(self, fingerprint: str) -> str:
        text = json.dumps({"data": fingerprint, "first_stage": self.settings()}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def cache_file(self, fingerprint: str) -> Path | None:
        if self.path is not None:
            return Path(self.path)
        if self.cache_dir is None or not fingerprint:
            return None  # nothing names the data: no cache to key
        return Path(self.cache_dir) / "first_stage" / f"{self.cache_key(fingerprint)}.safetensors"

    def record(self) -> dict[str, Any]:
        """The fit's figures for provenance (null until fitted)."""
        values = {name: float(getattr(self, name)) for name in RECORD_BUFFERS}
        known = {name: (None if value != value else value) for name, value in values.items()}  # NaN -> null
        return {
            "fitted": bool(self.fitted), "val_psnr": known["val_psnr"], "val_ssim": known["val_ssim"],
            "val_images": None if known["val_images"] is None else int(known["val_images"]),
            "fit_seconds": known["fit_seconds"], "fit_steps": None if known["fit_steps"] is None else int(known["fit_steps"]),
            "latent_shape": [self.latent_channels, self.latent_size, self.latent_size],
            "shift_factor": float(self.latent_shift), "scaling_factor": float(self.latent_scale), "settings": self.settings(),
        }

    def prepare(self, train_set: Dataset, val_set: Dataset, fingerprint: str, progress: bool = False) -> dict[str, Any]:
        """Load the fitted first stage for this data, or fit, measure and cache it; returns ``record()``."""
        source = self.cache_file(fingerprint)
        if source is not None and source.is_file():
            self.load(source, fingerprint)
            log.info("first stage: loaded %s (val PSNR %.2f dB, SSIM %.3f)", source, float(self.val_psnr), float(self.val_ssim))
            return self.record()
        if self.path is not None:
            raise FileNotFoundError(f"model.first_stage.path={self.path}: no such file")
        seconds = fit_autoencoder(self.vae, train_set, self.recipe, progress=progress)
        shift, std = latent_statistics(self.vae, train_set, self.recipe)
        self.latent_shift.fill_(shift)
        self.latent_scale.fill_(1.0 / std)
        with torch.no_grad():
            psnr, ssim, count = reconstruction_quality(
                lambda x: self.decode(self.encode(x)), val_set, self.val_limit, self.recipe.batch_size, self.latent_scale.device
            )
        for name, value in zip(RECORD_BUFFERS, (psnr, ssim, count, seconds, self.recipe.steps)):
            getattr(self, name).fill_(value)
        self.fitted.fill_(True)
        epoch_s = seconds / self.recipe.steps * len(train_set) / self.recipe.batch_size
        log.info("first stage: fitted in %.0f s (%.0f s per epoch of %d images); val PSNR %.2f dB, SSIM %.3f on %d images",
                 seconds, epoch_s, len(train_set), psnr, ssim, count)
        if source is not None:
            self.save(source, fingerprint)
        return self.record()

    def prepare_latents(self, train_set: Dataset, fingerprint: str, progress: bool = False) -> LatentCache:
        """The training split's latents in every dihedral pose (``models.latent_cache``): loaded, or encoded and cached."""
        images = train_set.table.images
        identity = {"data_fingerprint": fingerprint, "first_stage": self.cache_key(fingerprint), "weights": weights_digest(self),
                    "images": len(images)}
        path = None if self.cache_dir is None or not fingerprint else Path(self.cache_dir) / "first_stage" / f"{self.cache_key(fingerprint)}_poses.safetensors"
        with torch.no_grad():
            device = self.latent_scale.device
            self.latent_cache = load_or_encode(lambda x: self.encode(x.to(device)), images, path, identity, self.recipe.batch_size, progress)
        return self.latent_cache

    def save(self, path: Path, fingerprint: str) -> None:
        """Weights and statistics as safetensors, written atomically; the data and settings in its metadata."""
        tensors = {f"vae.{k}": v.detach().cpu().contiguous() for k, v in self.vae.state_dict().items()}
        tensors.update({name: getattr(self, name).detach().cpu() for name in ("latent_shift", "latent_scale", *RECORD_BUFFERS)})
        metadata = {METADATA_KEY: json.dumps({"data_fingerprint": fingerprint, "settings": self.settings()}, sort_keys=True)}
        write_bytes_atomic(path, save(tensors, metadata=metadata))

    def load(self, path: Path, fingerprint: str) -> None:
        """Load a file ``save`` wrote, refusing one fitted on other data or with other settings."""
        with safe_open(str(path), framework="pt") as handle:
            stored = json.loads((handle.metadata() or {}).get(METADATA_KEY, "null") or "null")
            if not isinstance(stored, dict):
                raise ValueError(f"{path} is not a DermSynth first stage (no '{METADATA_KEY}' metadata)")
            check_stored(path, stored, fingerprint, self.settings())
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        self.vae.load_state_dict({k.removeprefix("vae."): v for k, v in tensors.items() if k.startswith("vae.")})
        for name in ("latent_shift", "latent_scale", *RECORD_BUFFERS):
            getattr(self, name).copy_(tensors[name])
        self.fitted.fill_(True)

    def broadcast(self, send: Callable[[Tensor], Tensor]) -> None:
        """Make every rank hold rank 0's fit: ``send`` is the strategy's broadcast from rank 0."""
        with torch.no_grad():
            for tensor in [*self.parameters(), *self.buffers()]:
                tensor.copy_(send(tensor))


def check_stored(path: Path, stored: Mapping[str, Any], fingerprint: str, settings: Mapping[str, Any]) -> None:
    """Refuse a first-stage file fitted on other data or with other settings, naming what differs."""
    if stored.get("data_fingerprint") != fingerprint:
        raise ValueError(
            f"{path} was fitted on data {stored.get('data_fingerprint')!r}, this run's data is {fingerprint!r}: a first stage "
            "is fitted on the training split of the data it serves. Remove the file or point model.first_stage.path elsewhere"
        )
    differ = sorted(k for k in set(settings) | set(stored.get("settings", {})) if settings.get(k) != stored.get("settings", {}).get(k))
    if differ:
        raise ValueError(f"{path} was fitted with other model.first_stage settings ({', '.join(differ)}); it cannot serve this config")
