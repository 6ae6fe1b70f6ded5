"""Values a run config must hold, checked before anything is built or any folder is made.

Torch and Lightning reject most bad values too, but only after the run folder exists and with
messages that name their own arguments; these name the config key and the value given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.output_folder import check_output_folder

POSITIVE = ("data.batch_size", "eval.num_generated", "eval.batch_size", "trainer.accumulate_grad_batches")
NON_NEGATIVE = ("data.num_workers",)
CHOICES = {"resume": ("auto", "never", "force"), "on_nonfinite_loss": ("stop", "skip")}
# Real numbers a run needs finite and > 0 (torch takes a NaN learning rate and fails later, inside the run)
FINITE_POSITIVE = ("model.optimizer.lr", "model.guidance.scale", "trainer.gradient_clip_val")
FINITE_NON_NEGATIVE = ("model.optimizer.weight_decay", "model.guidance.drop_prob")
# What experiments.run writes in its folder (run.json lists them); Hydra's own log of the job comes first
HYDRA_LOG = "run.log"
RUN_ENTRIES = ["config.yaml", "checkpoints", "samples", "metrics.json", "eval", "logs", HYDRA_LOG, "wandb"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run_config(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming every key whose value cannot make a run."""
    problems = []
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not (_is_int(value) and value > 0):
            problems.append(f"{key}={value}: must be a positive integer")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not (_is_int(value) and value >= 0):
            problems.append(f"{key}={value}: must be an integer >= 0")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value not in allowed:
            problems.append(f"{key}={value}: must be one of {', '.join(allowed)}")
    problems += _number_problems(cfg)
    problems += _run_length_problems(cfg)
    problems += _route_problems(cfg)
    problems += output_folder_problems(cfg)
    if problems:
        raise ValueError("invalid run config:\n  " + "\n  ".join(problems))


def _number_problems(cfg: DictConfig) -> list[str]:
    problems, named = [], set()
    for keys, strict, rule in ((FINITE_POSITIVE, True, "a finite number > 0"), (FINITE_NON_NEGATIVE, False, "a finite number >= 0")):
        for key in keys:
            value = OmegaConf.select(cfg, key, default=None)
            if value is None:
                continue
            number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
            if not math.isfinite(number) or number < 0 or (strict and number == 0):
                problems.append(f"{key}={value}: must be {rule}")
                named.add(key)
    # Anywhere else: NaN or infinity, and learning rates (the GAN's two optimisers, the text encoder's, ...) that are not > 0
    run_keys = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])  # Hydra's node resolves only inside its job
    # a value interpolated from another key (callbacks.evaluate.eval_cfg: ${eval}) is named once, where it is set
    copies = tuple(k for k, v in _leaves(OmegaConf.to_container(run_keys, resolve=False)) if isinstance(v, str) and "${" in v)
    for key, value in _leaves(OmegaConf.to_container(run_keys, resolve=True, throw_on_missing=False)):
        name = key.rsplit(".", 1)[-1]
        if key in named or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if any(key == c or key.startswith((f"{c}.", f"{c}[")) for c in copies):
            continue
        if not math.isfinite(value):
            problems.append(f"{key}={value}: must be a finite number")
        elif (name == "lr" or name.endswith("_lr")) and value <= 0:
            problems.append(f"{key}={value}: a learning rate must be > 0")
    levels = OmegaConf.select(cfg, "model.noise.num_train_timesteps", default=None)
    steps = OmegaConf.select(cfg, "model.sampler.steps", default=None)
    if steps is not None and not (_is_int(steps) and 1 <= steps <= (levels or steps)):
        problems.append(f"model.sampler.steps={steps}: must be an integer in [1, {levels}] (the model's noise levels)")
    return problems


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{prefix}[{index}]")
    else:
        yield prefix, node


def check_sampling(guidance: tuple[str, Any], steps: tuple[str, Any]) -> None:
    """Sampling settings given on a command line: guidance a finite number >= 0, steps a positive integer.

    ``guidance`` and ``steps`` are (key as the command names it, value or None for the model's own).
    A NaN guidance scale draws black images; refused here, naming the key, before anything loads.
    """
    (guidance_key, scale), (steps_key, count) = guidance, steps
    if scale is not None:
        number = float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else math.nan
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{guidance_key}={scale}: must be a finite number >= 0 (1 = no guidance)")
    if count is not None and not (_is_int(count) and count > 0):
        raise ValueError(f"{steps_key}={count}: must be a positive integer")


def check_steps_for(model: Any, key: str, steps: Any) -> None:
    """A sampler cannot take more steps than the model has noise levels: refused once the model is loaded, naming ``key``."""
    levels = getattr(getattr(model, "noise", None), "num_train_timesteps", None)
    if steps is not None and levels is not None and int(steps) > int(levels):
        raise ValueError(f"{key}={steps}: the model has {levels} noise levels, so at most {levels} sampling steps")


