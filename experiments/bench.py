"""Benchmarks, one suite per part of the pipeline; results merge into ``bench.json``.

    python -m experiments.bench data                           # one suite
    python -m experiments.bench train sample out=bench.json    # several
    python -m experiments.bench all                            # every suite, in the order below
    python -m experiments.bench all sample.ckpt=PATH train.steps=20 sample.num_images=32

Suites (each in ``experiments/bench_suites/``; its docstring says what each key measures and how):
``data`` (loader throughput vs the step's demand), ``train`` (Lightning and hybrid overhead,
text-embedding cache, speed knobs), ``sample`` (seconds and NFE per sampler, DPM-Solver++ vs
DDPM FD), ``eval`` (cold vs warm evaluation cache), ``judge`` (judge recipes compared on the
validation split), ``memory`` (peak RSS of a quick hybrid run), ``tone`` (the skin-tone reading against
the phantom's truth and ``derm-ita`` on HAM10000).

Options are ``<suite>.<key>=value`` (``sample.num_images=16 eval.num_images=1000``), composed by
Hydra from configs/bench.yaml, which lists every suite's options and their defaults; an unknown
option fails and lists the valid ones. Every suite has size options so that a test runs it in
seconds. From Python, ``run(names, options)`` also takes a plain key for every selected suite
that has it.

Each figure is a ratio measured side by side in one process, since absolute times drift on a
shared machine; the settings used sit beside the numbers (``<suite>.settings``). Results merge
into ``out`` (default ``bench.json``): a suite run again replaces its own keys, the required
keys of suites never run stay null, and ``targets`` says for each performance target whether
the figure now in the file meets it. The bench reports; it does not assert.
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments import CONFIG_DIR
from experiments.bench_suites import data, eval_cache, judge, memory, sample, tone, train
from experiments.command import command


def as_option(value: Any) -> str:
    """A YAML value as the string option the suites parse (null -> "", true -> "true", [20, 10] -> "20,10")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return ",".join(as_option(v) for v in value)
    return str(value)


def suite_options(cfg: DictConfig, name: str) -> dict[str, str]:
    return {str(key): as_option(value) for key, value in cfg[name].items()}


# Each suite's options and their defaults live in configs/bench.yaml.
DEFAULTS = OmegaConf.load(CONFIG_DIR / "bench.yaml")


@dataclass(frozen=True)
class Suite:
    """A benchmark: ``run(options) -> {"<suite>.<key>": value}`` and its options with their defaults."""

    run: Callable[[dict[str, str]], dict[str, Any]]
    options: dict[str, str]

    def __call__(self, options: dict[str, str]) -> dict[str, Any]:
        return self.run({**self.options, **options})


SUITES: dict[str, Suite] = {
    "data": Suite(data.suite, suite_options(DEFAULTS, "data")),
    "train": Suite(train.suite, suite_options(DEFAULTS, "train")),
    "sample": Suite(sample.suite, suite_options(DEFAULTS, "sample")),
    "eval": Suite(eval_cache.suite, suite_options(DEFAULTS, "eval")),
    "judge": Suite(judge.suite, suite_options(DEFAULTS, "judge")),
    "memory": Suite(memory.suite, suite_options(DEFAULTS, "memory")),
    "tone": Suite(tone.suite, suite_options(DEFAULTS, "tone")),
}

# Keys bench.json always has (null until their suite runs).
REQUIRED_KEYS = (
    "data.cache_over_decode",
    "data.loader_over_step_demand",
    "train.lightning_over_bare",
    "train.hybrid_over_ddpm",
    "train.cache_speedup",
    "train.images_per_s",
    "train.fraction_of_matmul_peak",
    "train.step_s_64px",
    "sample.nfe",
    "sample.s_per_image",
    "sample.dpm20_fd_over_ddpm1000",
    "eval.cached_over_uncached",
    "memory.quick_hybrid_peak_rss_gib",
)

# The targets: key -> (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "data.loader_over_step_demand": (">=", 5.0),
    "train.lightning_over_bare": ("<=", 1.10),
    "train.hybrid_over_ddpm": ("<=", 1.15),
    "sample.dpm20_fd_over_ddpm1000": ("<=", 1.10),
    "sample.nfe_ratio": (">=", 50.0),
    "eval.warm_real_set_passes": ("==", 0.0),
    "memory.quick_hybrid_peak_rss_gib": ("<=", 4.0),
}
COMPARISONS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}
OWN_OPTIONS = ("out",)
# Options that do not change what a figure means (the rest shrink or change the measured setting).
NEUTRAL_OPTIONS = {"ckpt", "cache_dir", "timeout", "knobs", "knob_steps", "compile", "seed", "steps", "rounds", "warmup"}


