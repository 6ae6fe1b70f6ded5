"""The comparison tables of every run under a folder: report.md, report.csv and plots/.

    python -m experiments.report runs/

Reads every ``metrics.json`` below the folder (runs, Hydra sweeps, ``eval/<name>/`` re-evaluations)
and groups them by a comparability key: data fingerprint, feature extractor, evaluation split,
number of generated samples, judge and budget. Figures from different keys do not compare (another
feature space, another real set, another n), so each key gets its own table, headed by the key,
and nothing is ever averaged across keys. Within a table, one row per ``exp``: the mean over its
runs (training seeds) ± their standard deviation, and in brackets the mean of the runs' 95%
bootstrap intervals. The floor (real-vs-real at the same n) stands beside every table. "—" marks
figures a model cannot have. Runs of one ``exp`` whose configs differ in more than the training seed (an
override such as ``model.conditioner.fusion.enabled=false``, or a re-evaluation's settings) are rows of their
own, labelled by what sets them apart. Each ``downstream.json`` of ``experiments.augment`` below the folder adds a
downstream section (``experiments.report_downstream``) with its plot of Δ balanced accuracy vs real fraction.

``page=docs/results/NAME.md`` also writes the report as a results page: the command that made it, the
provenance of every run folder (commit, data fingerprint, judge, split, n, steps) and the per-diagnosis
figures, with its plots beside it, so the docs' tables come from runs and not from hand typing.
"""

from __future__ import annotations

import csv
import logging
import math
import shlex
import shutil
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
from experiments.report_downstream import downstream_sections  # noqa: E402
from experiments.report_tone import tone_lines  # noqa: E402

log = logging.getLogger(__name__)
DASH = "—"
KEY_FIELDS = ("data_fingerprint", "feature_extractor", "eval_split", "num_generated", "judge", "budget")
# (column title, figure key, interval key in metrics.json intervals (or None), digits, scale)
COLUMNS: list[tuple[str, str, str | None, int, float]] = [
    ("FID", "fid", "fid", 2, 1.0),
    ("FD domain", "fd_domain", "fd_domain", 3, 1.0),
    ("KID ×10³", "kid_mean", "kid_mean", 2, 1000.0),
    ("precision", "precision", "precision", 3, 1.0),
    ("recall", "recall", "recall", 3, 1.0),
    ("SSIM", "ssim", None, 3, 1.0),
    ("PSNR (dB)", "psnr", None, 2, 1.0),
    ("diagnosis acc.", "diagnosis", "cond_accuracy.diagnosis", 3, 1.0),
    ("diagnosis bal. acc. (balanced prompts)", "diagnosis_balanced", "cond_accuracy.balanced.diagnosis_balanced", 3, 1.0),
    ("visual acc.", "mean_visual", "cond_accuracy.mean_visual", 3, 1.0),
    ("copy rate", "copy_rate", None, 3, 1.0),
    ("worst tone FD", "worst_tone_fd", None, 2, 1.0),
    ("tone-following acc.", "tone_following", "tone_following", 3, 1.0),
    ("train time (s)", "train_time_s", None, 0, 1.0),
    ("s / image", "sample_time_s_per_image", None, 4, 1.0),
    ("NFE", "nfe", None, 0, 1.0),
]


def comparability_key(metrics: dict[str, Any]) -> tuple[Any, ...]:
    """What must be equal for two runs' figures to compare (``KEY_FIELDS``, in order)."""
    provenance = metrics.get("provenance") or {}
    judge = provenance.get("judge") or (metrics.get("cond_accuracy") or {}).get("judge")
    budget = (provenance.get("eval") or {}).get("budget")
    return (provenance.get("data_fingerprint"), metrics.get("feature_extractor"), metrics.get("eval_split"),
            metrics.get("num_generated"), judge, budget)


