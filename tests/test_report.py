"""The report: one table per comparability key, mean ± std over seeds per exp with intervals, the floor, csv and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from evaluation.schema import METRIC_KEYS, empty_metrics, write_metrics_json
from experiments.report import build_report, collect_runs, group_rows


def _run(root: Path, exp: str, seed: int, fid: float, ssim: float | None, cond: float | None, extractor: str = "inception-v3-compat",
         folder: str | None = None) -> Path:
    metrics = empty_metrics()
    metrics.update(
        exp=exp, data="phantom", image_size=32, seed=seed, eval_split="val", num_real=100, num_generated=100,
        feature_extractor=extractor, fid=fid, fd_domain=0.1 * fid, kid_mean=0.01 * fid, kid_std=0.001, precision=0.5, recall=0.4,
        ssim=ssim, psnr=None if ssim is None else 20.0,
        cond_accuracy=None if cond is None else {"diagnosis": cond, "mean_visual": cond, "judge": "test_resnet-abc"},
        memorization={"copy_rate": 0.0}, per_skin_tone={"worst_fid": fid + 1}, train_steps=100 * (seed + 1),
        train_time_s=60.0, sample_time_s_per_image=0.01, nfe=50,
        intervals={"fid": [fid - 1, fid + 1], "cond_accuracy.diagnosis": None if cond is None else [cond - 0.05, cond + 0.05]},
        floor={"fid": 0.5, "kid_mean": 0.0, "precision": 0.9, "recall": 0.9, "intervals": {"fid": [0.0, 1.5]},
               "definition": "100 real test images against the 100 real val images"},
        provenance={"git": {}, "versions": {}, "data_fingerprint": "abc123", "judge": "test_resnet-abc", "feature_extractors": [],
                    "checkpoint": None, "eval": {"budget": "quick"}, "overrides": [], "setup": {}},
    )
    metrics["nulls"].update({key: "the model cannot have it" for key in METRIC_KEYS if metrics[key] is None})
    run_dir = root / exp / (folder or f"run_{seed}")
    write_metrics_json(run_dir / "metrics.json", metrics)
    return run_dir


def test_report_table_csv_and_plots(tmp_path: Path) -> None:
    _run(tmp_path, "hybrid", 0, fid=10.0, ssim=0.5, cond=0.8)
    _run(tmp_path, "hybrid", 1, fid=14.0, ssim=0.7, cond=0.6)
    _run(tmp_path, "gan", 0, fid=30.0, ssim=None, cond=None)
    (tmp_path / "hybrid" / "run_0" / "downstream.json").write_text(json.dumps({"summary": {"delta_accuracy_mean": 0.05}}))  # an old layout: ignored
    report = build_report(tmp_path).read_text()
    hybrid = next(line for line in report.splitlines() if line.startswith("| hybrid"))
    gan = next(line for line in report.splitlines() if line.startswith("| gan"))
    assert "12.00 ± 2.83 [11.00, 13.00]" in hybrid  # FD mean ± sample std over the two seeds, mean interval
    assert "0.600 ± 0.141" in hybrid  # SSIM
    assert "0.700 ± 0.141 [0.650, 0.750]" in hybrid  # diagnosis accuracy with its interval
    cells = [c.strip() for c in gan.split("|")[1:-1]]
    assert cells[0] == "gan" and cells[2] == "30.00 [29.00, 31.00]"
    assert cells[2 + 5] == "—" and cells[2 + 7] == "—" and cells[2 + 8] == "—"  # SSIM and cond. acc. the GAN cannot have
    assert "## Downstream" not in report  # downstream.json of experiments.augment: tests/test_augment_command.py
    assert report.count("## Table") == 1 and "eval_split `val`" in report and "feature_extractor `inception-v3-compat`" in report
    assert "Floor (100 real test images against the 100 real val images): FID 0.50 [0.00, 1.50]" in report
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert {r["exp"] for r in rows} == {"hybrid", "gan"}
    assert float(next(r for r in rows if r["exp"] == "hybrid")["fid_mean"]) == pytest.approx(12.0)
    assert next(r for r in rows if r["exp"] == "gan")["ssim_mean"] == ""
    for name in ("bar_fid.png", "fd_vs_train_steps.png", "fd_vs_sampler_steps.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_report_never_averages_across_comparability_keys(tmp_path: Path) -> None:
    _run(tmp_path, "hybrid", 0, fid=10.0, ssim=0.5, cond=0.8)
    _run(tmp_path, "hybrid", 1, fid=14.0, ssim=0.7, cond=0.6, extractor="domain:test_resnet-abc")
    runs = collect_runs(tmp_path)
    with pytest.raises(ValueError, match="different comparability keys cannot be averaged"):
        group_rows(runs)
    report = build_report(tmp_path).read_text()
    assert report.count("## Table") == 2 and "±" not in "".join(l for l in report.splitlines() if l.startswith("| hybrid"))
    first, second = report.split("## Table 2")
    assert "10.00 [9.00, 11.00]" in first + second and "14.00 [13.00, 15.00]" in first + second
    assert "12.00" not in report  # no mean over the two feature spaces
    assert (tmp_path / "plots" / "bar_fid_table1.png").is_file() and (tmp_path / "plots" / "bar_fid_table2.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert sorted(r["feature_extractor"] for r in rows) == ["domain:test_resnet-abc", "inception-v3-compat"]


def test_report_without_runs_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        build_report(tmp_path)


def test_ablation_runs_get_their_own_table(tmp_path: Path) -> None:
    _run(tmp_path, "hybrid", 0, fid=10.0, ssim=0.5, cond=0.8)
    for enabled, fid in (("True", 9.0), ("False", 11.0)):
        exp = f"ablation-fusion-{enabled}"
        _run(tmp_path, exp, 0, fid=fid, ssim=0.5, cond=0.7)
        (tmp_path / exp / "run_0" / "config.yaml").write_text("ablation: fusion\n")
    report = build_report(tmp_path).read_text()
    main_table, ablation_table = report.split("### Ablation: fusion")
    assert "| hybrid" in main_table and "ablation-fusion" not in main_table
    assert "| ablation-fusion-True | 0 | 9.00" in ablation_table
    assert "| ablation-fusion-False | 0 | 11.00" in ablation_table


def test_val_fd_curve_keeps_one_point_per_computation(tmp_path: Path) -> None:
    from experiments.report import _val_fd_curves

    logs = tmp_path / "run" / "logs" / "csv"
    logs.mkdir(parents=True)
    rows = [(9, ""), (19, "5.0"), (29, "5.0"), (39, "5.0"), (49, "4.0"), (59, "4.0"), (69, "")]  # as Lightning writes them
    with open(logs / "metrics.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["step", "val/fd"])
        writer.writerows(rows)
    curves = _val_fd_curves([{"dir": tmp_path / "run", "metrics": {"exp": "hybrid"}}])
    assert curves == {"hybrid": [(19.0, 5.0), (49.0, 4.0)]}


def test_runs_that_differ_in_more_than_the_seed_are_rows_of_their_own(tmp_path: Path) -> None:
    for seed in (0, 1):
        for enabled in (True, False):
            run_dir = _run(tmp_path, "hybrid", seed, fid=10.0 + 4 * enabled + seed, ssim=0.5, cond=0.8, folder=f"f{enabled}_s{seed}")
            config = {"seed": seed, "paths": {"output_dir": str(run_dir)}, "model": {"conditioner": {"fusion": {"enabled": enabled}}}}
            (run_dir / "config.yaml").write_text(json.dumps(config))
    rows = {row["exp"]: row for row in group_rows(collect_runs(tmp_path))}
    assert set(rows) == {"hybrid (model.conditioner.fusion.enabled=True)", "hybrid (model.conditioner.fusion.enabled=False)"}
    assert rows["hybrid (model.conditioner.fusion.enabled=True)"]["fid"]["value"][:2] == pytest.approx((14.5, 0.7071), abs=1e-3)
    assert rows["hybrid (model.conditioner.fusion.enabled=False)"]["seeds"] == [0, 1]


def test_results_page_names_its_command_and_every_run_folder(tmp_path: Path) -> None:
    runs, page = tmp_path / "runs", tmp_path / "docs" / "results" / "demo.md"
    first = _run(runs, "hybrid", 0, fid=10.0, ssim=0.5, cond=0.8)
    second = _run(runs, "gan", 0, fid=30.0, ssim=None, cond=None)
    build_report(runs, page=page, title="Demo results")
    text = page.read_text()
    assert text.startswith("# Demo results") and "python -m experiments.report" in text
    assert f"`{first}`" in text and f"`{second}`" in text and "| val | 100 / 100 |" in text
    assert "Floor (100 real test images" in text
    assert (page.parent / "demo" / "bar_fid.png").is_file() and "](demo/bar_fid.png)" in text
    build_report(runs, select="hybrid/*/metrics.json", page=page)
    assert f"`{second}`" not in page.read_text()


def test_a_run_cut_short_by_the_wall_clock_cap_is_marked(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, "hybrid", 0, fid=10.0, ssim=0.5, cond=0.8)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["provenance"]["training"] = {"max_steps": 5000, "steps": 3100, "stopped_by": "max_time", "max_time": "00:00:11:00"}
    write_metrics_json(run_dir / "metrics.json", metrics)
    _run(tmp_path, "hybrid", 1, fid=12.0, ssim=0.5, cond=0.8)
    (row,) = group_rows(collect_runs(tmp_path))
    assert row["exp"] == "hybrid [1 of 2 run(s) cut short by trainer.max_time]"


def test_a_malformed_metrics_json_is_skipped_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _run(tmp_path, "hybrid", 0, fid=10.0, ssim=0.5, cond=0.8)
    broken = tmp_path / "hybrid" / "broken" / "metrics.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"exp": "hybrid", "fid": ')
    listed = tmp_path / "gan" / "list" / "metrics.json"
    listed.parent.mkdir(parents=True)
    listed.write_text("[1, 2]")
    report = build_report(tmp_path).read_text()
    assert "| hybrid |" in report and "| gan" not in report
    assert str(broken) in caplog.text and str(listed) in caplog.text