def resolve_options(name: str, options: dict[str, str]) -> dict[str, str]:
    """The options suite ``name`` sees: its defaults, then plain keys it has, then ``name.key`` ones."""
    known = SUITES[name].options
    resolved = {key: value for key, value in options.items() if key in known}
    prefix = f"{name}."
    resolved.update({key[len(prefix):]: value for key, value in options.items() if key.startswith(prefix)})
    return resolved


def check_options(names: list[str], options: dict[str, str]) -> None:
    """Fail on an option no selected suite takes, naming the valid ones."""
    for key in options:
        suite, _, rest = key.partition(".")
        if key in OWN_OPTIONS:
            continue
        if rest and suite in SUITES:
            if suite not in names or rest not in SUITES[suite].options:
                valid = sorted(SUITES[suite].options) if suite in names else f"(suite '{suite}' is not selected)"
                raise SystemExit(f"bench: unknown option '{key}'; valid for {suite}: {valid}")
        elif not any(key in SUITES[name].options for name in names):
            valid = {name: sorted(SUITES[name].options) for name in names}
            raise SystemExit(f"bench: unknown option '{key}' for suites {names}; valid: {valid} and {list(OWN_OPTIONS)}")


def default_settings(results: dict[str, Any], suite: str) -> bool | None:
    """Whether a suite ran at the settings its targets are stated for (None: not run)."""
    settings = results.get(f"{suite}.settings")
    if not isinstance(settings, dict) or suite not in SUITES:
        return None
    defaults = SUITES[suite].options
    used = settings.get("options", {})
    return all(used.get(k, v) == v for k, v in defaults.items() if k not in NEUTRAL_OPTIONS)


def target_status(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per target: the bound, the figure now in the results, met (None when not measured), and
    whether the suite ran at its default settings (a target met on a shrunken run proves little)."""
    status = {}
    for key, (comparison, bound) in TARGETS.items():
        value = results.get(key)
        met = bool(COMPARISONS[comparison](value, bound)) if isinstance(value, (int, float)) else None
        status[key] = {"target": f"{comparison} {bound:g}", "value": value, "met": met, "default_settings": default_settings(results, key.split(".")[0])}
    return status


def run(names: list[str], options: dict[str, str]) -> dict[str, Any]:
    """Run the named suites (``all``: every one) and merge their results into ``options["out"]``."""
    names = list(SUITES) if "all" in names else names
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise SystemExit(f"bench: unknown or missing suite(s) {unknown}; valid: {sorted(SUITES)} or all")
    check_options(names, options)
    path = Path(options.get("out", "bench.json"))
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        results = {k: v for k, v in results.items() if not k.startswith(f"{name}.")}  # no stale keys of a rerun
        results.update(SUITES[name](resolve_options(name, options)))
    for key in REQUIRED_KEYS:
        results.setdefault(key, None)
    results["targets"] = target_status(results)
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def summary_table(results: dict[str, Any], names: list[str]) -> str:
    """The headline figures of the suites run, with their targets, as a plain-text table."""
    targets = results.get("targets", {})
    rows = [("figure", "value", "target", "status")]
    for key in sorted(results):
        if key.split(".")[0] not in names or key.endswith(".settings") or isinstance(results[key], list):
            continue
        value = results[key]
        shown = json.dumps(value) if isinstance(value, dict) else str(value)
        target = targets.get(key)
        status = "" if target is None else {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        status += " (non-default settings)" if target and target["met"] is not None and not target["default_settings"] else ""
        rows.append((key, shown if len(shown) <= 70 else shown[:67] + "...", target["target"] if target else "", status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def command_options(cfg: DictConfig) -> tuple[list[str], dict[str, str]]:
    """The suites and ``run`` options a composed configs/bench.yaml asks for (options that differ from the defaults)."""
    names = [str(name) for name in cfg.suites]
    options = {"out": str(cfg.out)}
    for name, suite in SUITES.items():
        options.update({f"{name}.{key}": value for key, value in suite_options(cfg, name).items() if value != suite.options[key]})
    return names, options


@command("bench", positional="suites", as_list=True)
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("lightning.pytorch", "lightning.fabric"):  # one "GPU available" banner per timed fit otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    names, options = command_options(cfg)
    results = run(names, options)
    ran = list(SUITES) if "all" in names else names
    print(json.dumps({k: v for k, v in results.items() if k.split(".")[0] in ran}, indent=1))
    print(summary_table(results, ran))


if __name__ == "__main__":
    main()
