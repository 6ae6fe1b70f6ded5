"""Downstream benchmark cells: one classifier of real skin images per (arm, seed, real fraction).

Arms (``ARMS``), all trained for the same number of optimiser steps, on batches of the same size,
through the same augmentation (the data module's flips, 90-degree rotations and brightness, applied
to real and synthetic images alike, as uint8 images, so a synthetic image is treated as a photo):
- ``real``: the real training subset, each image once per pass (natural class shares);
- ``real_balanced``: the same images with class-balanced draws (``datamodules.sampling``, T = 1):
  what rebalancing alone gives, without synthesis;
- ``real+syn`` / ``real+syn_class``: the subset plus N class-balanced synthetic images from the
  generator under test / from the class-conditional DDPM. Mixing: with ``synthetic_share`` null the
  two sets are concatenated and drawn as one (each image once per pass), so the synthetic share of
  a batch is N / (n + N): large when real data are scarce, small when they are not, as when a user
  adds N images to a training folder. A number instead fixes that share of every batch;
- ``syn``: the synthetic images only (train on synthetic, test on real).

The step count is fixed by the protocol, not by the size of an arm's data, so no arm trains longer
because its set is larger. Model selection: the weights with the best balanced accuracy on a fixed
subset of the validation split, checked at ``eval_points`` evenly spaced steps; the test split is
then read once per cell.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from datamodules.sampling import ClassBalancedSampler
from datamodules.transforms import Augment, to_tensor
from evaluation.data import take
from models.classifier import LABEL_HEAD, SkinClassifier, torch_flags_kept
from models.generative import SamplingSettings

ARMS = ("real", "real_balanced", "real+syn", "real+syn_class", "syn")
# The synthetic set each arm draws from (None: real images only): the generator under test or the class DDPM.
SYNTHETIC_OF_ARM = {"real": None, "real_balanced": None, "real+syn": "syn", "real+syn_class": "syn_class", "syn": "syn"}


class LabelledImages(Dataset):
    """uint8 (N, H, W, 3) images and labels; items pass through ``augment`` (or plain conversion) to the batch contract."""

    def __init__(self, images: Any, labels: np.ndarray, augment: Augment | None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.augment = images, np.asarray(labels, dtype=np.int64), augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = np.asarray(self.images[index])
        return {"image": self.augment(image) if self.augment is not None else to_tensor(image), "label": int(self.labels[index])}


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, as an image file would store them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def balanced_conditions(datamodule: Any, num_images: int, seed: int) -> dict[str, Any]:
    """``num_images`` conditions with every diagnosis equally often, drawn from the training distribution."""
    num_classes = datamodule.info.num_classes
    pool = datamodule.sample_conditions(max(8 * num_images, 1000), seed=seed)
    labels = torch.as_tensor(pool["label"])
    rows = []
    per_class = math.ceil(num_images / num_classes)
    for label in range(num_classes):
        candidates = torch.nonzero(labels == label).flatten().tolist()
        if not candidates:
            raise ValueError(f"class {datamodule.info.class_names[label]!r} never drawn by sample_conditions; cannot balance")
        rows += [candidates[i % len(candidates)] for i in range(per_class)]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:num_images]
    return take(pool, [rows[i] for i in order.tolist()])


@torch.no_grad()
def synthetic_images(
    model: Any, datamodule: Any, num_images: int, seed: int, batch_size: int, *, sampling: SamplingSettings | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``num_images`` class-balanced images of a conditional generator: (N, H, W, 3) uint8 and their (N,) labels.

    Chunk ``c`` draws with seed ``seed * 1000003 + c``, so a set is reproducible.
    """
    if getattr(model, "conditioning", "none") == "none":
        raise ValueError(
            f"{type(model).__name__} is unconditional: the downstream arms need class-balanced synthetic images, "
            "so their generator must take labels or captions (hybrid, ddpm_class)"
        )
    conditions = balanced_conditions(datamodule, num_images, seed)
    chunks = []
    for chunk, start in enumerate(tqdm(range(0, num_images, batch_size), desc="synthetic", disable=not progress, leave=False)):
        rows = list(range(start, min(num_images, start + batch_size)))
        draw = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
        chunks.append(to_uint8(model.generate(take(conditions, rows), len(rows), generator=draw, sampling=sampling)))
    return np.concatenate(chunks), np.asarray(conditions["label"], dtype=np.int64)