def describe_key(key: tuple[Any, ...]) -> str:
    return ", ".join(f"{name} `{value}`" for name, value in zip(KEY_FIELDS, key))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def figures_of(run_dir: Path, metrics: dict[str, Any]) -> dict[str, tuple[float | None, list[float] | None]]:
    """Each column's (value, interval) for one run, scaled for display."""
    cond = metrics.get("cond_accuracy") or {}
    memorization = metrics.get("memorization") or {}
    values = {
        **{key: metrics.get(key) for _, key, _, _, _ in COLUMNS if key in metrics},
        "diagnosis": cond.get("diagnosis"), "mean_visual": cond.get("mean_visual", cond.get("mean")),
        "diagnosis_balanced": ((cond.get("balanced") or {}).get("diagnosis_balanced") or {}).get("accuracy"),
        "copy_rate": memorization.get("copy_rate", (memorization.get("feature") or {}).get("copy_rate")),
        "worst_tone_fd": (metrics.get("per_skin_tone") or {}).get("worst_fid"),
        "tone_following": ((metrics.get("per_skin_tone") or {}).get("tone_following") or {}).get("accuracy"),
    }
    intervals = metrics.get("intervals") or {}
    out = {}
    for _, key, interval_key, _, scale in COLUMNS:
        value = _number(values.get(key))
        interval = intervals.get(interval_key) if interval_key else None
        out[key] = (None if value is None else value * scale, None if not interval else [v * scale for v in interval])
    return out


def collect_runs(root: Path, select: str = "**/metrics.json") -> list[dict[str, Any]]:
    runs = []
    for path in sorted(root.glob(select)):
        try:
            metrics = read_metrics_json(path)
            if not isinstance(metrics.get("provenance"), (dict, type(None))):
                raise ValueError("provenance is not an object")
        except (OSError, ValueError, TypeError, AttributeError) as error:
            log.warning("report: skipped %s, which is not a readable metrics.json (%s)", path, error)
            continue
        runs.append({
            "dir": path.parent, "metrics": metrics, "figures": figures_of(path.parent, metrics),
            "ablation": ablation_of(path.parent), "key": comparability_key(metrics), "settings": settings_of(path.parent, metrics),
        })
    label_variants(runs)
    return runs


# Config keys that never make two runs different experiments: seeds, paths, bookkeeping, provenance.
NOT_A_VARIANT = ("seed", "data.seed", "callbacks.samples.seed", "paths.", "provenance.", "resume", "overwrite", "tags", "logger.",
                 "hydra.", "trainer.max_time", "memory_estimate", "callbacks.", "cache_dir", "data.cache_dir",
                 "eval.cache_dir", "model.conditioner.text_encoder.cache_dir", "data.num_workers", "trainer.enable_progress_bar")
# Re-evaluation overrides that only say where to read and write.
NOT_AN_EVAL_VARIANT = ("ckpt", "out", "overwrite")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: str(node)}


