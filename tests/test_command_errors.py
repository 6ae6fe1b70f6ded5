"""A bad input ends a command with one line naming the file, row or key; a full disk says so and where."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.command import input_error_message
from tests.helpers import smoke_overrides, untrained_checkpoint
from tests.test_data_sources import make_folder

REPO_ROOT = Path(__file__).resolve().parents[1]


def _main(module: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """``python -m experiments.<module> args`` in process; the message it exits with."""
    import importlib

    monkeypatch.setattr("sys.argv", [module, *args])
    with pytest.raises(SystemExit) as exit:
        importlib.import_module(f"experiments.{module}").main()
    return str(exit.value)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "ddpm.ckpt", "ddpm", "model.sampler.steps=2")


def test_a_file_given_as_out_is_one_line(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    message = _main("export", monkeypatch, f"ckpt={checkpoint}", f"out={notes}")
    assert message == f"error: out={notes} is a file, not a folder; give a new folder (it is made) or an empty one"
    assert notes.read_text() == "mine"


def test_a_missing_or_empty_checkpoint_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _main("generate", monkeypatch, f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'set'}")
    assert message == f"error: checkpoint not found: {tmp_path / 'missing.ckpt'}"
    (tmp_path / "empty.ckpt").write_bytes(b"")
    message = _main("export", monkeypatch, f"ckpt={tmp_path / 'empty.ckpt'}", f"out={tmp_path / 'export'}")
    assert message.startswith(f"error: {tmp_path / 'empty.ckpt'} is not a DermSynth checkpoint") and "\n" not in message


def test_a_full_disk_deep_in_a_library_is_named(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    def full_disk(self, fp, *args, **kwargs):  # noqa: ANN001 - Image.save's own signature
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))
        except OSError as cause:
            raise RuntimeError("encoder error -9 when writing image file") from cause  # what a library makes of it

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "set"
    message = _main("generate", monkeypatch, f"ckpt={checkpoint}", f"out={out}", "num_images=2", "progress=false")
    assert message.startswith(f"error: no space left on device writing {out / '00000.png'}")
    assert "\n" not in message


def test_a_library_error_keeps_its_traceback() -> None:
    try:
        json.loads("{")  # a ValueError raised inside the standard library: a bug somewhere, not a named input
    except ValueError as error:
        assert input_error_message(error) is None
    try:
        raise ValueError("data.root=/x: no such folder")
    except ValueError as error:
        assert input_error_message(error) == "data.root=/x: no such folder"


def test_a_run_refused_while_loading_its_data_leaves_no_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "unlabelled", count=30, size=16)  # no label column: one class
    output_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run", *smoke_overrides(output_dir, "ddpm_class", "logger=none"), "data=folder",
         f"data.root={root}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "unknown" in result.stderr.splitlines()[-1]
    assert not output_dir.exists()  # Hydra made it for the job; the refused run takes it away again


def test_more_sampling_steps_than_noise_levels_are_refused_before_writing(checkpoint: Path, tmp_path: Path) -> None:
    from experiments.compose import compose_config
    from experiments.generate import generate

    out = tmp_path / "set"
    with pytest.raises(ValueError, match=r"^sampler.steps=5000: the model has 1000 noise levels"):
        generate(compose_config("generate", [f"ckpt={checkpoint}", f"out={out}", "sampler.steps=5000", "progress=false"]))
    assert not out.exists()
