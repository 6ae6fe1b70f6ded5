"""Lossless resume on a tiny module: same batches, same random draws, same weights as a straight run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.rng import RNGState, collect_rng_states, restore_rng_states
from datamodules.resumable import ResumableDataLoader, ResumableSampler


class _NoisyRegression(L.LightningModule):
    """Records the rows it trains on; its loss draws global noise, like a diffusion step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.rows_seen: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.rows_seen += batch[:, 0].long().tolist()
        noise = torch.randn(batch.shape[0], 1)
        return (self.layer(batch[:, 1:]) - noise).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.05)


class _Data(L.LightningDataModule):
    def train_dataloader(self) -> ResumableDataLoader:
        rows = torch.stack([torch.arange(24.0), torch.linspace(-1, 1, 24)], dim=1)  # (row id, x)
        return ResumableDataLoader(
            rows, sampler=ResumableSampler(24, seed=3), batch_size=4, drop_last=True,
            position_fn=lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        )


def _fit(folder: Path, steps: int, resume: bool) -> _NoisyRegression:
    L.seed_everything(0, verbose=False)
    module = _NoisyRegression()
    trainer = L.Trainer(
        max_steps=steps, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=1, save_top_k=0), RNGState(seed=0)],
    )
    trainer.fit(module, datamodule=_Data(), ckpt_path=str(folder / "last.ckpt") if resume else None, weights_only=True)
    return module


@pytest.mark.parametrize("first_leg", [4, 6, 9])  # mid-epoch, at the epoch's end, mid second epoch
def test_resumed_run_matches_a_straight_run(tmp_path: Path, first_leg: int) -> None:
    straight = _fit(tmp_path / "straight", 12, resume=False)
    first = _fit(tmp_path / "resumed", first_leg, resume=False)
    second = _fit(tmp_path / "resumed", 12, resume=True)
    assert first.rows_seen + second.rows_seen == straight.rows_seen  # every row once per epoch, in order
    assert sorted(straight.rows_seen[:24]) == list(range(24))
    assert straight.rows_seen[:24] != straight.rows_seen[24:48]  # a new shuffle each epoch
    for a, b in zip(straight.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_sampler_shards_and_starts_mid_epoch() -> None:
    sampler = ResumableSampler(10, seed=1)
    full = list(sampler)
    assert sorted(full) == list(range(10)) and list(sampler) == full  # fixed per epoch
    sampler.start = 4
    assert list(sampler) == full[4:] and list(sampler) == full  # the offset applies once
    sampler.set_epoch(1)
    assert list(sampler) != full


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import numpy as np
    import random

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    torch.save(collect_rng_states(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