def settings_of(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved config (flattened, without seeds and bookkeeping) and a re-evaluation's overrides."""
    evaluation = run_dir.parent.name == "eval"
    config = (run_dir.parent.parent if evaluation else run_dir) / "config.yaml"
    flat = _flatten(OmegaConf.to_container(OmegaConf.load(config), resolve=False)) if config.is_file() else {}
    settings = {k: v for k, v in flat.items() if not any(k == n or k.startswith(n) for n in NOT_A_VARIANT)}
    if evaluation:
        for override in (metrics.get("provenance") or {}).get("overrides") or []:
            key, _, value = str(override).lstrip("+~").partition("=")
            if key not in NOT_AN_EVAL_VARIANT:
                settings[f"evaluate {key}"] = value
    return settings


def label_variants(runs: list[dict[str, Any]]) -> None:
    """``variant``: the settings in which a run differs from other runs of its exp (empty when none)."""
    by_exp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_exp[str(run["metrics"].get("exp") or run["dir"].name)].append(run)
    for group in by_exp.values():
        keys = set().union(*(run["settings"] for run in group))
        differing = sorted(k for k in keys if len({run["settings"].get(k) for run in group}) > 1)
        for run in group:
            run["variant"] = ", ".join(f"{k}={run['settings'].get(k)}" for k in differing)


def ablation_of(run_dir: Path) -> str | None:
    """The ablation study a run belongs to (``ablation:`` in its config.yaml; a re-evaluation's is its run's), or None."""
    if run_dir.parent.name == "eval":  # <run>/eval/<name>/: an experiments.evaluate folder
        run_dir = run_dir.parent.parent
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


def cell(stats: dict[str, Any], digits: int) -> str:
    """``mean ± std [low, high]`` (± only over several runs, brackets only with intervals)."""
    mean, std, count = stats["value"]
    if mean is None:
        return DASH
    text = f"{mean:.{digits}f} ± {std:.{digits}f}" if count > 1 else f"{mean:.{digits}f}"
    low, high = stats["interval"]
    return text + (f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else "")


def group_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``exp`` over runs that share one comparability key; mixed keys are refused."""
    keys = {run["key"] for run in runs}
    if len(keys) > 1:
        raise ValueError(f"runs with different comparability keys cannot be averaged: {sorted(map(str, keys))}")
    by_exp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        name = str(run["metrics"].get("exp") or run["dir"].name)
        by_exp[f"{name} ({run['variant']})" if run.get("variant") else name].append(run)
    for name, group in list(by_exp.items()):
        cut = [r for r in group if ((r["metrics"].get("provenance") or {}).get("training") or {}).get("stopped_by") == "max_time"]
        if cut:  # a wall-clock cap, not the step budget, ended these runs: say so in the row's name
            by_exp[f"{name} [{len(cut)} of {len(group)} run(s) cut short by trainer.max_time]"] = by_exp.pop(name)
    rows = []
    for exp, group in sorted(by_exp.items()):
        row: dict[str, Any] = {"exp": exp, "seeds": sorted({r["metrics"].get("seed") for r in group}, key=str), "runs": len(group)}
        for _, key, _, _, _ in COLUMNS:
            intervals = [r["figures"][key][1] for r in group if r["figures"][key][1] is not None]
            row[key] = {
                "value": mean_std([r["figures"][key][0] for r in group]),
                "interval": (mean_std([i[0] for i in intervals])[0], mean_std([i[1] for i in intervals])[0]) if intervals else (None, None),
            }
        rows.append(row)
    return rows


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| exp | seeds | " + " | ".join(title for title, *_ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [cell(row[key], digits) for _, key, _, digits, _ in COLUMNS]
        lines.append(f"| {row['exp']} | {','.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    return lines


def floor_line(runs: list[dict[str, Any]]) -> str:
    """The real-vs-real floor of a group (the runs' own ``floor`` entries, which share the real set and n)."""
    floors = [r["metrics"]["floor"] for r in runs if isinstance(r["metrics"].get("floor"), dict)]
    if not floors:
        return "Floor: not recorded by these runs."
    parts = []
    for title, key, _, digits, scale in COLUMNS[:5]:
        values = [f[key] * scale for f in floors if _number(f.get(key)) is not None]
        if values:
            intervals = [(f.get("intervals") or {}).get(key) for f in floors]
            known = [i for i in intervals if i]
            bracket = f" [{sum(i[0] for i in known) / len(known) * scale:.{digits}f}, {sum(i[1] for i in known) / len(known) * scale:.{digits}f}]" if known else ""
            parts.append(f"{title} {sum(values) / len(values):.{digits}f}{bracket}")
    return f"Floor ({floors[0].get('definition', 'real vs real')}): " + "; ".join(parts) + "."


def section_lines(index: int, key: tuple[Any, ...], runs: list[dict[str, Any]]) -> list[str]:
    """One comparability group: its key, its floor, the main table and one table per ablation study."""
    main = [r for r in runs if r["ablation"] is None] or runs
    lines = [f"## Table {index}: {describe_key(key)}", "", floor_line(runs), "", *table_lines(group_rows(main))]
    for study in sorted({r["ablation"] for r in runs if r["ablation"] is not None}):
        lines += ["", f"### Ablation: {study}", "", *table_lines(group_rows([r for r in runs if r["ablation"] == study]))]
    return lines


def build_report(root: str | Path, select: str = "**/metrics.json", page: str | Path | None = None, title: str | None = None) -> Path:
    """Write ``report.md``, ``report.csv`` and ``plots/`` under ``root`` (and the results ``page``); return report.md's path."""
    root = Path(root)
    runs = collect_runs(root, select)
    plot_dir = root / "plots"
    downstream = downstream_sections(root, plot_dir)
    if not runs and not downstream:
        raise FileNotFoundError(f"no metrics.json or downstream.json under {root}")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run["key"]].append(run)
    ordered = sorted(groups.items(), key=lambda item: str(item[0]))
    lines = [
        f"# DermSynth comparison ({len(runs)} runs, {len(ordered)} comparable group{'s' if len(ordered) > 1 else ''})",
        "",
        "Runs compare only within a table: each table shares the data, feature extractor, evaluation split, number of "
        "samples, judge and budget named in its heading. Cells: mean ± std over runs (training seeds), then the mean 95% "
        "bootstrap interval in brackets (basic bootstrap: it targets the population value, so for FD, biased upward at "
        "small n, it lies below the point value). — = the model cannot have this figure. The floor is real images against "
        "real images at the same n: no model is expected to beat it.",
    ]
    plots: list[Path] = []
    for index, (key, group) in enumerate(ordered, start=1):
        lines += ["", *section_lines(index, key, group)]
        suffix = "" if len(ordered) == 1 else f"_table{index}"
        plots += make_plots(group_rows([r for r in group if r["ablation"] is None] or group), group, plot_dir, suffix)
    tones = tone_lines(runs)
    lines += ["", *tones] if tones else []
    lines += downstream
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_csv(root / "report.csv", ordered)
    if page is not None:
        write_page(Path(page), title or root.name, lines, runs, plots)
    return report


def provenance_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run folder: what was run, on which data and code, read on which split at which n."""
    lines = ["| run folder | exp | training seed | split | n real / generated | train steps | stopped by | commit | data fingerprint | judge |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        m, provenance = run["metrics"], run["metrics"].get("provenance") or {}
        git = provenance.get("git") or {}
        commit = str(git.get("commit") or "?")[:10] + (" (dirty)" if git.get("dirty") else "")
        exp = str(m.get("exp")) + (f" ({run['variant']})" if run.get("variant") else "")
        lines.append(
            f"| `{run['dir']}` | {exp} | {m.get('seed')} | {m.get('eval_split')} | {m.get('num_real')} / {m.get('num_generated')} | "
            f"{m.get('train_steps')} | {(provenance.get('training') or {}).get('stopped_by', DASH)} | {commit} | "
            f"{str(provenance.get('data_fingerprint'))[:12]} | {provenance.get('judge') or DASH} |"
        )
    return lines


def per_class_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The judge's reading of each prompted diagnosis on the class-balanced prompt set, Wilson intervals, per run."""
    tables = [(run, ((run["metrics"].get("cond_accuracy") or {}).get("balanced") or {}).get("per_class") or {}) for run in runs]
    tables = [(run, table) for run, table in tables if table]
    if not tables:
        return []
    classes = sorted({name for _, table in tables for name in table})
    lines = ["## Per diagnosis, class-balanced prompts", "",
             "The judge's reading of each prompted diagnosis (accuracy [95 % Wilson interval], n prompts).", "",
             "| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for run, table in tables:
        cells = []
        for name in classes:
            entry = table.get(name) or {}
            accuracy, interval = _number(entry.get("accuracy")), entry.get("interval")
            bracket = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
            cells.append(DASH if accuracy is None else f"{accuracy:.2f}{bracket} ({entry.get('n')})")
        lines.append(f"| {run['metrics'].get('exp')} {run.get('variant') or ''} seed {run['metrics'].get('seed')} | " + " | ".join(cells) + " |")
    return lines


def write_page(page: Path, title: str, report_lines: list[str], runs: list[dict[str, Any]], plots: list[Path]) -> None:
    """The report as a results page under docs/: the command, each run's provenance, the tables, the plots."""
    page.parent.mkdir(parents=True, exist_ok=True)
    plot_dir = page.parent / page.stem
    if plots:
        plot_dir.mkdir(exist_ok=True)
        for plot in plots:
            shutil.copyfile(plot, plot_dir / plot.name)
    body = [line.replace("](plots/", f"]({page.stem}/") for line in report_lines[1:]]
    made_by = "python -m experiments.report " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"# {title}", "", f"Written by `{made_by}` from {len(runs)} evaluation folders; do not edit by hand.", "",
             "## Runs", "", *provenance_lines(runs), "", *body, "", *per_class_lines(runs)]
    page.write_text("\n".join(lines).rstrip() + "\n")


def write_csv(path: Path, groups: list[tuple[tuple[Any, ...], list[dict[str, Any]]]]) -> None:
    """One row per (comparability key, exp): the key's fields, then mean, std, interval bounds per column."""
    stats = ("mean", "std", "low", "high")
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([*KEY_FIELDS, "exp", "ablation", "runs", "seeds"] + [f"{k}_{s}" for _, k, *_ in COLUMNS for s in stats])
        for key, runs in groups:
            for study in sorted({r["ablation"] for r in runs}, key=str):
                for row in group_rows([r for r in runs if r["ablation"] == study]):
                    values = [v for _, k, *_ in COLUMNS for v in (*row[k]["value"][:2], *row[k]["interval"])]
                    writer.writerow([*key, row["exp"], study or "", row["runs"], " ".join(map(str, row["seeds"]))]
                                    + ["" if v is None else v for v in values])


def make_plots(rows: list[dict[str, Any]], runs: list[dict[str, Any]], plot_dir: Path, suffix: str) -> list[Path]:
    """A bar chart per metric (error bars: the mean interval), FD vs training steps, FD vs sampler steps (NFE)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for title, key, *_ in COLUMNS:
        present = [(row["exp"], row[key]) for row in rows if row[key]["value"][0] is not None]
        if not present:
            continue
        figure, axis = plt.subplots(figsize=(1.2 + 0.9 * len(present), 3.2))
        means = [stats["value"][0] for _, stats in present]
        errors = [[max(0.0, m - (s["interval"][0] if s["interval"][0] is not None else m)) for m, (_, s) in zip(means, present)],
                  [max(0.0, (s["interval"][1] if s["interval"][1] is not None else m) - m) for m, (_, s) in zip(means, present)]]
        axis.bar([exp for exp, _ in present], means, yerr=errors, capsize=4, color="#4c72b0")
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=30)
        written.append(_save(figure, plot_dir / f"bar_{key}{suffix}.png"))
    for x_key, name, label in (("train_steps", "fd_vs_train_steps", "training steps"), ("nfe", "fd_vs_sampler_steps", "sampler steps (NFE)")):
        figure, axis = plt.subplots(figsize=(5, 3.5))
        by_exp: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for run in runs:
            m = run["metrics"]
            if m.get(x_key) is not None and m.get("fid") is not None:
                by_exp[str(m.get("exp"))].append((m[x_key], m["fid"]))
        for exp, points in sorted(by_exp.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=exp)
        if x_key == "train_steps":
            for exp, points in sorted(_val_fd_curves(runs).items()):  # val/fd may sit in another feature space
                axis.plot([p[0] for p in points], [p[1] for p in points], alpha=0.5, linestyle="--", label=f"{exp} (val/fd)")
        axis.set_xlabel(label)
        axis.set_ylabel("FID")
        if by_exp:
            axis.legend(fontsize=7)
        written.append(_save(figure, plot_dir / f"{name}{suffix}.png"))
    return written


def _val_fd_curves(runs: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``val/fd`` logged during training (CSV logs), first run per exp."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        exp = str(run["metrics"].get("exp"))
        for path in sorted((run["dir"] / "logs").rglob("metrics.csv")) if exp not in curves else []:
            with open(path) as stream:
                logged = [(float(r["step"]), float(r["val/fd"])) for r in csv.DictReader(stream) if r.get("val/fd")]
            # Lightning repeats a step metric at every logging step until the epoch ends: keep each value's first row.
            points = [p for i, p in enumerate(logged) if i == 0 or p[1] != logged[i - 1][1]]
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
    print(build_report(cfg.root, cfg.select, cfg.page, cfg.title))


if __name__ == "__main__":
    main()
