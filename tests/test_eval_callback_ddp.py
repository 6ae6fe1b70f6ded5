"""The evaluation callback in a real (tiny) fit, and a 2-process evaluation equal to a 1-process one."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from callbacks.evaluate import Evaluate
from evaluation.protocol import evaluate_generator
from evaluation.schema import METRIC_KEYS
from tests.eval_fakes import BlobDataModule, BlobGenerator
from tests.test_eval_protocol import tiny_eval_cfg


class BlobLightningData(L.LightningDataModule, BlobDataModule):
    def __init__(self) -> None:
        L.LightningDataModule.__init__(self)
        BlobDataModule.__init__(self, size=16)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=32)


class TrainableBlobs(BlobGenerator):
    def training_step(self, batch, batch_idx):
        return (self.anchor - batch["image"].mean()).pow(2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_logs_val_fd_and_writes_metrics(session_cache: Path, tmp_path: Path) -> None:
    data = BlobLightningData()
    cfg = tiny_eval_cfg(session_cache, num_generated=32)
    callback = Evaluate(cfg, str(tmp_path), every_n_steps=2, num_generated=32, write_on_fit_end=True, extra={"exp": "blobs"})
    model = TrainableBlobs(data.info)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[callback])
    trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics["val/fd"] >= 0
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert list(written) == list(METRIC_KEYS) and written["train_steps"] == 4 and written["exp"] == "blobs"
    assert written["eval_split"] == "val" and written["provenance"]["setup"]["when"].startswith("before training")


class TrainingClock(Callback):
    """Marks when the training loop (and the max_time clock) starts."""

    def __init__(self) -> None:
        self.started = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = True


def test_judge_and_real_features_are_prepared_before_the_training_clock(session_cache: Path, tmp_path: Path, monkeypatch) -> None:
    """A cold cache: the judge trains and the real features are extracted in set-up, before on_train_start; val/fd in
    the training loop only samples and extracts."""
    import evaluation.judge
    import evaluation.resources

    clock = TrainingClock()
    work: list[tuple[str, bool]] = []
    train_classifier, real_features = evaluation.judge.train_classifier, evaluation.resources.real_features

    def recorded_training(*args, **kwargs):
        work.append(("judge", clock.started))
        return train_classifier(*args, **kwargs)

    def recorded_features(*args, **kwargs):
        work.append(("features", clock.started))
        return real_features(*args, **kwargs)

    monkeypatch.setattr(evaluation.judge, "train_classifier", recorded_training)
    monkeypatch.setattr(evaluation.resources, "real_features", recorded_features)
    data = BlobLightningData()
    cfg = tiny_eval_cfg(tmp_path / "cold_cache", num_generated=16, judge={"epochs": 1})
    callback = Evaluate(cfg, str(tmp_path), every_n_steps=1, num_generated=16, write_on_fit_end=False)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[clock, callback])
    trainer.fit(TrainableBlobs(data.info), datamodule=data)
    assert ("judge", False) in work and ("features", False) in work  # the cache was cold: set-up did the work
    assert all(not during_training for _, during_training in work), work
    assert trainer.callback_metrics["val/fd"] >= 0 and callback.resources.split == "val"
    assert callback.resources.timing["judge_trained_here"] and callback.resources.timing["judge_s"] > 0


def _rank_main(rank: int, world: int, port: int, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DERMSYNTH_CACHE=cache)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    blobs = BlobDataModule(size=16)
    metrics = evaluate_generator(BlobGenerator(blobs.info, noise=0.2), blobs, tiny_eval_cfg(Path(cache), num_generated=80), Path(out) / "ddp")
    if rank == 0:
        Path(out, "ddp.json").write_text(json.dumps(metrics, default=str))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(session_cache: Path, tmp_path: Path) -> None:
    blobs = BlobDataModule(size=16)
    single = evaluate_generator(BlobGenerator(blobs.info, noise=0.2), blobs, tiny_eval_cfg(session_cache, num_generated=80), tmp_path / "one")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port, str(session_cache), str(tmp_path)), nprocs=2, join=True)
    double = json.loads((tmp_path / "ddp.json").read_text())
    assert double["num_generated"] == single["num_generated"] == 80
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert double[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
        assert double["intervals"][key] == pytest.approx(single["intervals"][key], rel=1e-6, abs=1e-9), key
    assert double["cond_accuracy"]["mean_visual"] == pytest.approx(single["cond_accuracy"]["mean_visual"])
