"""``data`` suite: can the loader feed training? All on the phantom, so it runs anywhere.

    python -m experiments.bench data
    python -m experiments.bench data data.step_images_per_s=150

Keys:
- ``data.images_per_s`` {"32": .., "64": ..}: training-loader throughput from the uint8 cache with
  ``loader_workers`` (2) worker processes, batch 32, augmentation on, after the workers started.
- ``data.decode_images_per_s`` {"32": .., "64": ..}: the same loader decoding 600x450 JPEG files
  per item instead (HAM10000's original size; resize + centre crop as the cache build does).
- ``data.cache_over_decode``: the smaller of the two sizes' cached/decoded ratios.
- ``data.step_images_per_s``: images/s a quick-budget training step consumes: forward + backward +
  AdamW of the project's default UNet (``models.unets.build_unet`` defaults) at batch 32, 32 px,
  measured here on CPU, or given as ``step_images_per_s=``.
- ``data.loader_over_step_demand``: ``images_per_s["32"] / step_images_per_s``; above 1 the
  loader is not what limits training. Measured separately, so on a machine whose cores the loader
  workers share with the step this is an upper bound.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules import SkinDataModule
from datamodules.transforms import Augment, load_square


SIZES = (32, 64)


def loader_images_per_s(loader: DataLoader, batches: int) -> float:
    """Images/s over ``batches`` batches, after one warm-up batch (worker start-up excluded)."""
    iterator = iter(loader)
    next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


class DecodingDataset(Dataset):
    """The naive alternative to the cache: decode, resize and crop a file per item."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size, self.augment = paths, size, Augment()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.augment(load_square(self.paths[index], self.size)), "label": 0}


def write_jpegs(images: np.ndarray, folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"phantom_{index:04d}.jpg"
        Image.fromarray(images[index % len(images)]).resize((600, 450), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def step_images_per_s(batch_size: int = 32, image_size: int = 32, steps: int = 3) -> float:
    """Images/s of a quick-budget diffusion training step (the shipped UNet of model/_diffusion.yaml, CPU, float32)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from experiments import CONFIG_DIR
    from models.unets import patchify

    unet = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "_diffusion.yaml").unet)(image_size=image_size)
    patch = image_size // unet.config.sample_size
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    images = patchify(torch.randn(batch_size, 3, image_size, image_size), patch)  # the UNet works on patches
    timesteps = torch.randint(0, 1000, (batch_size,))

    def step() -> None:
        loss = torch.nn.functional.mse_loss(unet(images, timesteps).sample, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def suite(options: dict[str, str]) -> dict[str, Any]:
    workers = int(options["loader_workers"])
    batches = int(options["batches"])
    cached, decoded = {}, {}
    with tempfile.TemporaryDirectory(prefix="dermsynth-bench-") as temp:
        for size in SIZES:
            dm = SkinDataModule(source="phantom", image_size=size, batch_size=32, num_workers=workers, num_train=int(options["num_train"]),
                                num_val=32, num_test=32, allow_upscale=False, holdout_combos=(), holdout_paraphrases=0, cache_dir=options.get("cache_dir") or temp, progress=False)
            dm.setup()
            cached[str(size)] = loader_images_per_s(dm.train_dataloader(), batches)
            # enough files for the timed batches plus the warm-up one, at most 256 (the loader cycles)
            paths = write_jpegs(dm.train_set.table.images[:64], Path(temp) / f"jpeg{size}", min(256, 32 * (min(batches, 24) + 1)))
            decode_loader = DataLoader(DecodingDataset(paths, size), batch_size=32, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, drop_last=True)
            decoded[str(size)] = loader_images_per_s(decode_loader, min(batches, 24))
    demand = float(options["step_images_per_s"]) if options["step_images_per_s"] else step_images_per_s()
    ratios = {size: cached[size] / decoded[size] for size in cached}
    return {
        "data.images_per_s": {k: round(v, 1) for k, v in cached.items()},
        "data.decode_images_per_s": {k: round(v, 1) for k, v in decoded.items()},
        "data.cache_over_decode": round(min(ratios.values()), 2),
        "data.cache_over_decode_by_size": {k: round(v, 2) for k, v in ratios.items()},
        "data.step_images_per_s": round(demand, 1),
        "data.step_demand_source": "given" if options["step_images_per_s"] else "measured: default UNet, batch 32, 32 px, CPU",
        "data.loader_over_step_demand": round(cached["32"] / demand, 2),
        "data.loader_workers": workers,
        "data.settings": {"options": dict(options), "sizes": list(SIZES), "batch_size": 32, "threads": torch.get_num_threads()},
    }