def is_run_folder(folder: Path) -> bool:
    """A folder experiments.run wrote: its manifest, or (runs from before it) a config.yaml beside checkpoints/."""
    return (folder / "run.json").is_file() or ((folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir())


def launched_as_other_rank() -> bool:
    """True in a process that DDP, torchrun or SLURM started as a rank other than 0 (rank 0 owns the run folder)."""
    return any(int(os.environ.get(key) or 0) > 0 for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def earlier_run(cfg: DictConfig, folder: Path) -> list[str]:
    """What the run clears of an earlier run in ``folder`` before writing: [] for a new or empty folder and for a
    run folder of its own that it resumes (``resume=auto`` with ``checkpoints/last.ckpt``).

    Any other folder follows every command's rule (experiments/output_folder.py): an earlier run that is not
    resumed is replaced only with ``overwrite=true`` (what its run.json lists), a user's folder never. Raises
    ``ValueError`` (or ``PermissionError``) naming ``paths.output_dir``. Ranks other than 0 follow rank 0.
    """
    if launched_as_other_rank():
        return []
    key, overwrite = "paths.output_dir", bool(cfg.get("overwrite", False))
    entries = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if entries <= {HYDRA_LOG}:  # new, empty, or holding only Hydra's log of this very job
        if not entries:
            check_output_folder(folder, "run", overwrite=False, key=key)  # a file, a folder it cannot write
        return []
    resumable = (folder / "checkpoints" / "last.ckpt").is_file()
    if is_run_folder(folder) and resumable and cfg.resume != "never":
        return []
    why = "resume=never" if resumable else "it has no checkpoints/last.ckpt to resume from"
    if is_run_folder(folder) and not (folder / "run.json").is_file():  # a run folder from before run.json
        foreign = sorted(entries - set(RUN_ENTRIES))
        if foreign:
            raise ValueError(f"{key}={folder} holds files besides an earlier run's ({', '.join(foreign[:5])}); move them or "
                             "choose another folder; nothing was deleted")
        cleared = sorted(entries)
    else:
        try:
            cleared = check_output_folder(folder, "run", overwrite=True, key=key)
        except ValueError as error:
            raise ValueError(f"{error} (experiments.run writes only into a new or empty folder, or a run folder of its own)") from None
    if not overwrite:
        raise ValueError(f"{key}={folder} holds an earlier run, which this run does not continue ({why}); choose a new "
                         "folder, or overwrite=true to replace it (only the files the run wrote)")
    return [name for name in cleared if name != HYDRA_LOG]  # the log of this very job is open: it goes on


def output_folder_problems(cfg: DictConfig) -> list[str]:
    """``paths.output_dir`` must be new, empty or a run folder of its own (``earlier_run``): never a user's folder."""
    value = OmegaConf.select(cfg, "paths.output_dir", default=None, throw_on_resolution_failure=False)
    if not value:
        return []
    try:
        earlier_run(cfg, Path(str(value)).absolute())
    except (ValueError, PermissionError) as error:
        return [str(error)]
    return []


def _run_length_problems(cfg: DictConfig) -> list[str]:
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    if steps is None:
        return []
    if steps == 0:
        return ["trainer.max_steps=0 trains nothing, and the run would evaluate an untrained model; to evaluate "
                "a trained checkpoint run python -m experiments.evaluate ckpt=PATH"]
    if not _is_int(steps) or steps < -1:
        return [f"trainer.max_steps={steps}: must be a positive integer (or -1 with trainer.max_epochs or trainer.max_time)"]
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    cpu_marks = OmegaConf.select(cfg, "callbacks.cpu_budget.minutes", default=None)
    if steps == -1 and (epochs is None or epochs < 1) and OmegaConf.select(cfg, "trainer.max_time", default=None) is None and not cpu_marks:
        return ["trainer.max_steps=-1 with no trainer.max_epochs, trainer.max_time or callbacks.cpu_budget.minutes would train forever"]
    return []


def _route_problems(cfg: DictConfig) -> list[str]:
    """route=latent puts a first stage under ``model``, and the recipes change the diffusion core: only the diffusion
    models have them."""
    latent = OmegaConf.select(cfg, "model.first_stage", default=None) is not None
    recipe = OmegaConf.select(cfg, "recipe_name", default="default")
    if not latent and recipe in (None, "default"):
        return []
    from hydra.utils import get_class

    from models.diffusion_module import DiffusionModule

    target = str(OmegaConf.select(cfg, "model._target_", default=""))
    if issubclass(get_class(target), DiffusionModule):
        return []
    what, serves = (f"recipe={recipe}", "the recipes serve") if recipe not in (None, "default") else ("route=latent", "the latent route serves")
    return [f"{what}: {target} ({cfg.get('exp_name')}) is not a diffusion model; {serves} exp=hybrid, ddpm and ddpm_class "
            "(and their ablations)"]


# The run folder this process checked before Hydra made it, when it did not exist yet: a run refused while it
# loads its data or model (after Hydra made the folder) removes it again (experiments.run), so no folder is
# left holding only a log.
new_run_folder: Path | None = None


class CheckBeforeRun(Callback):
    """Hydra callback: ``check_run_config`` before Hydra makes the run folder (``hydra/run_folder.yaml``)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global new_run_folder
        try:
            check_run_config(config)
            folder = Path(str(OmegaConf.select(config, "paths.output_dir", default="") or ".")).absolute()
            new_run_folder = None if folder.exists() or launched_as_other_rank() else folder
        except ValueError as error:
            raise SystemExit(str(error)) from None  # a plain message, not a traceback


def check_data_for_model(model: Any, datamodule: Any, exp: str) -> None:
    """A model conditioned on the diagnosis needs two or more diagnoses in its training split (checked before training)."""
    import numpy as np

    if getattr(model, "conditioning", "none") != "label":
        return
    present = np.unique(np.asarray(datamodule.train_set.labels))
    if len(present) < 2:
        names = [datamodule.info.class_names[int(i)] for i in present]
        raise ValueError(f"exp={exp} conditions on the diagnosis, but the training split holds only {names or 'none'}: "
                         "give the data a label column with two or more values, or use an unconditional model (exp=ddpm)")
