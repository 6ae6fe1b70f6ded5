"""The downstream benchmark in report.md: tables of ``downstream.json`` and the plot of Δ balanced accuracy vs real fraction.

Every cell of a table is ``mean ± std over seeds [interval]``: the interval of a figure covers the
training seeds and the test images (``evaluation.downstream_metrics.seed_and_test_interval``); a Δ is
paired by seed and by test image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.downstream_summary import REFERENCES  # noqa: E402

DASH = "—"
FIGURES = (("balanced acc.", "balanced_accuracy"), ("macro-F1", "macro_f1"), ("AUROC", "auroc"))


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Per fraction, Δ balanced accuracy of every arm against each reference arm: mean and interval."""
    out: dict[str, Any] = {}
    for fraction, arms in summary.items():
        out[fraction] = {
            f"{arm} - {reference}": {k: block[f"delta_vs_{reference}"]["balanced_accuracy"][k] for k in ("mean", "interval")}
            for arm, block in arms.items() for reference in REFERENCES if f"delta_vs_{reference}" in block
        }
    return out


def read_downstream(path: Path) -> dict[str, Any] | None:
    """A downstream.json of ``experiments.augment`` (None for files of another layout)."""
    results = json.loads(path.read_text())
    return results if isinstance(results, dict) and "protocol" in results and "summary" in results else None


def stat_cell(stats: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """``mean ± std [low, high]`` of a seed-and-test block (signed: a difference, shown with its sign)."""
    if not stats or stats.get("mean") is None:
        return DASH
    sign = "+" if signed else ""
    text = f"{stats['mean']:{sign}.{digits}f}"
    if stats.get("seeds", 0) > 1:
        text += f" ± {stats['std']:.{digits}f}"
    if stats.get("interval"):
        low, high = stats["interval"]
        text += f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"
    return text


def section_lines(results: dict[str, Any], where: str, plot: str | None) -> list[str]:
    """The report.md section of one downstream.json: protocol, figures per fraction and arm, per-class recall."""
    protocol, summary = results["protocol"], results["summary"]
    classifier = protocol["classifier"]
    lines = [
        f"## Downstream: {results['data']} at {results['image_size']} px (`{where}`)", "",
        f"Classifier `{classifier['arch']}` (pretrained: {classifier['pretrained']}), {classifier['steps']} steps of "
        f"{classifier['batch_size']} in every arm; {len(protocol['seeds'])} seeds; N = {protocol['num_synthetic']} synthetic "
        f"images ({protocol['mixing']}); {protocol['selection']}; test split n = {results['test']['n']}. Cells: mean ± std over "
        f"seeds [{protocol['bootstrap']['level']:.0%} interval over seeds and test images]; Δ paired by seed and image.", "",
        "| real fraction | arm | " + " | ".join(title for title, _ in FIGURES) + " | Δ bal. acc. vs real | Δ bal. acc. vs real_balanced |",
        "|---|---|" + "---|" * (len(FIGURES) + 2),
    ]
    for fraction, arms in summary.items():
        for arm, block in arms.items():
            deltas = [stat_cell((block.get(f"delta_vs_{ref}") or {}).get("balanced_accuracy"), signed=True) for ref in REFERENCES]
            lines.append(f"| {fraction} | {arm} | " + " | ".join(stat_cell(block.get(key)) for _, key in FIGURES) + " | " + " | ".join(deltas) + " |")
    classes = results["class_names"]
    lines += ["", "Recall per class (test n per class: " + ", ".join(f"{c} {n}" for c, n in zip(classes, results["test"]["class_counts"])) + "):", "",
              "| real fraction | arm | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for fraction, arms in summary.items():
        for arm, block in arms.items():
            lines.append(f"| {fraction} | {arm} | " + " | ".join(stat_cell(block["recall"].get(c), 2) for c in classes) + " |")
    if plot:
        lines += ["", f"![Δ balanced accuracy vs real fraction]({plot})"]
    return lines


def plot_deltas(results: dict[str, Any], path: Path) -> Path:
    """Δ balanced accuracy against ``real`` and ``real_balanced`` vs the real fraction: a line per arm, interval bars."""
    summary = results["summary"]
    figure, axes = plt.subplots(1, len(REFERENCES), figsize=(5 * len(REFERENCES), 3.6), sharey=True)
    every_arm = sorted({arm for block in summary.values() for arm in block})
    colours = {arm: f"C{index}" for index, arm in enumerate(every_arm)}  # an arm keeps its colour in both panels
    for axis, reference in zip(axes, REFERENCES):
        arms = sorted({arm for block in summary.values() for arm, entry in block.items() if f"delta_vs_{reference}" in entry})
        for offset, arm in enumerate(arms):
            points = [(float(f), entry[arm][f"delta_vs_{reference}"]["balanced_accuracy"]) for f, entry in summary.items()
                      if arm in entry and f"delta_vs_{reference}" in entry[arm]]
            points = [(f, s) for f, s in points if s.get("mean") is not None]
            if not points:
                continue
            shift = 1 + 0.03 * (offset - (len(arms) - 1) / 2)  # side by side on the log axis, so bars do not hide each other
            xs, means = [f * shift for f, _ in points], [s["mean"] for _, s in points]
            errors = [[m - s["interval"][0] for m, (_, s) in zip(means, points)], [s["interval"][1] - m for m, (_, s) in zip(means, points)]]
            axis.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=arm, color=colours[arm])
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        fractions = sorted(float(f) for f in summary)
        axis.set_xticks(fractions, [f"{f:g}" for f in fractions])
        axis.minorticks_off()
        axis.set_xlabel("real fraction of the training split")
        axis.set_title(f"Δ balanced accuracy vs {reference}")
        if arms:
            axis.legend(fontsize=7)
    axes[0].set_ylabel("Δ balanced accuracy (test)")
    figure.suptitle(f"{results['data']}, {results['image_size']} px, {len(results['protocol']['seeds'])} seeds", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def downstream_sections(root: Path, plot_dir: Path) -> list[str]:
    """Sections and plots for every downstream.json below ``root`` (empty list when there is none)."""
    lines: list[str] = []
    for index, path in enumerate(sorted(root.rglob("downstream.json")), start=1):
        results = read_downstream(path)
        if results is None:
            continue
        plot = plot_deltas(results, plot_dir / f"downstream_{index}.png")
        lines += ["", *section_lines(results, str(path.parent.relative_to(root)), f"plots/{plot.name}")]
    return lines