def _cycled(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` draws from ``pool``: fresh shuffles of it back to back (each item once per pass)."""
    passes = [rng.permutation(pool) for _ in range(math.ceil(count / len(pool)))]
    return np.concatenate(passes)[:count]


def draw_plan(
    arm: str, real_labels: np.ndarray, num_synthetic: int, steps: int, batch_size: int, seed: int, synthetic_share: float | None,
) -> np.ndarray:
    """Indices into ``ConcatDataset([real, synthetic])`` for ``steps`` batches of ``batch_size`` (see the module docstring)."""
    count, real = steps * batch_size, len(real_labels)
    rng = np.random.default_rng([seed, ARMS.index(arm)])
    synthetic = np.arange(real, real + num_synthetic)
    if arm != "real_balanced" and SYNTHETIC_OF_ARM[arm] is not None and num_synthetic < 1:
        raise ValueError(f"arm {arm!r} needs synthetic images: num_synthetic must be positive")
    if arm == "real":
        return _cycled(np.arange(real), count, rng)
    if arm == "real_balanced":
        sampler = ClassBalancedSampler(real_labels, temperature=1.0, seed=seed)
        passes = math.ceil(count / real)
        return np.concatenate([sampler.epoch_order(epoch) for epoch in range(passes)])[:count]
    if arm == "syn":
        return _cycled(synthetic, count, rng)
    if synthetic_share is None:
        return _cycled(np.arange(real + num_synthetic), count, rng)
    if not 0.0 < synthetic_share < 1.0:
        raise ValueError(f"synthetic_share must be in (0, 1) or null (concatenation), got {synthetic_share}")
    per_batch = round(synthetic_share * batch_size)
    drawn_synthetic = _cycled(synthetic, steps * per_batch, rng).reshape(steps, per_batch)
    drawn_real = _cycled(np.arange(real), steps * (batch_size - per_batch), rng).reshape(steps, batch_size - per_batch)
    batches = np.concatenate([drawn_real, drawn_synthetic], axis=1)
    return rng.permuted(batches, axis=1).reshape(-1)


class SelectOnValidation(Callback):
    """Keep the weights with the best validation balanced accuracy seen at ``points`` (optimiser steps)."""

    def __init__(self, images: Tensor, labels: np.ndarray, points: list[int], bar: Any = None) -> None:
        self.images, self.labels, self.points, self.bar = images, np.asarray(labels), set(points), bar
        self.best: float = -math.inf
        self.best_step = 0
        self.state: dict[str, Tensor] | None = None
        self.history: list[list[float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.bar is not None:
            self.bar.update(1)
        if step not in self.points:
            return
        predicted = pl_module.predict_logits(self.images)[LABEL_HEAD].argmax(1).numpy()
        score = float(balanced_accuracy_score(self.labels, predicted))
        self.history.append([step, score])
        if self.bar is not None:
            self.bar.set_postfix(val_bacc=f"{score:.3f}")
        if score > self.best:
            self.best, self.best_step = score, step
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def selection_points(steps: int, eval_points: int) -> list[int]:
    """``eval_points`` evenly spaced optimiser steps ending at ``steps``."""
    return sorted({max(1, round(steps * k / eval_points)) for k in range(1, eval_points + 1)})


def train_and_test(
    real: LabelledImages, synthetic: LabelledImages | None, plan: np.ndarray, recipe: Any, num_classes: int,
    validation: dict[str, Any], test_images: Tensor, seed: int, *, description: str = "", progress: bool = False,
) -> dict[str, Any]:
    """Train one classifier on ``plan``'s batches, select on validation, predict the test images once.

    ``recipe`` holds arch, pretrained, input_size, steps, batch_size, lr, weight_decay, eval_points
    and accelerator (``configs/augment.yaml`` ``classifier``). Returns the test probabilities (n, K),
    the optimiser steps taken, the selected step and the validation history.
    """
    steps, batch_size = int(recipe.steps), int(recipe.batch_size)
    if len(plan) != steps * batch_size:
        raise ValueError(f"a plan of {len(plan)} draws does not fill {steps} steps of {batch_size}")
    L.seed_everything(seed, workers=True, verbose=False)  # before building: initial head weights depend on it
    model = SkinClassifier(
        {LABEL_HEAD: num_classes}, arch=recipe.arch, pretrained=recipe.pretrained, input_size=recipe.input_size,
        lr=float(recipe.lr), weight_decay=float(recipe.weight_decay), augment=False, max_steps=steps,
    )
    dataset = ConcatDataset([real, synthetic] if synthetic is not None else [real])
    loader = DataLoader(dataset, batch_size=batch_size, sampler=plan.tolist(), num_workers=0)
    bar = tqdm(total=steps, desc=description, leave=False, disable=not progress)
    selector = SelectOnValidation(validation["image"], validation["label"].numpy(), selection_points(steps, int(recipe.eval_points)), bar)
    start = time.perf_counter()
    with torch_flags_kept():
        trainer = L.Trainer(
            max_steps=steps, max_epochs=1, accelerator=recipe.accelerator, devices=1, deterministic=True, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[selector],
            use_distributed_sampler=False, num_sanity_val_steps=0,
        )
        trainer.fit(model, loader)
    train_time = time.perf_counter() - start
    bar.close()
    if trainer.global_step != steps:
        raise RuntimeError(f"{description}: trained {trainer.global_step} optimiser steps, the protocol fixes {steps}")
    model.load_state_dict(selector.state)
    probabilities = model.predict_logits(test_images)[LABEL_HEAD].double().softmax(1).numpy()
    return {
        "probabilities": probabilities, "steps": int(trainer.global_step), "images_seen": int(len(plan)),
        "selected_step": selector.best_step, "val_balanced_accuracy": selector.best, "val_history": selector.history,
        "train_time_s": round(train_time, 2), "test_time_s": round(time.perf_counter() - start - train_time, 2),
    }
