"""Shared pieces of the generators (condition embedding, DiffAugment, schedules) and their test kit.

The other ``test_baselines_*`` files import ``INFO``, ``make_batch``, ``TinyData``,
``tiny_trainer`` and ``model_config`` from here: synthetic batches in the data module's dict
contract, so the baselines are tested without rendering any data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from baselines.diffaugment import diff_augment
from datamodules.info import DataInfo
from models.conditioners import ConditionEmbedding
from models.generative import GenerativeModule, ReconstructionSettings
from models.schedules import linear_decay, warmup_cosine
from tests.helpers import load_with_parents

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
RECONSTRUCTION = ReconstructionSettings(strength=0.5, projection_steps=5)  # the smoke budget's projection
INFO = DataInfo(
    source="phantom",
    image_size=16,
    class_names=("benign", "malignant", "normal"),
    attribute_classes={"border": ("regular", "irregular"), "hair": ("absent", "present")},
    skin_tones=True,
)


def make_batch(n: int, seed: int = 0, size: int = 16) -> dict[str, Any]:
    """A batch in the SkinDataModule contract; each label has its own brightness."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    border = torch.randint(0, 2, (n,), generator=g)
    hair = torch.randint(-1, 2, (n,), generator=g)  # -1: unknown
    tone = torch.randint(0, 7, (n,), generator=g)  # 0: unknown
    images = (0.4 * labels.float() - 0.4).view(n, 1, 1, 1) + 0.2 * torch.randn(n, 3, size, size, generator=g)
    captions = [f"{INFO.class_names[label]} lesion" for label in labels.tolist()]
    return {"image": images.clamp(-1, 1), "caption": captions, "label": labels, "attributes": {"border": border, "hair": hair}, "skin_tone": tone}


def conditions_of(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "image"}


class _Rows(Dataset):
    def __init__(self, count: int, seed: int) -> None:
        batch = make_batch(count, seed)
        self.rows = [
            {"image": batch["image"][i], "caption": batch["caption"][i], "label": batch["label"][i],
             "attributes": {k: v[i] for k, v in batch["attributes"].items()}, "skin_tone": batch["skin_tone"][i]}
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class TinyData(L.LightningDataModule):
    """A LightningDataModule of synthetic 16 px rows (default collate gives the batch dict)."""

    def __init__(self, count: int = 16, batch_size: int = 4) -> None:
        super().__init__()
        self.count, self.batch_size = count, batch_size
        self.info = INFO

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Rows(self.count, 0), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Rows(self.batch_size * 2, 1), batch_size=self.batch_size)


def tiny_trainer(**overrides: Any) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**settings, **overrides})


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The shipped ``model/<name>.yaml`` (with its ``defaults``) merged with ``overrides``."""
    config = load_with_parents(CONFIG_DIR / "model" / f"{name}.yaml")
    return OmegaConf.to_container(OmegaConf.merge(config, overrides), resolve=True)


def build(name: str, **overrides: Any) -> GenerativeModule:
    return instantiate(model_config(name, **overrides), data_info=INFO.to_dict())


def assert_images(images: torch.Tensor, count: int, size: int = 16) -> None:
    assert images.shape == (count, 3, size, size)
    assert torch.isfinite(images).all()
    assert images.min() >= -1.0 and images.max() <= 1.0


# ---------------------------------------------------------------------------------------------
def test_condition_embedding_unknowns_and_drop() -> None:
    embedding = ConditionEmbedding(INFO, dim=8)
    assert set(embedding.sizes) == {"label", "attribute_border", "attribute_hair", "skin_tone"}
    batch = make_batch(6)
    index = embedding.indices(batch, 6, "cpu")
    unknown_hair = batch["attributes"]["hair"] < 0
    assert (index["attribute_hair"][unknown_hair] == 2).all()  # the extra "unknown" row
    assert (index["skin_tone"][batch["skin_tone"] == 0] == 6).all()
    # A dropped row equals the all-unknown (None) embedding; kept rows differ from it.
    drop = torch.tensor([True, False, True, False, False, False])
    dropped = embedding(batch, 6, drop=drop)
    null = embedding(None, 6)
    assert torch.allclose(dropped[drop], null[drop]) and not torch.allclose(dropped[~drop], null[~drop])
    with pytest.raises(ValueError, match="label"):
        embedding({"label": torch.zeros(3, dtype=torch.long)}, 6)


def test_diffaugment_keeps_shape_and_gradient() -> None:
    images = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = diff_augment(images, "color,translation,cutout", generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and not torch.equal(out, images)
    out.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert torch.equal(diff_augment(images, ""), images)
    # cutout zeroes a quarter of every image (a half-side square)
    cut = diff_augment(torch.ones(3, 3, 16, 16), "cutout", generator=torch.Generator().manual_seed(1))
    assert ((cut == 0).float().mean(dim=(1, 2, 3)) > 0.05).all()
    with pytest.raises(ValueError, match="valid"):
        diff_augment(images, "rotate")


def test_translation_moves_content() -> None:
    images = torch.zeros(64, 1, 16, 16)
    images[:, :, 8, 8] = 1.0
    moved = diff_augment(images, "translation", generator=torch.Generator().manual_seed(0))
    assert torch.allclose(moved.sum(dim=(1, 2, 3)), torch.ones(64))  # the dot stays inside (shift <= 2 px)
    assert (moved[:, 0, 8, 8] == 0).any()


def test_schedules() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = warmup_cosine(optimizer, warmup_steps=2, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.5 and rates[1] == 1.0 and rates[-1] < 0.1 and rates == sorted(rates[:2]) + sorted(rates[2:], reverse=True)
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = linear_decay(optimizer, total_steps=4, final_fraction=0.5)
    for _ in range(4):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
