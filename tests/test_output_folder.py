"""One write rule for every command: new, empty or its own earlier output (replaced only with overwrite=true)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.output_folder import check_output_folder, clear_output_folder, prepare_output_folder, write_manifest


def _own_output(folder: Path, command: str) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.bin").write_text("old")
    (folder / "report.txt").write_text("old")
    write_manifest(folder, command, ["sub", "report.txt"])


@pytest.mark.parametrize("command", ["generate", "export", "evaluate", "run"])
def test_the_write_rule_matrix(command: str, tmp_path: Path) -> None:
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for folder in (new, empty):
        for overwrite in (False, True):
            assert check_output_folder(folder, command, overwrite=overwrite) == []

    own = tmp_path / "own"
    _own_output(own, command)
    with pytest.raises(ValueError, match=f"earlier experiments.{command} output.*overwrite=true"):
        check_output_folder(own, command, overwrite=False)
    entries = check_output_folder(own, command, overwrite=True)
    assert entries == ["report.txt", "sub", f"{command}.json"]
    prepare_output_folder(own, command, ["new.txt"], overwrite=True)
    assert sorted(p.name for p in own.iterdir()) == [f"{command}.json"]

    user = tmp_path / "user"
    user.mkdir()
    (user / "README.md").write_text("mine")
    mixed = tmp_path / "mixed"
    _own_output(mixed, command)
    (mixed / "NOTICE").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=f"did not write"):
            check_output_folder(user, command, overwrite=overwrite)
        with pytest.raises(ValueError, match="NOTICE.*nothing was deleted"):
            check_output_folder(mixed, command, overwrite=overwrite)
    assert (user / "README.md").read_text() == "mine" and (mixed / "NOTICE").read_text() == "mine"
    with pytest.raises(ValueError, match="besides"):
        check_output_folder(mixed, command, overwrite=True)  # another command's manifest is not this one's

    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_folder(a_file, command, overwrite=True)


def test_another_commands_output_is_not_this_ones(tmp_path: Path) -> None:
    _own_output(tmp_path / "gen", "generate")
    with pytest.raises(ValueError, match="did not write"):
        check_output_folder(tmp_path / "gen", "export", overwrite=True)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="a read-only folder does not stop root")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            check_output_folder(folder, "export", overwrite=False)
    finally:
        folder.chmod(0o700)


def test_a_manifest_naming_paths_outside_its_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "export.json").write_text('{"files": ["../elsewhere"]}')
    with pytest.raises(ValueError, match="outside its folder"):
        check_output_folder(tmp_path / "out", "export", overwrite=True)
    assert clear_output_folder(tmp_path / "out", []) == tmp_path / "out"


def test_export_leaves_a_users_folder_alone(tmp_path: Path) -> None:
    from experiments.compose import compose_config
    from experiments.export import export
    from tests.helpers import untrained_checkpoint

    ckpt = untrained_checkpoint(tmp_path / "ddpm.ckpt", "ddpm")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "README.md").write_text("my readme")
    (user / "NOTICE").write_text("my notice")
    for extra in ([], ["overwrite=true"]):
        with pytest.raises(ValueError, match="did not write"):
            export(compose_config("export", [f"ckpt={ckpt}", f"out={user}", *extra]))
    assert (user / "README.md").read_text() == "my readme" and (user / "NOTICE").read_text() == "my notice"
    out = tmp_path / "export"
    export(compose_config("export", [f"ckpt={ckpt}", f"out={out}"]))
    assert (out / "unet").is_dir() and (out / "export.json").is_file()
    with pytest.raises(ValueError, match="overwrite=true"):
        export(compose_config("export", [f"ckpt={ckpt}", f"out={out}"]))
    export(compose_config("export", [f"ckpt={ckpt}", f"out={out}", "overwrite=true"]))
    assert (out / "unet").is_dir()


def test_run_refuses_a_folder_that_is_not_a_run_folder(tmp_path: Path) -> None:
    from experiments.run import run
    from tests.helpers import compose_config, smoke_overrides

    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.yaml").write_text("my: config\n")
    (user / "metrics.json").write_text('{"mine": true}')
    with pytest.raises(ValueError, match="paths.output_dir=.*did not write"):
        run(compose_config(*smoke_overrides(user, "ddpm")))
    assert (user / "config.yaml").read_text() == "my: config\n" and (user / "metrics.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in user.iterdir()) == ["config.yaml", "metrics.json"]


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_non_finite_or_negative_guidance_is_refused_naming_the_key(value: str, tmp_path: Path) -> None:
    from experiments.compose import compose_config
    from experiments.evaluate import evaluate
    from experiments.generate import generate

    out = tmp_path / "set"
    with pytest.raises(ValueError, match=rf"^guidance_scale={value}: must be a finite number >= 0"):
        generate(compose_config("generate", ["ckpt=missing.ckpt", f"out={out}", f"guidance_scale={value}"]))
    with pytest.raises(ValueError, match=rf"^model.guidance.scale={value}: must be a finite number >= 0"):
        evaluate(compose_config("evaluate", ["ckpt=missing.ckpt", f"model.guidance.scale={value}"]), ["ckpt=missing.ckpt", f"model.guidance.scale={value}"])
    with pytest.raises(ValueError, match=r"^sampler.steps=0: must be a positive integer"):
        generate(compose_config("generate", ["ckpt=missing.ckpt", f"out={out}", "sampler.steps=0"]))
    assert not out.exists()


def test_a_nan_learning_rate_fails_before_the_run_folder_exists(tmp_path: Path) -> None:
    from experiments.run import run
    from tests.helpers import compose_config, smoke_overrides

    with pytest.raises(ValueError, match=r"model.optimizer.lr=nan: must be a finite number > 0"):
        run(compose_config(*smoke_overrides(tmp_path / "run", "ddpm", "model.optimizer.lr=nan")))
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_does_not_decide_where_files_go(tmp_path: Path, session_cache: Path) -> None:
    import torch

    from experiments.compose import checkpoint_config, compose_config
    from experiments.evaluate import OWN_KEYS, evaluate
    from tests.helpers import untrained_checkpoint
    from tests.test_data_sources import make_folder

    elsewhere = tmp_path / "someone_elses_cache"
    ckpt = untrained_checkpoint(tmp_path / "shared.ckpt", "ddpm", f"paths.cache_dir={elsewhere}")
    stored = torch.load(ckpt, weights_only=True)["dermsynth_config"]
    assert stored["eval"]["cache_dir"] == str(elsewhere) and stored["data"]["cache_dir"] == str(elsewhere)
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))  # the checkpoint's own making cached its data there
    args = [f"ckpt={ckpt}", f"out={tmp_path / 'eval'}", "eval.num_generated=8", "eval.balanced.num_generated=0", "eval.heldout.num_generated=0"]
    evaluate(compose_config("evaluate", args), args)
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before  # judges and features went to this user's cache
    config = checkpoint_config(stored, [], "evaluate", OWN_KEYS)
    assert config.eval.cache_dir == config.data.cache_dir == str(session_cache)

    root = make_folder(tmp_path / "images", count=40, size=16, labels=["a", "b"])
    folder_ckpt = untrained_checkpoint(tmp_path / "folder.ckpt", "ddpm", "data=folder", f"data.root={root}")
    folder_stored = torch.load(folder_ckpt, weights_only=True)["dermsynth_config"]
    with pytest.raises(ValueError, match=rf"data was read from data.root={root}; .* give data.root=DIR"):
        checkpoint_config(folder_stored, [], "evaluate", OWN_KEYS)
    assert checkpoint_config(folder_stored, [f"data.root={root}"], "evaluate", OWN_KEYS).data.root == str(root)


def test_damaged_checkpoints_fail_in_one_line(tmp_path: Path) -> None:
    import torch

    from models.checkpoint import load_generator
    from tests.helpers import untrained_checkpoint

    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.ckpt is not a DermSynth checkpoint loadable with weights_only=True"):
        load_generator(empty)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="garbage.ckpt is not a DermSynth checkpoint"):
        load_generator(garbage)
    good = untrained_checkpoint(tmp_path / "good.ckpt", "ddpm")
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["data_info"] = {"source": "phantom"}  # the rest of the vocabulary lost
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    with pytest.raises(ValueError, match="damaged.ckpt: its data_info is damaged"):
        load_generator(tmp_path / "damaged.ckpt")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="a read-only folder does not stop root")
def test_a_new_folder_under_a_read_only_one_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            check_output_folder(folder / "new" / "deeper", "export", overwrite=False)
    finally:
        folder.chmod(0o700)


def test_an_interrupted_write_of_its_own_is_its_own(tmp_path: Path) -> None:
    _own_output(tmp_path / "out", "export")
    (tmp_path / "out" / ".report.txt.k2x_9q0a.tmp").write_text("left by a kill mid-write")
    assert check_output_folder(tmp_path / "out", "export", overwrite=True) == [
        ".report.txt.k2x_9q0a.tmp", "report.txt", "sub", "export.json"]
    (tmp_path / "out" / ".notes.txt.k2x_9q0a.tmp").write_text("a temporary of something else")
    with pytest.raises(ValueError, match="notes.txt"):
        check_output_folder(tmp_path / "out", "export", overwrite=True)


# ---- the run folder: resume=auto continues its own; a fresh run there follows the rule ------------


def _run_folder(folder: Path, manifest: bool = True, checkpoint: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("exp_name: ddpm\n")
    (folder / "checkpoints").mkdir()
    if checkpoint:
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    if manifest:
        from experiments.checks import RUN_ENTRIES

        write_manifest(folder, "run", RUN_ENTRIES, complete=False)


def test_a_run_resumes_its_own_folder_and_a_fresh_run_there_follows_the_rule(tmp_path: Path) -> None:
    from experiments.checks import earlier_run
    from tests.helpers import compose_config

    def config(*extra: str):
        return compose_config("exp=ddpm", "budget=smoke", *extra)

    _run_folder(tmp_path / "own")
    assert earlier_run(config(), tmp_path / "own") == []  # resume=auto continues it: nothing cleared
    _run_folder(tmp_path / "legacy", manifest=False)
    assert earlier_run(config(), tmp_path / "legacy") == []  # a run folder from before run.json resumes too
    with pytest.raises(ValueError, match=r"holds an earlier run, which this run does not continue \(resume=never\).*overwrite=true"):
        earlier_run(config("resume=never"), tmp_path / "own")
    assert earlier_run(config("resume=never", "overwrite=true"), tmp_path / "own") == [
        "checkpoints", "config.yaml", "eval", "logs", "metrics.json", "samples", "wandb", "run.json"]
    _run_folder(tmp_path / "interrupted", checkpoint=False)  # stopped before its first checkpoint: nothing to resume
    (tmp_path / "interrupted" / "run.log").write_text("Hydra's log of this very job")
    with pytest.raises(ValueError, match="no checkpoints/last.ckpt to resume from"):
        earlier_run(config(), tmp_path / "interrupted")
    assert "run.log" not in earlier_run(config("overwrite=true"), tmp_path / "interrupted")  # the job's open log goes on
    (tmp_path / "legacy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        earlier_run(config("resume=never", "overwrite=true"), tmp_path / "legacy")


def test_a_fresh_run_replaces_its_own_earlier_run_only_with_overwrite(tmp_path: Path) -> None:
    import json

    import torch

    from experiments.run import run
    from tests.helpers import compose_config, smoke_overrides

    folder = tmp_path / "run"
    _run_folder(folder, checkpoint=False)
    (folder / "samples").mkdir()
    (folder / "samples" / "step_40.png").write_bytes(b"a grid of the earlier run")
    with pytest.raises(ValueError, match="overwrite=true"):
        run(compose_config(*smoke_overrides(folder, "ddpm", "logger=none")))
    assert (folder / "samples" / "step_40.png").is_file()
    metrics = run(compose_config(*smoke_overrides(folder, "ddpm", "logger=none", "overwrite=true")))
    assert metrics["train_steps"] == 2 and json.loads((folder / "run.json").read_text())["complete"]
    assert not (folder / "samples" / "step_40.png").exists()  # no grid of the earlier run beside the new ones
    resumed = run(compose_config(*smoke_overrides(folder, "ddpm", "logger=none", "trainer.max_steps=3")))  # resume=auto
    assert resumed["train_steps"] == 3
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 3


def test_the_run_command_refuses_a_users_folder_in_one_line_before_hydra_writes_its_log(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import smoke_overrides

    user = tmp_path / "results"
    user.mkdir()
    (user / "config.yaml").write_text("my: config\n")
    (user / "metrics.json").write_text('{"mine": true}')
    result = subprocess.run([sys.executable, "-m", "experiments.run", *smoke_overrides(user, "ddpm", "logger=none")],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode != 0 and "experiments.run did not write" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in user.iterdir()) == ["config.yaml", "metrics.json"]  # not even Hydra's run.log


def test_evaluate_two_folders_never_writes_into_a_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from experiments.compose import compose_config
    from experiments.evaluate import evaluate
    from tests.test_data_sources import make_folder

    real, fake = make_folder(tmp_path / "real", count=6, size=16), make_folder(tmp_path / "fake", count=6, size=16)
    before = sorted(p.name for p in fake.iterdir())
    monkeypatch.setattr("experiments.evaluate.build_feature_extractor", lambda name, judge: _PixelFeatures())
    args = [f"real={real}", f"fake={fake}", "eval.kid_subset_size=4", "eval.pr_neighborhood=2"]
    evaluate(compose_config("evaluate", args), args)
    assert sorted(p.name for p in fake.iterdir()) == before  # the generated set stays a clean data set
    written = sorted(tmp_path.glob("fake_eval_*"))
    assert len(written) == 1 and json.loads((written[0] / "metrics.json").read_text())["num_generated"] == 6
    with pytest.raises(ValueError, match="did not write"):
        out = [*args, f"out={real}", "overwrite=true"]
        evaluate(compose_config("evaluate", out), out)


class _PixelFeatures:
    """A stand-in feature network: the image's pixels (the folder rule is under test, not the features)."""

    name = "pixels"

    def __call__(self, images):
        return images.flatten(1)[:, :16].float()

    def provenance(self) -> dict:
        return {"name": self.name}


def test_a_full_disk_says_so_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import shutil
    from collections import namedtuple

    import torch

    from datamodules.atomic import atomic_path, write_text_atomic

    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):  # noqa: ANN001 - open's own signature
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(".tmp"):
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return handle

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(OSError, match=rf"no space left on device writing {tmp_path / 'a.txt'}"):
        write_text_atomic(tmp_path / "a.txt", "x")
    monkeypatch.setattr("builtins.open", real_open)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))

    def torch_writer_failure(obj, path):  # noqa: ANN001 - torch.save's failure on a full disk carries no errno
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", torch_writer_failure)
    with pytest.raises(OSError, match=r"no space left on device writing .*last.ckpt \(0 bytes free there\)"):
        with atomic_path(tmp_path / "last.ckpt") as temp:
            torch.save({}, temp)
    assert not list(tmp_path.glob(".*.tmp"))
