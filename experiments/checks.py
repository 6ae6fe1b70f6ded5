"""Values a run config must hold, checked before anything is built or any folder is made.

Torch and Lightning reject most bad values too, but only after the run folder exists and with
messages that name their own arguments; these name the config key and the value given.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

POSITIVE = ("data.batch_size", "eval.num_generated", "eval.batch_size", "trainer.accumulate_grad_batches")
NON_NEGATIVE = ("data.num_workers",)
CHOICES = {"resume": ("auto", "never", "force"), "on_nonfinite_loss": ("stop", "skip")}


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
    problems += _run_length_problems(cfg)
    problems += _route_problems(cfg)
    if problems:
        raise ValueError("invalid run config:\n  " + "\n  ".join(problems))


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
    if steps == -1 and (epochs is None or epochs < 1) and OmegaConf.select(cfg, "trainer.max_time", default=None) is None:
        return ["trainer.max_steps=-1 with no trainer.max_epochs or trainer.max_time would train forever"]
    return []


def _route_problems(cfg: DictConfig) -> list[str]:
    """route=latent puts a first stage under ``model``: only the diffusion models have one."""
    if OmegaConf.select(cfg, "model.first_stage", default=None) is None:
        return []
    from hydra.utils import get_class

    from models.diffusion_module import DiffusionModule

    target = str(OmegaConf.select(cfg, "model._target_", default=""))
    if not issubclass(get_class(target), DiffusionModule):
        return [f"route=latent: {target} ({cfg.get('exp_name')}) is not a diffusion model; the latent route serves "
                "exp=hybrid, ddpm and ddpm_class (and their ablations)"]
    return []


class CheckBeforeRun(Callback):
    """Hydra callback: ``check_run_config`` before Hydra makes the run folder (``hydra/run_folder.yaml``)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_run_config(config)
        except ValueError as error:
            raise SystemExit(str(error)) from None  # a plain message, not a traceback
