"""Train one experiment, evaluate it, and write its run folder.

    python -m experiments.run exp=hybrid
    python -m experiments.run -m exp=hybrid,ddpm,vae,gan seed=0,1,2

``run(cfg)`` is importable (tests and notebooks call it); ``main`` is the Hydra wrapper.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from callbacks.cpu_budget import find_budget
from callbacks.health import FiniteLoss
from callbacks.rng import RNGState
from datamodules.atomic import remove_stale_temp_files
from experiments.checkpoint_io import AtomicCheckpointIO
from experiments.checks import RUN_ENTRIES, check_data_for_model, check_run_config, earlier_run
from experiments.command import command
from experiments.loggers import build_loggers, flat_config
from experiments.memory_estimate import log_memory_estimate
from experiments.output_folder import clear_output_folder, write_manifest
from experiments.resume import resume_checkpoint
from models.checkpoint import build_generator
from models.performance import apply_performance

log = logging.getLogger(__name__)
OUTPUT_DIR_ENV = "DERMSYNTH_OUTPUT_DIR"


def external_launcher() -> str | None:
    """torchrun or SLURM when they started this process as one of several, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return "SLURM"
    return None


def resolve_output_dir(cfg: DictConfig) -> Path:
    """One run folder for all DDP ranks and the right one per job in a Hydra multirun.

    DDP re-launches this script per rank, and each launch would compute a new timestamp;
    rank 0 publishes its folder in the environment, which the children inherit.
    """
    inherited = os.environ.get(OUTPUT_DIR_ENV)
    pinned = any(arg.startswith("paths.output_dir=") for arg in sys.argv[1:])
    launcher = external_launcher()
    if launcher and not pinned and not inherited:
        raise SystemExit(
            f"launched as one of several processes by {launcher}: each would stamp its own run folder. "
            "Pass paths.output_dir=<a folder on the shared file system> (the same on every node)."
        )
    if inherited and int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) > 0:
        output_dir = inherited
    elif HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        output_dir = HydraConfig.get().runtime.output_dir
        os.environ.setdefault("DERMSYNTH_SWEEP_ID", Path(output_dir).name.rsplit("_", 1)[0])
    else:
        output_dir = cfg.paths.output_dir
    output_dir = str(Path(output_dir).absolute())
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN and not pinned:
        # Lightning re-runs this command line for the other DDP ranks; pinning the folder there
        # keeps Hydra from making a second, empty timestamped folder per rank.
        sys.argv.append(f"paths.output_dir={output_dir}")
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    os.environ[OUTPUT_DIR_ENV] = output_dir
    return Path(output_dir)


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    callbacks: list[Callback] = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    callbacks.append(FiniteLoss(mode=cfg.on_nonfinite_loss))
    callbacks.append(RNGState(seed=int(cfg.seed)))  # a resumed run draws the noise a straight run would
    if cfg.trainer.get("max_time") is None:
        callbacks.append(Timer(duration=None, interval="step", verbose=False))  # records train_time_s
    return callbacks


def provenance_yaml(datamodule: Any, memory: dict[str, Any] | None = None) -> str:
    """config.yaml's ``provenance`` block: the code and packages the run started with, its data and memory estimate."""
    from evaluation.provenance import code_provenance

    block = {"provenance": {**code_provenance(), "data_fingerprint": datamodule.info.fingerprint, "memory_estimate": memory}}
    return OmegaConf.to_yaml(OmegaConf.create(block))


def train_seconds(trainer: L.Trainer) -> float:
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return float(timer.time_elapsed("train")) if timer is not None else float("nan")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data``, evaluate it, write the run folder; return the metrics."""
    check_run_config(cfg)
    output_dir = resolve_output_dir(cfg)
    previous = earlier_run(cfg, output_dir)  # an earlier run's files that overwrite=true replaces; nothing deleted yet
    ckpt_path, resume_step = resume_checkpoint(cfg, output_dir)  # refuses a changed config before anything is written
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_generator(cfg.model, datamodule.info)
    check_data_for_model(model, datamodule, str(cfg.exp_name))  # before training, not in its evaluation
    model = apply_performance(model, channels_last=bool(cfg.performance.channels_last), compile=bool(cfg.performance.compile))
    model.run_config = OmegaConf.to_container(cfg, resolve=True)

    loggers = build_loggers(cfg, output_dir, resume_step)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=build_callbacks(cfg),
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(output_dir),
    )
    memory = log_memory_estimate(cfg, model, datamodule, trainer)
    if trainer.is_global_zero:
        clear_output_folder(output_dir, previous)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(output_dir, "run", RUN_ENTRIES, {"exp": cfg.exp_name}, complete=False)
        for stale in remove_stale_temp_files(output_dir) + remove_stale_temp_files(output_dir / "checkpoints"):
            log.info("Removed %s, left by an interrupted write", stale)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True) + provenance_yaml(datamodule, memory))
        for logger in trainer.loggers:
            logger.log_hyperparams(flat_config(cfg))

    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    # A run stopped by max_time (or at a step between checkpoints) would otherwise leave last.ckpt
    # behind the model that metrics.json describes. Rank 0 decides (on nodes without a shared disk only
    # it sees the file) and every rank follows, since save_checkpoint ends in a barrier.
    behind = trainer.is_global_zero and (
        not last.exists() or torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"] != trainer.global_step
    )
    if trainer.strategy.broadcast(behind, src=0):
        trainer.save_checkpoint(last)

    metrics = evaluate_after_fit(cfg, trainer, model, datamodule, output_dir)
    if trainer.is_global_zero:
        write_manifest(output_dir, "run", RUN_ENTRIES, {"exp": cfg.exp_name}, complete=True)
    finish(trainer, metrics, output_dir)
    return metrics


def evaluate_after_fit(
    cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, datamodule: Any, output_dir: Path
) -> dict[str, Any]:
    """The final evaluation (``callbacks.evaluate.final_evaluation``) on the saved checkpoint's weights."""
    from callbacks.evaluate import final_evaluation

    extra = {"exp": cfg.exp_name, "data": cfg.data.source, "seed": int(cfg.seed), "train_time_s": round(train_seconds(trainer), 2)}
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    return final_evaluation(
        trainer, model, cfg.eval, output_dir, extra, budget=str(cfg.budget_name),
        checkpoint=checkpoint if checkpoint.is_file() else None, overrides=command_overrides(), training=training_stop(cfg, trainer),
    )


