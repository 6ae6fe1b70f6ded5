"""The comparison table of every run under a folder: report.md, report.csv and plots/.

    python -m experiments.report runs/

Reads every ``metrics.json`` below the folder (a runs folder or a Hydra sweep), groups runs by
``exp`` and gives mean ± std over seeds, in the form of the paper's Table 2. "—" marks figures a
model cannot have. The floor (FD between the real validation and test splits) heads the table so
a reader sees what "close to real" means. ``downstream.json`` files written by
``experiments.augment`` beside a run's metrics.json add the downstream gain.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from omegaconf import DictConfig, OmegaConf  # noqa: E402

from evaluation.schema import read_metrics_json  # noqa: E402
from experiments.command import command  # noqa: E402

DASH = "—"
# (column title, how to read the figure from a run, digits)
COLUMNS: list[tuple[str, str, int]] = [
    ("FD", "fid", 2),
    ("KID ×10³", "kid_mean_x1000", 2),
    ("IS", "is_mean", 2),
    ("SSIM", "ssim", 3),
    ("PSNR (dB)", "psnr", 2),
    ("precision", "precision", 3),
    ("recall", "recall", 3),
    ("cond. acc.", "cond_accuracy_mean", 3),
    ("copy rate", "copy_rate", 3),
    ("worst tone FD", "worst_tone_fd", 2),
    ("downstream Δacc (pp)", "downstream_gain_pp", 2),
    ("train time (s)", "train_time_s", 0),
    ("s / image", "sample_time_s_per_image", 4),
    ("NFE", "nfe", 0),
]


def figures_of(run_dir: Path, metrics: dict[str, Any]) -> dict[str, float | None]:
    """The table's figures for one run (flattening the nested metrics.json entries)."""
    def nested(key: str, *path: str) -> float | None:
        value: Any = metrics.get(key)
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    figures = {key: nested(key) for _, key, _ in COLUMNS if key in metrics}
    figures["kid_mean_x1000"] = None if metrics.get("kid_mean") is None else 1000 * metrics["kid_mean"]
    figures["cond_accuracy_mean"] = nested("cond_accuracy", "mean")
    figures["copy_rate"] = nested("memorization", "feature", "copy_rate")
    figures["worst_tone_fd"] = nested("per_skin_tone", "worst_fid")
    downstream = run_dir / "downstream.json"
    gain = json.loads(downstream.read_text()).get("summary", {}).get("delta_accuracy_mean") if downstream.is_file() else None
    figures["downstream_gain_pp"] = None if gain is None else 100 * gain
    return figures


