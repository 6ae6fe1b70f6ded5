"""experiments.augment end to end on tiny phantom configs: generators per fraction, refusal, resume, downstream.json, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import experiments.augment
from experiments.augment import augment
from experiments.compose import compose_config
from experiments.report import build_report
from tests.helpers import untrained_checkpoint

TINY = ["budget=smoke", "data.image_size=8", "progress=false", "seeds=[0,1]", "num_synthetic=9", "bootstrap.resamples=40",
        "classifier.arch=test_resnet", "classifier.pretrained=false", "classifier.steps=4", "classifier.batch_size=8",
        "classifier.eval_points=2", "classifier.num_val=16", "classifier.accelerator=cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained class-conditional generators (8 px smoke data): one on half the training split, one on all of it."""
    folder = tmp_path_factory.mktemp("generators")
    return {name: untrained_checkpoint(folder / f"{name}.ckpt", "ddpm_class", "model.sampler.steps=2", f"data.train_fraction={fraction}")
            for name, fraction in (("half", 0.5), ("whole", 1.0))}


def _given(out: Path, syn: Path, syn_class: Path, *extra: str) -> list[str]:
    return [*TINY, f"out={out}", "train_generators=false", "real_fractions=[0.5]",
            f"generators.syn.checkpoints={{0.5: {syn}}}", f"generators.syn_class.checkpoints={{0.5: {syn_class}}}", *extra]


def _run(overrides: list[str]) -> dict:
    return augment(compose_config("augment", overrides), overrides)