def training_stop(cfg: DictConfig, trainer: L.Trainer) -> dict[str, Any]:
    """The run's budget, what ended it and its CPU time. Comparisons run on equal steps (or, with a CPU budget, equal
    CPU time): the wall-clock cap is a safety limit, and a run it cut short is reported as such (warning, metrics.json, report)."""
    max_steps, steps = int(trainer.max_steps), int(trainer.global_step)
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining("train") if timer is not None else None  # None: no cap
    budget = find_budget(trainer)
    if budget is not None and budget.stopped:
        stopped_by = "cpu_budget"
    elif 0 <= max_steps <= steps:
        stopped_by = "max_steps"
    elif trainer.interrupted:
        stopped_by = "interrupted"
    elif remaining is not None and remaining <= 0:
        stopped_by = "max_time"
    else:  # max_steps=-1 (or not reached) and the cap did not bite: the epochs ran out
        stopped_by = "max_epochs"
    if stopped_by == "max_time":
        log.warning(
            "trainer.max_time=%s stopped the run at step %d of its %d: its figures are not at equal steps with runs that "
            "finished their budget (raise or remove the cap: trainer.max_time=null)", cfg.trainer.get("max_time"), steps, max_steps,
        )
    clock = budget.record() if budget is not None else {}
    return {"max_steps": max_steps, "steps": steps, "stopped_by": stopped_by, "max_time": cfg.trainer.get("max_time"), **clock}


def command_overrides() -> list[str]:
    """The Hydra overrides of this job (empty when ``run`` is called without Hydra)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def finish(trainer: L.Trainer, metrics: dict[str, Any], output_dir: Path) -> None:
    """Log the final figures, close the W&B run (a multirun's next job gets a new one), say where all went."""
    scalars = {f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(scalars)
            log_sample_table(logger, output_dir / "eval")
        elif scalars:
            logger.log_metrics(scalars, step=trainer.global_step)
        logger.finalize("success")
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()
    if trainer.is_global_zero:
        cond = metrics.get("cond_accuracy") or {}
        headline = {k: metrics.get(k) for k in ("eval_split", "feature_extractor", "fid", "fd_domain", "kid_mean", "precision", "recall")}
        headline.update(diagnosis=cond.get("diagnosis"), mean_visual=cond.get("mean_visual"))
        print(f"Run folder: {output_dir}\nMetrics: {json.dumps(headline, default=_round)}", flush=True)


def log_sample_table(logger: WandbLogger, eval_dir: Path) -> None:
    """A W&B table of the evaluated samples: image, prompt and the attributes the judge reads."""
    index = eval_dir / "samples.json"
    if not index.is_file():
        return
    import wandb

    rows = json.loads(index.read_text()).get("samples", [])
    columns = sorted({key for row in rows for key in row["predicted"]})
    table = wandb.Table(columns=["image", "prompt", *[f"predicted_{c}" for c in columns]])
    for row in rows:
        table.add_data(wandb.Image(str(eval_dir / row["file"])), row["caption"], *[row["predicted"].get(c) for c in columns])
    logger.experiment.log({"eval/samples": table})


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else str(value)


def remove_unused_folder() -> None:
    """Remove the folder Hydra made for a run that failed before writing anything but Hydra's log (bad data, say)."""
    from experiments import checks

    folder = checks.new_run_folder
    if folder is not None and folder.is_dir() and {p.name for p in folder.iterdir()} <= {checks.HYDRA_LOG}:
        shutil.rmtree(folder, ignore_errors=True)


@command("config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except BaseException:
        remove_unused_folder()
        raise


if __name__ == "__main__":
    main()
