"""The recipe study's summary: a table and an FID-vs-CPU-minutes plot from the marks' evaluation folders.

Rows come from ``<out>/<candidate>/eval/cpu_<m>min/metrics.json`` (written by ``experiments.evaluate``
on the mark's checkpoint): FID with its bootstrap interval and the real-vs-real floor beside it,
recall, and the judge's balanced accuracy on class-balanced prompts with the judge's own on real
images (its ceiling). The training's CPU seconds and steps come from the checkpoint's record
(``provenance.training``). The table replaces the section between the results markers of
``<docs>.md`` (the rest of the page is kept); the plot is ``<docs>.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from callbacks.cpu_budget import mark_name  # noqa: E402
from datamodules.atomic import atomic_path, write_text_atomic  # noqa: E402

START, END = "<!-- recipe-study-results:start -->", "<!-- recipe-study-results:end -->"
DASH = "–"


def mark_row(candidate: str, mark: float, metrics: dict[str, Any]) -> dict[str, Any]:
    """The summary's figures of one evaluated mark."""
    training = (metrics.get("provenance") or {}).get("training") or {}
    intervals = metrics.get("intervals") or {}
    balanced = ((metrics.get("cond_accuracy") or {}).get("balanced") or {}).get("diagnosis_balanced") or {}
    steps, cpu_s = metrics.get("train_steps"), training.get("train_cpu_s")
    return {
        "candidate": candidate, "mark": mark, "steps": steps, "train_cpu_s": cpu_s,
        "cpu_s_per_step": cpu_s / steps if cpu_s and steps else None,
        "fid": metrics.get("fid"), "fid_interval": intervals.get("fid"), "floor_fid": (metrics.get("floor") or {}).get("fid"),
        "recall": metrics.get("recall"), "recall_interval": intervals.get("recall"),
        "balanced_accuracy": balanced.get("accuracy"), "balanced_interval": balanced.get("interval"),
        "judge_ceiling": balanced.get("ceiling"), "num_generated": metrics.get("num_generated"),
        "eval_split": metrics.get("eval_split"),
    }


def collect(out: Path, candidates: list[str], marks: list[float]) -> list[dict[str, Any]]:
    """Rows of every evaluated (candidate, mark), in the study's order."""
    rows = []
    for candidate in candidates:
        for mark in marks:
            path = out / candidate / "eval" / mark_name(mark).removesuffix(".ckpt") / "metrics.json"
            if path.is_file():
                rows.append(mark_row(candidate, mark, json.loads(path.read_text())))
    return rows


def _number(value: Any, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _with_interval(value: Any, interval: Any, digits: int) -> str:
    if value is None:
        return DASH
    if not interval or None in interval:
        return _number(value, digits)
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| recipe | CPU min (mark) | steps | CPU s / step | FID [95% CI] | floor | recall [95% CI] | balanced acc., balanced prompts [95% CI] | judge on real |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['candidate']} | {row['mark']:g} | {row['steps'] if row['steps'] is not None else DASH} | "
            f"{_number(row['cpu_s_per_step'], 3)} | {_with_interval(row['fid'], row['fid_interval'], 1)} | {_number(row['floor_fid'], 1)} | "
            f"{_with_interval(row['recall'], row['recall_interval'], 3)} | "
            f"{_with_interval(row['balanced_accuracy'], row['balanced_interval'], 3)} | {_number(row['judge_ceiling'], 3)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """FID (with its interval) against training CPU minutes, one line per recipe; the floor dashed."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for candidate in dict.fromkeys(row["candidate"] for row in rows):
        points = [r for r in rows if r["candidate"] == candidate and r["fid"] is not None]
        if not points:
            continue
        minutes = [(r["train_cpu_s"] or 60 * r["mark"]) / 60 for r in points]
        fids = [r["fid"] for r in points]
        errors = [[max(0.0, f - (r["fid_interval"] or [f, f])[0]) for f, r in zip(fids, points)],
                  [max(0.0, (r["fid_interval"] or [f, f])[1] - f) for f, r in zip(fids, points)]]
        axis.errorbar(minutes, fids, yerr=errors, marker="o", capsize=3, label=candidate)
    floors = [r["floor_fid"] for r in rows if r["floor_fid"] is not None]
    if floors:
        axis.axhline(min(floors), color="grey", linestyle="--", linewidth=1, label="floor (real vs real)")
    axis.set_xlabel("training CPU minutes (one thread)")
    axis.set_ylabel("FID (Inception, validation)")
    axis.set_title("Recipe study: FID vs training CPU time")
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=110, format="png")
    plt.close(figure)
    return path


def results_section(rows: list[dict[str, Any]], image: Path, command: str) -> str:
    split = {r["eval_split"] for r in rows} - {None}
    sizes = {r["num_generated"] for r in rows} - {None}
    return "\n".join([
        START,
        f"Written by `{command}` from {len(rows)} evaluated marks (split {', '.join(sorted(split)) or '?'}, "
        f"n = {', '.join(str(s) for s in sorted(sizes)) or '?'} samples per mark). "
        "State beside the table whether the runs had the machine to themselves.",
        "",
        table(rows),
        "",
        f"![FID vs training CPU minutes]({image.name})",
        END,
    ])


def write_summary(out: Path, candidates: list[str], marks: list[float], docs: Path, command: str) -> tuple[Path, Path] | None:
    """Write the results section of ``<docs>.md`` and the plot ``<docs>.png``; None while nothing is evaluated."""
    rows = collect(out, candidates, marks)
    if not rows:
        return None
    page, image = docs.with_suffix(".md"), docs.with_suffix(".png")
    plot(rows, image)
    section = results_section(rows, image, command)
    text = page.read_text() if page.is_file() else "# Recipe study\n"
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + section + "\n"
    write_text_atomic(page, text)
    return page, image