def _count(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls = []
    original = getattr(experiments.augment, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(experiments.augment, name, counted)
    return calls


def test_a_generator_that_saw_more_than_the_arm_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    overrides = _given(tmp_path / "out", checkpoints["whole"], checkpoints["half"], "arms=[real+syn]")
    with pytest.raises(ValueError, match=r"real_fraction=0.5 .*saw more training images \(data.train_fraction=1\)"):
        _run(overrides)
    assert not list((tmp_path / "out").rglob("seed*.json"))  # refused before any classifier of that arm
    missing = [*TINY, f"out={tmp_path / 'other'}", "train_generators=false", "real_fractions=[0.25]", "arms=[syn]",
               f"generators.syn.checkpoints={{0.5: {checkpoints['half']}}}"]
    with pytest.raises(ValueError, match=r"generators.syn.checkpoints\[0.25\]"):
        _run(missing)


def test_cells_resume_and_feed_the_report(checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    trainings, draws = _count(monkeypatch, "train_and_test"), _count(monkeypatch, "synthetic_images")
    first = _run(_given(out, checkpoints["half"], checkpoints["half"]))
    assert (len(trainings), len(draws)) == (10, 2)  # 5 arms x 2 seeds; one synthetic set per generator kind
    assert {cell["steps"] for cell in first["cells"]} == {4} and {cell["images_seen"] for cell in first["cells"]} == {32}
    assert first["protocol"]["classifier"]["steps"] == 4 and first["protocol"]["num_synthetic"] == 9
    assert first["generators"]["syn"]["0.5"]["checkpoint"] == str(checkpoints["half"])

    second = _run(_given(out, checkpoints["half"], checkpoints["half"]))
    assert (len(trainings), len(draws)) == (10, 2)  # every cell finished: nothing trained or drawn again
    assert second["summary"] == first["summary"]
    (out / "cells" / "f0.5" / "real+syn" / "seed1.json").unlink()
    third = _run(_given(out, checkpoints["half"], checkpoints["half"]))
    assert (len(trainings), len(draws)) == (11, 2)  # only the missing cell; its synthetic set read back from disk
    assert third["summary"] == first["summary"]  # the retrained cell reproduces itself
    with pytest.raises(ValueError, match="computed under other settings"):
        _run(_given(out, checkpoints["half"], checkpoints["half"], "classifier.steps=5"))

    written = json.loads((out / "downstream.json").read_text())
    delta = written["summary"]["0.5"]["real+syn"]["delta_vs_real_balanced"]["balanced_accuracy"]
    assert delta["seeds"] == 2 and delta["interval"][0] <= delta["mean"] <= delta["interval"][1]
    assert (out / "downstream_delta_balanced_accuracy.png").stat().st_size > 1000
    report = build_report(out).read_text()
    assert "## Downstream: phantom at 8 px" in report and "Δ bal. acc. vs real_balanced" in report
    row = next(line for line in report.splitlines() if line.startswith("| 0.5 | real+syn |"))
    assert row.count("[") == 5  # three figures and two deltas, each with its interval
    assert (out / "plots" / "downstream_1.png").stat().st_size > 1000 and "plots/downstream_1.png" in report


def test_generators_are_trained_on_the_fraction_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [*TINY, f"out={tmp_path}", "real_fractions=[0.5]", "seeds=[0]", "arms=[real+syn,real+syn_class]", "generators.steps=2"]
    results = _run(overrides)
    for exp in ("hybrid", "ddpm_class"):
        checkpoint = torch.load(tmp_path / "generators" / f"{exp}_f0.5" / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 2 and checkpoint["dermsynth_config"]["data"]["train_fraction"] == 0.5
        assert checkpoint["data_info"]["fingerprint"] == results["data_fingerprints"]["0.5"]
    import experiments.run

    monkeypatch.setattr(experiments.run, "run", lambda cfg: pytest.fail("a finished generator was trained again"))
    (tmp_path / "cells" / "f0.5" / "real+syn" / "seed0.json").unlink()
    (tmp_path / "synthetic" / "syn_f0.5.npz").unlink()  # the set is drawn again from the kept generator
    assert _run(overrides)["summary"] == results["summary"]


def test_the_same_command_runs_on_a_labelled_folder(tmp_path: Path) -> None:
    from tests.test_data_sources import make_folder

    root = make_folder(tmp_path / "photos", count=60, size=24, labels=["nv", "mel", "bcc"])
    overrides = [*TINY, "data=folder", f"data.root={root}", "data.image_size=16", f"out={tmp_path / 'out'}",
                 "real_fractions=[0.5]", "seeds=[0]", "generators.steps=2"]
    results = _run(overrides)
    assert results["data"] == "folder" and sorted(results["class_names"]) == ["bcc", "mel", "nv"]
    assert {cell["arm"] for cell in results["cells"]} == {"real", "real_balanced", "real+syn", "real+syn_class", "syn"}
    assert set(results["summary"]["0.5"]["real+syn"]["recall"]) == {"bcc", "mel", "nv"}


def test_a_users_folder_is_never_written(checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "downstream.json").write_text('{"mine": true}')
    trainings = _count(monkeypatch, "train_and_test")
    for extra in ([], ["overwrite=true"], ["resume=never", "overwrite=true"]):
        with pytest.raises(ValueError, match="did not write"):
            _run(_given(user, checkpoints["half"], checkpoints["half"], "arms=[real]", *extra))
    assert sorted(p.name for p in user.iterdir()) == ["downstream.json"] and not trainings  # refused before any training
    out = tmp_path / "out"
    _run(_given(out, checkpoints["half"], checkpoints["half"], "arms=[real]", "seeds=[0]"))
    assert json.loads((out / "augment.json").read_text())["complete"]
    with pytest.raises(ValueError, match="overwrite=true"):
        _run(_given(out, checkpoints["half"], checkpoints["half"], "arms=[real]", "seeds=[0]", "resume=never"))
    (out / "cells" / "stale.json").write_text("{}")
    _run(_given(out, checkpoints["half"], checkpoints["half"], "arms=[real]", "seeds=[0]", "resume=never", "overwrite=true"))
    assert not (out / "cells" / "stale.json").exists() and len(trainings) == 2  # started afresh
