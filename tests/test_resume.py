"""Lossless resume on a tiny module: same batches, same random draws, same weights as a straight run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from torchdata.stateful_dataloader import StatefulDataLoader

from callbacks.rng import RNGState, collect_rng_states, restore_rng_states
from datamodules.resumable import ResumableBatchSampler, ShuffledShard


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
    def __init__(self, rows: int = 24, workers: int = 0) -> None:
        super().__init__()
        self.rows, self.workers = rows, workers

    def train_dataloader(self) -> StatefulDataLoader:
        rows = torch.stack([torch.arange(float(self.rows)), torch.linspace(-1, 1, self.rows)], dim=1)  # (row id, x)
        batches = ResumableBatchSampler(ShuffledShard(self.rows, seed=3), batch_size=4, drop_last=True)
        return StatefulDataLoader(rows, batch_sampler=batches, num_workers=self.workers, generator=torch.Generator().manual_seed(0))


def _fit(folder: Path, steps: int, resume: bool, data: _Data | None = None) -> _NoisyRegression:
    L.seed_everything(0, verbose=False)
    module = _NoisyRegression()
    trainer = L.Trainer(
        max_steps=steps, max_epochs=-1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=1, save_top_k=0), RNGState(seed=0)],
    )
    trainer.fit(module, datamodule=data or _Data(), ckpt_path=str(folder / "last.ckpt") if resume else None, weights_only=True)
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


@pytest.mark.parametrize("rows, workers", [(26, 0), (24, 2)])  # a dropped last partial batch; loader processes
@pytest.mark.parametrize("first_leg", [6, 9])
def test_resume_with_workers_and_a_ragged_epoch(tmp_path: Path, rows: int, workers: int, first_leg: int) -> None:
    straight = _fit(tmp_path / "straight", 12, resume=False, data=_Data(rows, workers))
    first = _fit(tmp_path / "resumed", first_leg, resume=False, data=_Data(rows, workers))
    second = _fit(tmp_path / "resumed", 12, resume=True, data=_Data(rows, workers))
    assert first.rows_seen + second.rows_seen == straight.rows_seen


def test_sampler_shards_and_starts_mid_epoch() -> None:
    shard = ShuffledShard(10, seed=1)
    full = list(shard)
    assert sorted(full) == list(range(10)) and list(shard) == full  # fixed per epoch
    batches = ResumableBatchSampler(shard, batch_size=2, drop_last=True)
    assert [i for batch in batches for i in batch] == full
    batches.load_state_dict({"epoch": 0, "batches": 2})
    assert [i for batch in batches for i in batch] == full[4:]  # the offset applies once
    assert [i for batch in batches for i in batch] == full
    assert batches.state_dict() == {"epoch": 1, "batches": 0}  # a finished epoch resumes at the next one
    shard.set_epoch(1)
    assert list(shard) != full


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
