"""Atomic writes: whole files only, with the permissions the user's umask gives, and no leftovers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from datamodules.atomic import atomic_path, atomic_write, remove_stale_temp_files, umask_file_mode
from evaluation.fid import RealFeatureCache
from evaluation.schema import METRIC_KEYS, empty_metrics, write_metrics_json
from experiments.checkpoint_io import AtomicCheckpointIO


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_follow_the_umask(umask: int, tmp_path: Path) -> None:
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "checkpoints" / "last.ckpt")
    write_metrics_json(tmp_path / "metrics.json", {**empty_metrics(), "nulls": dict.fromkeys(METRIC_KEYS, "not computed in this test")})
    RealFeatureCache(tmp_path / "cache").save("key", {"features": torch.zeros(2, 3)})
    with atomic_path(tmp_path / "judge", directory=True) as folder:
        (folder / "judge.json").write_text("{}")
    for path in (tmp_path / "checkpoints" / "last.ckpt", tmp_path / "metrics.json", tmp_path / "cache" / "real_features" / "key.safetensors"):
        assert _mode(path) == 0o666 & ~umask, path  # mkstemp's 0600 hid run folders from the group
    assert _mode(tmp_path / "judge") == 0o777 & ~umask
    assert umask_file_mode() == 0o666 & ~umask
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True) == {"global_step": 3}
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temporaries left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    stale = [tmp_path / ".last.ckpt.k2x_9q0a.tmp", tmp_path / ".metrics.json.0123abcd.tmp"]  # mkstemp's and ours
    for path in stale:
        path.write_bytes(b"")
    (tmp_path / ".judge.89abcdef.tmp").mkdir()
    kept = [tmp_path / "last.ckpt", tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".x.short.tmp"]
    for path in kept:
        path.write_text("keep")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([p.name for p in stale] + [".judge.89abcdef.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
