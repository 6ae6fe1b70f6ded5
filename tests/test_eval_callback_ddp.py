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


def _rank_main(rank: int, world: int, port: int, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DERMSYNTH_CACHE=cache)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    blobs = BlobDataModule(size=16)
    metrics = evaluate_generator(BlobGenerator(blobs.info, noise=0.2), blobs, tiny_eval_cfg(Path(cache), num_generated=80), Path(out) / "ddp", extra={"seed": 0})
    if rank == 0:
        Path(out, "ddp.json").write_text(json.dumps(metrics, default=str))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(session_cache: Path, tmp_path: Path) -> None:
    blobs = BlobDataModule(size=16)
    single = evaluate_generator(BlobGenerator(blobs.info, noise=0.2), blobs, tiny_eval_cfg(session_cache, num_generated=80), tmp_path / "one", extra={"seed": 0})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port, str(session_cache), str(tmp_path)), nprocs=2, join=True)
    double = json.loads((tmp_path / "ddp.json").read_text())
    assert double["num_generated"] == single["num_generated"] == 80
    for key in ("fid", "kid_mean", "precision", "recall", "is_mean"):
        assert double[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    assert double["cond_accuracy"]["mean"] == pytest.approx(single["cond_accuracy"]["mean"])
