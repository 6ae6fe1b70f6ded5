"""The CPU-time clock and budget (callbacks/cpu_budget.py): what is on the clock, the marks, the stop, the record."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from callbacks.cpu_budget import CPUBudget, mark_name, paused
from experiments.run import run
from models.schedules import warmup_cosine
from tests.helpers import compose_config, smoke_overrides


def burn(seconds: float) -> None:
    """Spend about ``seconds`` of this process's CPU time."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_clock_counts_cpu_time_and_skips_paused_blocks() -> None:
    budget = CPUBudget(minutes=None, dirpath="unused")
    budget.start()
    burn(0.2)
    trainer = SimpleNamespace(callbacks=[budget])
    with paused(trainer):  # what the sample grids and val/fd do
        burn(0.3)
    time.sleep(0.3)  # waiting for a core is not CPU time
    burn(0.1)
    budget.stop()
    assert 0.29 <= budget.seconds() < 0.4
    with paused(SimpleNamespace(callbacks=[])):  # no clock: a no-op
        pass


def test_sample_grids_are_off_the_clock(tmp_path: Path) -> None:
    from callbacks.samples import SampleGrid

    class SlowDrawer(torch.nn.Module):
        conditioning = "none"

        def generate(self, conditions, count, generator=None):
            burn(0.3)
            return torch.zeros(count, 3, 8, 8)

    budget = CPUBudget(minutes=None, dirpath="unused")
    trainer = SimpleNamespace(callbacks=[budget], datamodule=None, global_step=1, loggers=[])
    budget.start()
    SampleGrid(str(tmp_path), num_images=4).draw(trainer, SlowDrawer())
    budget.stop()
    assert (tmp_path / "step_1.png").is_file() and budget.seconds() < 0.15


def test_marks_are_checked_and_named() -> None:
    assert mark_name(10) == "cpu_010min.ckpt" and mark_name(40.0) == "cpu_040min.ckpt" and mark_name(0.05) == "cpu_0.05min.ckpt"
    for bad in ([], [10, 5], [0, 10], [10, 10]):
        with pytest.raises(ValueError, match="ascending positive CPU minutes"):
            CPUBudget(minutes=bad, dirpath="x")
    with pytest.raises(ValueError, match="lr_schedule"):
        CPUBudget(minutes=[1], dirpath="x", lr_schedule="wall")


def test_the_cosine_decay_can_run_on_the_budget() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    done = {"share": 0.0}
    schedule = warmup_cosine(optimizer, warmup_steps=2, total_steps=10**6, progress=lambda: done["share"])
    rates = []
    for share in (0.0, 0.0, 0.0, 0.5, 1.0, 1.2):
        done["share"] = share
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == 1.0  # warm-up (in steps) ended at step 2
    assert rates[1:] == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0], abs=1e-9)  # cosine of the budget's share, then 0


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("cpu_budget") / "ddpm"
    run(compose_config(*smoke_overrides(
        output_dir, "ddpm", "trainer.max_steps=-1", "trainer.max_time=null", "callbacks.cpu_budget.minutes=[0.02,0.05]",
        "callbacks.samples.every_n_steps=0", "callbacks.checkpoint.every_n_train_steps=1000", "model.warmup_steps=2",
    )))
    return output_dir


def test_a_budget_run_saves_each_mark_and_stops_at_the_last(budget_run: Path) -> None:
    metrics = json.loads((budget_run / "metrics.json").read_text())
    training = metrics["provenance"]["training"]
    assert training["stopped_by"] == "cpu_budget" and training["cpu_budget_minutes"] == [0.02, 0.05]
    assert training["threads"] == 1 and training["marks_done"] == [0.02, 0.05]
    assert 3.0 <= training["train_cpu_s"] < 6.0  # stopped at the first step end past 0.05 CPU minutes
    steps = []
    for mark, seconds in ((0.02, 1.2), (0.05, 3.0)):
        checkpoint = torch.load(budget_run / "checkpoints" / mark_name(mark), map_location="cpu", weights_only=True)
        clock = checkpoint["cpu_clock"]
        assert seconds <= clock["train_cpu_s"] < seconds + 2.0 and "ema_state_dict" in checkpoint
        steps.append(checkpoint["global_step"])
        last_lr = checkpoint["lr_schedulers"][0]["_last_lr"][0]
    assert 0 < steps[0] < steps[1] == metrics["train_steps"]
    assert last_lr < 0.05 * 1e-3  # the cosine decay ended with the budget (peak 1e-3)


def test_a_mark_checkpoint_evaluates_with_its_cpu_time(budget_run: Path, tmp_path: Path) -> None:
    from experiments.compose import compose_config as compose_command
    from experiments.evaluate import evaluate

    args = [f"ckpt={budget_run / 'checkpoints' / mark_name(0.02)}", f"out={tmp_path / 'eval'}"]
    metrics = evaluate(compose_command("evaluate", args), args)  # python -m experiments.evaluate <args>, in process
    training = metrics["provenance"]["training"]
    assert 1.2 <= training["train_cpu_s"] < 3.2 and training["steps"] == metrics["train_steps"] > 0