def collect_runs(root: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        metrics = read_metrics_json(path)
        details_path = path.parent / "eval" / "details.json"
        details = json.loads(details_path.read_text()) if details_path.is_file() else {}
        runs.append({
            "dir": path.parent, "metrics": metrics, "figures": figures_of(path.parent, metrics),
            "details": details, "ablation": ablation_of(path.parent),
        })
    return runs


def ablation_of(run_dir: Path) -> str | None:
    """The ablation study a run belongs to (``ablation:`` in its config.yaml), or None."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    study = OmegaConf.load(config).get("ablation")
    return None if study is None else str(study)


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return None, None, 0
    mean = sum(known) / len(known)
    std = math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1)) if len(known) > 1 else 0.0
    return mean, std, len(known)


def cell(mean: float | None, std: float | None, count: int, digits: int) -> str:
    if mean is None:
        return DASH
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if count > 1 else f"{mean:.{digits}f}"


def group_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``exp``: mean ± std of every column over its runs (seeds)."""
    by_exp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_exp[str(run["metrics"].get("exp") or run["dir"].name)].append(run)
    rows = []
    for exp, group in sorted(by_exp.items()):
        row = {"exp": exp, "seeds": sorted({r["metrics"].get("seed") for r in group}, key=str), "runs": len(group)}
        for _, key, _ in COLUMNS:
            row[key] = mean_std([r["figures"].get(key) for r in group])
        row["feature_extractor"] = sorted({str(r["metrics"].get("feature_extractor")) for r in group})
        rows.append(row)
    return rows


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| exp | seeds | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [cell(*row[key], digits) for _, key, digits in COLUMNS]
        lines.append(f"| {row['exp']} | {','.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    return lines


def build_report(root: str | Path) -> Path:
    """Write ``report.md``, ``report.csv`` and ``plots/`` under ``root``; return the report.md path."""
    root = Path(root)
    runs = collect_runs(root)
    if not runs:
        raise FileNotFoundError(f"no metrics.json under {root}")
    rows = group_rows([r for r in runs if r["ablation"] is None] or runs)
    extractors = sorted({e for row in rows for e in row["feature_extractor"]})
    floors = [r["details"]["fd_floor"]["fid"] for r in runs if isinstance(r["details"].get("fd_floor"), dict)]
    floor = mean_std(floors)
    at_n = [(r["details"]["fd_floor"]["fid_at_num_generated"], r["details"]["fd_floor"]["num_generated"]) for r in runs
            if isinstance(r["details"].get("fd_floor"), dict) and "fid_at_num_generated" in r["details"]["fd_floor"]]
    sizes = sorted({n for _, n in at_n})
    floor_at_n = (
        f" With {sizes[0]} real images, as many as each run generated: **{cell(*mean_std([f for f, _ in at_n]), 2)}**"
        " (FD is biased upward at small n)." if len(sizes) == 1 else ""
    )
    lines = [
        f"# DermSynth comparison ({len(runs)} runs, {len(rows)} experiments)",
        "",
        f"Feature space of FD/KID/precision/recall: {', '.join(f'`{e}`' for e in extractors)}"
        + (" — **mixed: FD values across these do not compare**" if len(extractors) > 1 else "") + ".",
        f"Floor (FD real validation vs real test, same features): **{cell(*floor, 2)}** — no model can be expected to go below it." + floor_at_n,
        "Mean ± std over seeds; — = the model cannot have this figure. Cond. acc. is judged by the domain classifier"
        " and only means something beside its FD.",
        "",
        *table_lines(rows),
    ]
    studies = sorted({r["ablation"] for r in runs if r["ablation"] is not None})
    for study in studies:
        lines += ["", f"## Ablation: {study}", "", *table_lines(group_rows([r for r in runs if r["ablation"] == study]))]
    rows = group_rows(runs)
    plot_dir = root / "plots"
    plots = make_plots(rows, runs, plot_dir)
    lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n")

    with open(root / "report.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["exp", "runs", "seeds", "feature_extractor"] + [f"{k}_{s}" for _, k, _ in COLUMNS for s in ("mean", "std")])
        for row in rows:
            values = [v for _, k, _ in COLUMNS for v in row[k][:2]]
            writer.writerow([row["exp"], row["runs"], " ".join(map(str, row["seeds"])), " ".join(row["feature_extractor"])]
                            + ["" if v is None else v for v in values])
    return report


def make_plots(rows: list[dict[str, Any]], runs: list[dict[str, Any]], plot_dir: Path) -> list[Path]:
    """A bar chart per metric (error bars = std over seeds), FD vs training steps, FD vs sampler steps (NFE)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for title, key, _ in COLUMNS:
        present = [(row["exp"], row[key][0], row[key][1]) for row in rows if row[key][0] is not None]
        if not present:
            continue
        figure, axis = plt.subplots(figsize=(1.2 + 0.9 * len(present), 3.2))
        axis.bar([p[0] for p in present], [p[1] for p in present], yerr=[p[2] for p in present], capsize=4, color="#4c72b0")
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=30)
        written.append(_save(figure, plot_dir / f"bar_{key}.png"))
    for x_key, name, label in (("train_steps", "fd_vs_train_steps", "training steps"), ("nfe", "fd_vs_sampler_steps", "sampler steps (NFE)")):
        figure, axis = plt.subplots(figsize=(5, 3.5))
        by_exp: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for run in runs:
            m = run["metrics"]
            if m.get(x_key) is not None and m.get("fid") is not None:
                by_exp[str(m.get("exp"))].append((m[x_key], m["fid"]))
        curves = _val_fd_curves(runs) if x_key == "train_steps" else {}
        palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        colour = {exp: palette[k % len(palette)] for k, exp in enumerate(sorted(set(by_exp) | set(curves)))}  # one per exp
        for exp, points in sorted(by_exp.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour[exp], label=exp)
        for exp, points in sorted(curves.items()):
            axis.plot([p[0] for p in points], [p[1] for p in points], alpha=0.5, linestyle="--", color=colour[exp], label=f"{exp} (val/fd)")
        axis.set_xlabel(label)
        axis.set_ylabel("FD")
        if by_exp:
            axis.legend(fontsize=7)
        written.append(_save(figure, plot_dir / f"{name}.png"))
    return written


def _val_fd_curves(runs: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``val/fd`` logged during training (CSV logs), first run per exp."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        exp = str(run["metrics"].get("exp"))
        for path in sorted((run["dir"] / "logs").rglob("metrics.csv")) if exp not in curves else []:
            with open(path) as stream:
                points = [(float(r["step"]), float(r["val/fd"])) for r in csv.DictReader(stream) if r.get("val/fd")]
            if points:
                curves[exp] = points
    return curves


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


@command("report", positional="root")
def main(cfg: DictConfig) -> None:
    print(build_report(cfg.root))


if __name__ == "__main__":
    main()
