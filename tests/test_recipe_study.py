"""The recipe study driver: its queue (what is done is skipped), its summary page and plot, and a tiny study end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.compose import compose_config
from experiments.recipe_study import plan
from experiments.recipe_study_summary import END, START, write_summary

REPO = Path(__file__).resolve().parents[1]


def study(tmp_path: Path, *overrides: str):
    return compose_config("recipe_study", ["data_root=/data/ham", f"out={tmp_path / 'study'}", f"docs={tmp_path / 'page'}", *overrides])


def fake_metrics(fid: float, cpu_s: float, steps: int) -> dict:
    return {
        "fid": fid, "recall": 0.05, "train_steps": steps, "num_generated": 512, "eval_split": "val",
        "intervals": {"fid": [fid - 3, fid + 3], "recall": [0.03, 0.07]}, "floor": {"fid": 35.7},
        "cond_accuracy": {"balanced": {"diagnosis_balanced": {"accuracy": 0.3, "interval": [0.26, 0.34], "ceiling": 0.56}}},
        "provenance": {"training": {"train_cpu_s": cpu_s, "steps": steps}},
    }


def test_the_queue_trains_each_candidate_to_its_marks_and_evaluates_each_mark(tmp_path: Path) -> None:
    jobs = plan(study(tmp_path, "candidates=[default,flow]"))
    assert [(j.kind, j.candidate) for j in jobs] == [("train", "default"), ("evaluate", "default"), ("evaluate", "default"),
                                                     ("train", "flow"), ("evaluate", "flow"), ("evaluate", "flow")]
    train = jobs[0].argv
    assert train[1:3] == ["-m", "experiments.run"] and {"exp=ddpm_class", "recipe=default", "data.root=/data/ham", "data.image_size=64",
        "data.sampler=balanced", "data.sampler_temperature=0.5", "data.num_workers=0", "trainer.max_steps=-1",
        "callbacks.cpu_budget.minutes=[10,40]", f"paths.output_dir={tmp_path / 'study' / 'default'}"} <= set(train)
    evaluate = jobs[1].argv
    assert evaluate[1:3] == ["-m", "experiments.evaluate"] and {
        f"ckpt={tmp_path / 'study' / 'default' / 'checkpoints' / 'cpu_010min.ckpt'}", "eval.split=val", "eval.num_generated=512",
        "eval.balanced.num_generated=512", f"out={tmp_path / 'study' / 'default' / 'eval' / 'cpu_010min'}"} <= set(evaluate)
    assert "OMP_NUM_THREADS=1" in jobs[0].shell() and "'callbacks.cpu_budget.minutes=[10,40]'" in jobs[0].shell()
    assert not any(j.done for j in jobs)
    # finished parts are skipped; an interrupted evaluation starts again over its own folder
    checkpoints = tmp_path / "study" / "default" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "cpu_040min.ckpt").write_bytes(b"")
    (tmp_path / "study" / "default" / "eval" / "cpu_010min").mkdir(parents=True)
    (tmp_path / "study" / "default" / "eval" / "cpu_010min" / "metrics.json").write_text("{}")
    (tmp_path / "study" / "default" / "eval" / "cpu_040min").mkdir(parents=True)
    jobs = plan(study(tmp_path, "candidates=[default,flow]"))
    assert [j.done for j in jobs] == [True, True, False, False, False, False]
    assert "overwrite=true" in jobs[2].argv and "overwrite=true" not in jobs[4].argv


def test_the_queue_refuses_unknown_candidates_and_bad_marks(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown candidate.*'fast'"):
        plan(study(tmp_path, "candidates=[default,fast]"))
    with pytest.raises(SystemExit, match="ascending positive"):
        plan(study(tmp_path, "marks=[40,10]"))


def test_the_summary_fills_the_results_section_and_draws_the_plot(tmp_path: Path) -> None:
    out, docs = tmp_path / "study", tmp_path / "recipe_study"
    for candidate, fids in (("default", (140.0, 120.0)), ("flow", (130.0, 100.0))):
        for mark, fid in zip((10, 40), fids):
            folder = out / candidate / "eval" / f"cpu_{mark:03d}min"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps(fake_metrics(fid, 60.0 * mark + 5, 30 * mark)))
    docs.with_suffix(".md").write_text(f"# Recipe study\n\nhow it is run\n\n{START}\nold\n{END}\n\nnotes after\n")
    page, image = write_summary(out, ["default", "flow", "edm"], [10, 40], docs, "python -m experiments.recipe_study")
    text = page.read_text()
    assert "how it is run" in text and "notes after" in text and "old" not in text
    assert "| flow | 40 | 1200 | 2.004 | 100.0 [97.0, 103.0] | 35.7 | 0.050 [0.030, 0.070] | 0.300 [0.260, 0.340] | 0.560 |" in text
    assert text.count(START) == 1 and "edm" not in text.split(START)[1]  # not evaluated yet: no row
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_summary(out, ["default", "flow"], [10, 40], docs, "again")  # rerun: the section is replaced, not added
    assert page.read_text().count(START) == 1 and "again" in page.read_text()
    assert write_summary(tmp_path / "empty", ["default"], [10], tmp_path / "none", "x") is None


def hydra_list(*items: str) -> str:
    return "[" + ",".join(f"'{item}'" for item in items) + "]"


@pytest.mark.slow
def test_a_tiny_study_runs_end_to_end(tmp_path: Path) -> None:
    """One candidate, two CPU marks of a few seconds, on the phantom at the smoke budget: train, evaluate, summarise."""
    args = [
        sys.executable, "-m", "experiments.recipe_study", "data_root=null", "candidates=[edm]", "marks=[0.02,0.04]", "run=true",
        f"out={tmp_path / 'study'}", f"docs={tmp_path / 'page'}", f"python={sys.executable}",
        "train=" + hydra_list("data=phantom", "budget=smoke", "data.num_workers=0", "trainer.max_steps=-1", "trainer.max_time=null",
                              "logger=csv", "model.warmup_steps=2"),
        "evaluate=" + hydra_list("eval.split=val", "eval.num_generated=16"),
    ]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for mark in ("cpu_0.02min", "cpu_0.04min"):
        metrics = json.loads((tmp_path / "study" / "edm" / "eval" / mark / "metrics.json").read_text())
        assert metrics["fid"] is not None and metrics["provenance"]["training"]["train_cpu_s"] > 0
    assert torch.load(tmp_path / "study" / "edm" / "checkpoints" / "cpu_0.04min.ckpt", weights_only=True)["cpu_clock"]["marks_done"] == [0.02, 0.04]
    assert "| edm | 0.04 |" in (tmp_path / "page.md").read_text() and (tmp_path / "page.png").is_file()
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True)  # everything done: nothing runs again
    assert again.returncode == 0 and "3 of 3 jobs done" in again.stdout
