"""The reader study: a blinded, shuffled set with its key apart, and scores a reader's sheet by hand's numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from evaluation.reader_study import score_responses
from experiments.export_reader_study import main as export_main
from experiments.run import run
from tests.helpers import compose_config, smoke_overrides


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_export_is_blinded_shuffled_and_keyed_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(compose_config(*smoke_overrides(tmp_path / "run", "ddpm_class", "trainer.max_steps=2")))
    out = tmp_path / "study"
    monkeypatch.setattr("sys.argv", ["export_reader_study", f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", f"out={out}",
                                     "num_real=10", "num_synthetic=10", "split=val", "display_size=32"])
    export_main()
    key = _rows(tmp_path / "study-answer-key" / "answers.csv")
    files = sorted(p.name for p in (out / "images").iterdir())
    assert files == [f"case_{i:04d}.png" for i in range(1, 21)] and sorted(r["file"] for r in key) == files
    assert sorted(p.name for p in out.iterdir()) == ["NOTICE", "README.md", "export_reader_study.json", "images", "responses.csv"]
    assert [r["source"] for r in key].count("real") == 10 and [r["source"] for r in key].count("synthetic") == 10
    sources = [r["source"] for r in sorted(key, key=lambda r: r["file"])]
    assert sources != sorted(sources) and sources != sorted(sources, reverse=True)  # not in blocks
    sheet = _rows(out / "responses.csv")
    assert [r["file"] for r in sheet] == files and all(not r["real_or_synthetic"] for r in sheet)
    assert all(len(row) == 4 and not any(row[c] for c in ("real_or_synthetic", "diagnosis", "confidence")) for row in sheet)
    assert not (out / "answers.csv").exists() and (out / "NOTICE").is_file() and (out / "README.md").is_file()
    with pytest.raises(SystemExit, match="^error: out=.* holds an earlier experiments.export_reader_study output"):
        export_main()  # one line, not a traceback


def test_scores_match_hand_computed_figures(tmp_path: Path) -> None:
    key, responses = tmp_path / "answers.csv", tmp_path / "responses.csv"
    key.write_text("file,source,diagnosis,caption,origin\n"
                   "a.png,real,mel,c,o\nb.png,real,nv,c,o\nc.png,synthetic,mel,c,o\nd.png,synthetic,bcc,c,o\ne.png,synthetic,nv,c,o\n")
    responses.write_text("file,real_or_synthetic,diagnosis,confidence\n"
                         "a.png,real,mel,4\nb.png,synthetic,nv,2\nc.png,Synthetic,nv,3\nd.png,real,bcc,1\ne.png,,,\n")
    scores = score_responses(key, responses)
    assert scores["answered"] == 4 and scores["skipped"] == 1
    assert scores["real_vs_synthetic_accuracy"]["value"] == pytest.approx(2 / 4)  # a and c right, b and d wrong
    # Wilson at 95 %: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96: 2 of 4 -> 0.1500, 0.8500
    assert scores["real_vs_synthetic_accuracy"]["interval"] == pytest.approx([0.15004, 0.84996], abs=1e-4)
    assert scores["real_called_real"]["interval"] == pytest.approx([0.09453, 0.90547], abs=1e-4)  # 1 of 2
    assert scores["synthetic_called_synthetic"]["value"] == pytest.approx(1 / 2) and scores["real_called_real"]["value"] == pytest.approx(1 / 2)
    agreement = scores["diagnosis_agreement"]
    assert agreement["real"]["all"]["value"] == 1.0 and agreement["synthetic"]["all"]["value"] == pytest.approx(1 / 2)
    assert agreement["synthetic"]["per_diagnosis"]["mel"]["value"] == 0.0 and agreement["synthetic"]["per_diagnosis"]["bcc"]["value"] == 1.0
    responses.write_text("file,real_or_synthetic,diagnosis,confidence\nz.png,real,,\n")
    with pytest.raises(ValueError, match="row 2: file 'z.png' is not in the answer key"):
        score_responses(key, responses)
    responses.write_text("file,real_or_synthetic,diagnosis,confidence\na.png,maybe,,\n")
    with pytest.raises(ValueError, match="row 2: real_or_synthetic must be"):
        score_responses(key, responses)
    responses.write_text("file,real_or_synthetic,diagnosis,confidence\na.png,real,,sure\n")
    with pytest.raises(ValueError, match="row 2: confidence must be 1 to 5"):
        score_responses(key, responses)
