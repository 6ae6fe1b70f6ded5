"""The recipe study: candidate training recipes at equal CPU time, their queue of commands and their summary.

    python -m experiments.recipe_study data_root=DIR              # print the queue of what is left
    python -m experiments.recipe_study data_root=DIR run=true     # run it, one job at a time (resumable)

Settings: configs/recipe_study.yaml. Per candidate (a ``recipe/*.yaml`` option) one training run of
``exp`` with a CPU budget (``callbacks.cpu_budget.minutes`` = the marks) writes a checkpoint at each
CPU-minute mark; then ``experiments.evaluate`` reads each mark's checkpoint on the validation split.
A training whose last mark checkpoint exists and an evaluation whose metrics.json exists are done
and skipped; an interrupted training continues from its ``last.ckpt`` (``resume=auto``), an
interrupted evaluation starts again. After the queue (and whenever evaluations exist) the summary
table and the FID-vs-CPU-minutes plot go to the results section of ``<docs>.md`` and ``<docs>.png``
(``experiments.recipe_study_summary``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from callbacks.cpu_budget import mark_name
from experiments import CONFIG_DIR
from experiments.command import command
from experiments.recipe_study_summary import write_summary

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


@dataclass(frozen=True)
class Job:
    """One command of the queue: ``done`` when its output exists."""

    kind: str  # train | evaluate
    candidate: str
    argv: list[str]
    done: bool

    def shell(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in THREAD_ENV.items())
        return f"{env} {' '.join(shlex.quote(a) for a in self.argv)}"


def marks_text(marks: list[float]) -> str:
    return "[" + ",".join(f"{m:g}" for m in marks) + "]"


def check_candidates(candidates: list[str]) -> None:
    known = sorted(p.stem for p in (CONFIG_DIR / "recipe").glob("*.yaml"))
    unknown = [c for c in candidates if c not in known]
    if unknown:
        raise SystemExit(f"recipe_study: unknown candidate(s) {unknown}; the recipes are {known}")


def plan(cfg: DictConfig) -> list[Job]:
    """Every candidate's training and its marks' evaluations, in queue order."""
    candidates, marks = [str(c) for c in cfg.candidates], [float(m) for m in cfg.marks]
    check_candidates(candidates)
    if not marks or marks != sorted(set(marks)) or marks[0] <= 0:
        raise SystemExit(f"recipe_study: marks must be ascending positive CPU minutes, got {list(cfg.marks)}")
    out = Path(str(cfg.out))
    data_root = [] if cfg.data_root is None else [f"data.root={cfg.data_root}"]  # null: a data set without a folder (tests)
    jobs = []
    for candidate in candidates:
        run_dir = out / candidate
        checkpoints = run_dir / "checkpoints"
        jobs.append(Job("train", candidate, [
            str(cfg.python), "-m", "experiments.run", f"exp={cfg.exp}", f"recipe={candidate}", f"seed={cfg.seed}",
            *data_root, *[str(o) for o in cfg.train], f"callbacks.cpu_budget.minutes={marks_text(marks)}",
            f"paths.output_dir={run_dir}",
        ], done=(checkpoints / mark_name(marks[-1])).is_file()))
        for mark in marks:
            name = mark_name(mark).removesuffix(".ckpt")
            target = run_dir / "eval" / name
            restart = ["overwrite=true"] if target.is_dir() and not (target / "metrics.json").is_file() else []
            jobs.append(Job("evaluate", candidate, [
                str(cfg.python), "-m", "experiments.evaluate", f"ckpt={checkpoints / mark_name(mark)}", f"out={target}",
                *data_root, *[str(o) for o in cfg.evaluate], *restart,
            ], done=(target / "metrics.json").is_file()))
    return jobs


def run_queue(jobs: list[Job]) -> None:
    """Run the jobs not done, in order; the first failure stops the queue (its command is printed to rerun)."""
    env = {**os.environ, **THREAD_ENV}
    for job in jobs:
        if job.done:
            continue
        print(f"\n[recipe_study] {job.kind} {job.candidate}: {job.shell()}", flush=True)
        if subprocess.run(job.argv, env=env).returncode != 0:
            raise SystemExit(f"recipe_study: this {job.kind} failed; fix it and run the study again (finished parts are kept):\n  {job.shell()}")


@command("recipe_study")
def main(cfg: DictConfig) -> None:
    jobs = plan(cfg)
    left = [job for job in jobs if not job.done]
    print(f"# recipe study: {len(jobs) - len(left)} of {len(jobs)} jobs done; {'running' if cfg.run else 'queue'}:")
    for job in left:
        print(job.shell())
    if cfg.run:
        run_queue(jobs)
    marks = [float(m) for m in cfg.marks]
    written = write_summary(Path(str(cfg.out)), [str(c) for c in cfg.candidates], marks, Path(str(cfg.docs)), " ".join(
        shlex.quote(a) for a in ["python", "-m", "experiments.recipe_study", *sys.argv[1:]]))
    if written:
        print(f"# summary: {written[0]} (results section), {written[1]}")


if __name__ == "__main__":
    main()
