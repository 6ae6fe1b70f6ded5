"""Training time as CPU time of the training process: a clock that is fair on shared cores, and a budget on it.

On a machine whose cores other jobs share, wall time measures the neighbours as much as the run.
``time.process_time()`` counts only what this process computed, so at one thread (``threads``:
``torch.set_num_threads``; start the process with ``OMP_NUM_THREADS=1`` too) it is the training's
own cost. The clock runs from ``on_train_start`` (after every set-up: data caches, the judge, the
first stage's fit and latent cache, the hybrid's fusion fit) to the end of training, and stops while
the validation loop runs and while the sample-grid and ``val/fd`` callbacks draw (they call
``paused(trainer)``); data loading in this process (``data.num_workers=0``) counts, loader workers
are other processes and would not (a warning says so). Periodic checkpoint writes stay on the clock
(tens of milliseconds every few hundred steps).

With ``minutes`` (e.g. ``[10, 40]``) it is a budget: at each mark the run saves
``checkpoints/cpu_010min.ckpt`` (the runner's atomic writer, EMA weights and all) and at the last
mark it stops. With ``lr_schedule: cpu`` the learning rate's cosine decay runs on the budget's
clock (``models.schedules.warmup_cosine``), so every run ends its decay at the last mark whatever its
step costs; the warm-up stays in steps. Every run records ``provenance.training.train_cpu_s``, and
each checkpoint carries ``cpu_clock`` (its CPU seconds) for ``experiments.evaluate``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ContextManager

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)
LR_SCHEDULES = ("cpu", "steps")


def mark_name(minutes: float) -> str:
    """``cpu_010min.ckpt`` for whole minutes, ``cpu_0.05min.ckpt`` otherwise."""
    return f"cpu_{int(minutes):03d}min.ckpt" if float(minutes).is_integer() else f"cpu_{minutes:g}min.ckpt"


class CPUBudget(Callback):
    """Args:
        minutes: CPU-minute marks (ascending); a checkpoint at each, the run stops at the last. None: only measure.
        dirpath: where the mark checkpoints go (the run's ``checkpoints/``).
        threads: torch threads of the training process while a budget is set.
        lr_schedule: ``cpu`` (the cosine decay ends at the last mark) or ``steps`` (on ``trainer.max_steps``).
    """

    def __init__(self, minutes: Sequence[float] | None, dirpath: str, threads: int = 1, lr_schedule: str = "cpu") -> None:
        marks = [float(m) for m in minutes] if minutes is not None else []
        if minutes is not None and (not marks or any(m <= 0 for m in marks) or marks != sorted(set(marks))):
            raise ValueError(f"callbacks.cpu_budget.minutes must be ascending positive CPU minutes (or null), got {list(minutes)}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"callbacks.cpu_budget.lr_schedule must be one of {list(LR_SCHEDULES)}, got '{lr_schedule}'")
        if threads < 1:
            raise ValueError(f"callbacks.cpu_budget.threads must be >= 1, got {threads}")
        self.marks, self.dirpath, self.threads, self.lr_schedule = marks, Path(dirpath), int(threads), lr_schedule
        self.elapsed = 0.0  # CPU seconds on the clock before the current running stretch
        self.marks_done: list[float] = []
        self.stopped = False
        self._since: float | None = None  # process_time() when the clock last started; None while stopped
        self._resume_after_validation = False

    # ----------------------------------------------------------------------------------------
    # the clock
    def seconds(self) -> float:
        """CPU seconds of training so far."""
        return self.elapsed + (time.process_time() - self._since if self._since is not None else 0.0)

    def start(self) -> None:
        if self._since is None:
            self._since = time.process_time()

    def stop(self) -> None:
        if self._since is not None:
            self.elapsed += time.process_time() - self._since
            self._since = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run the block off the clock (evaluation, sample grids, the mark checkpoints)."""
        running = self._since is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()

    def progress(self) -> float:
        """Share of the budget used (0 without a budget)."""
        return self.seconds() / (60.0 * self.marks[-1]) if self.marks else 0.0

    # ----------------------------------------------------------------------------------------
    # hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.marks:
            return
        torch.set_num_threads(self.threads)  # before configure_optimizers and the first step
        if self.lr_schedule == "cpu":
            if hasattr(pl_module, "schedule_progress"):
                pl_module.schedule_progress = self.progress
            else:
                log.warning("callbacks.cpu_budget.lr_schedule=cpu: %s keeps its own schedule (on steps)", type(pl_module).__name__)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.marks:
            workers = int(getattr(trainer.datamodule, "num_workers", 0) or 0)
            if workers > 0:
                log.warning("callbacks.cpu_budget: data.num_workers=%d loader processes are not on this process's CPU clock; "
                            "data.num_workers=0 loads in the training process and counts", workers)
            max_steps = int(trainer.max_steps)
            if max_steps > 0:
                log.warning("callbacks.cpu_budget: trainer.max_steps=%d may end the run before the last mark (%g CPU minutes); "
                            "trainer.max_steps=-1 leaves it to the budget", max_steps, self.marks[-1])
            if self.marks_done == self.marks:
                trainer.should_stop = True
        self.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        due = [m for m in self.marks if m not in self.marks_done and self.seconds() >= 60.0 * m]
        if not due:
            return
        with self.paused():
            for mark in due:
                self.marks_done.append(mark)  # before the save: the mark checkpoint records itself as done
                trainer.save_checkpoint(self.dirpath / mark_name(mark))
                log.info("CPU budget: %g CPU minutes at step %d -> %s", mark, trainer.global_step, mark_name(mark))
        if self.marks_done == self.marks:
            self.stopped = True
            trainer.should_stop = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resume_after_validation = self._since is not None
        self.stop()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resume_after_validation:
            self.start()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    # state
    def record(self) -> dict[str, Any]:
        """What metrics.json's ``provenance.training`` and each checkpoint's ``cpu_clock`` hold."""
        return {"train_cpu_s": round(self.seconds(), 2), "threads": torch.get_num_threads(),
                "cpu_budget_minutes": self.marks or None, "marks_done": list(self.marks_done)}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["cpu_clock"] = self.record()

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.seconds(), "marks_done": list(self.marks_done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed = float(state_dict["elapsed"])
        self.marks_done = [float(m) for m in state_dict.get("marks_done", [])]


def find_budget(trainer: L.Trainer | None) -> CPUBudget | None:
    if trainer is None:
        return None
    return next((c for c in trainer.callbacks if isinstance(c, CPUBudget)), None)


def paused(trainer: L.Trainer | None) -> ContextManager[None]:
    """Keep the block off the trainer's CPU clock (a no-op without one)."""
    budget = find_budget(trainer)
    return budget.paused() if budget is not None else nullcontext()
