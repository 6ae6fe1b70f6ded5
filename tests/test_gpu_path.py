"""The GPU user's configurations, run on the CPU: every exp x route x budget x image size, trainer=gpu and trainer=ddp.

Composition of the whole matrix is fast and runs by default. Training runs take the GPU user's
composed config (networks, noise process, precision, callbacks: ``tests/gpu_path.py``) with only
the device and the run's size changed, for two batches of 2 and a 2-image sample. The default suite
runs the full budget at 128 px for every model, the hybrid at 256 px and the latent route at 256 px;
``pytest -m slow`` runs the rest of the matrix, whole runs with their evaluation at 256 px, and DDP
over two gloo processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from experiments.checks import check_run_config
from experiments.run import run
from tests.gpu_path import (
    BATCHES, BUDGETS, CPU_KEYS, DIFFUSION, EXPERIMENTS, OPTIMIZER_STEPS_PER_BATCH, ROUTES, SIZES, cpu_config, cpu_overrides,
    fit_and_sample, gpu_overrides, routes,
)
from tests.helpers import compose_config, experiment_names

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUITE_RUNS = [(exp, "full", 128, "pixel") for exp in EXPERIMENTS] + [("hybrid", "full", 256, "pixel"), ("ddpm_class", "full", 256, "latent")]
MATRIX = [(exp, budget, size, route) for exp in EXPERIMENTS for route in routes(exp) for budget in BUDGETS for size in SIZES]
EXP_ROUTES = [(exp, route) for exp in EXPERIMENTS for route in routes(exp)]


def _flat(cfg) -> dict:
    def walk(node, prefix=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            yield prefix, node

    return dict(walk(OmegaConf.to_container(cfg, resolve=True)))


def test_the_matrix_covers_every_main_experiment() -> None:
    assert set(EXPERIMENTS) <= set(experiment_names())
    configs = REPO_ROOT / "experiments" / "configs"
    assert sorted(BUDGETS) == sorted(p.stem for p in (configs / "budget").glob("*.yaml"))
    assert sorted(ROUTES) == sorted(p.stem for p in (configs / "route").glob("*.yaml"))


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
@pytest.mark.parametrize(("exp", "route"), EXP_ROUTES)
def test_every_budget_and_size_composes_for_a_gpu_user(exp: str, route: str, trainer: str) -> None:
    budgets = BUDGETS if trainer == "gpu" else ("full",)  # the trainer group does not interact with the budget
    for budget in budgets:
        for size in SIZES:
            cfg = compose_config(*gpu_overrides(exp, budget, size, trainer, route))
            check_run_config(cfg)
            flat = _flat(cfg)  # every interpolation resolves
            assert flat["data.image_size"] == size and flat["trainer.max_steps"] == cfg.budget_steps[budget] > 0
            if trainer == "gpu":
                assert flat["trainer.accelerator"] == "gpu" and flat["trainer.devices"] == 1
            else:
                assert flat["trainer.strategy._target_"].endswith("DDPStrategy") and flat["trainer.devices"] == 2
                # the GAN's two backward passes each leave one network without gradients
                assert flat["trainer.strategy.find_unused_parameters"] is (exp == "gan")
            # budget=full is the paper-scale recipe: bf16 autocast, batch 64; the GPU trainer asks for bf16 at every budget
            assert flat["trainer.precision"] == ("bf16-mixed" if budget == "full" or trainer == "gpu" else "32-true"), (budget, trainer)
            if budget == "full":
                assert flat["data.batch_size"] == 64 and flat["eval.judge.arch"] == "resnet18"
            assert (cfg.model.get("first_stage") is not None) == (route == "latent")


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_the_cpu_stand_in_changes_only_the_device_and_the_run_size(trainer: str, tmp_path: Path) -> None:
    for exp, route in EXP_ROUTES:
        gpu = _flat(compose_config(*gpu_overrides(exp, "full", 256, trainer, route), f"paths.output_dir={tmp_path}"))
        cpu = _flat(cpu_config(exp, "full", 256, tmp_path, trainer, route=route))
        # callbacks.evaluate.eval_cfg is ${eval}: a change there is the eval key's
        changed = {key.replace("callbacks.evaluate.eval_cfg.", "eval.") for key in gpu.keys() | cpu.keys() if gpu.get(key) != cpu.get(key)}
        assert changed <= set(CPU_KEYS), (exp, route, sorted(changed - set(CPU_KEYS)))
        assert cpu["trainer.accelerator"] == "cpu" and cpu["trainer.precision"] == gpu["trainer.precision"] == "bf16-mixed"


def _check_run(exp: str, size: int, cfg, trainer, losses: list[float], images: torch.Tensor) -> None:
    assert trainer.global_step == cfg.trainer.max_steps == BATCHES * OPTIMIZER_STEPS_PER_BATCH.get(exp, 1)
    assert len(losses) == BATCHES and all(torch.isfinite(torch.tensor(losses))), losses
    assert images.shape == (2, 3, size, size)
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1


def _check_network_size(exp: str, size: int, route: str, model) -> None:
    """The UNet runs on what the config asks for: the patch table's positions, or the first stage's latents."""
    if exp not in DIFFUSION:
        return
    channels, side, _ = model.sample_shape
    patch = model.patch_size
    assert model.unet.config.sample_size * patch == side and model.unet.config.in_channels == channels * patch**2
    if route == "latent":
        assert (channels, side) == (model.first_stage.latent_channels, size // model.first_stage.downsample) and patch == 1
        assert bool(model.first_stage.fitted)  # fitted (2 steps) before training
    else:
        assert (channels, side) == (3, size)
        if size >= 128:
            assert model.unet.config.sample_size == 32  # GPU sizes: 32 x 32 positions (model/_diffusion.yaml's patch table)


@pytest.mark.parametrize(("exp", "budget", "size", "route"), DEFAULT_SUITE_RUNS)
def test_gpu_config_trains_and_samples_on_cpu(exp: str, budget: str, size: int, route: str, tmp_path: Path) -> None:
    cfg = cpu_config(exp, budget, size, tmp_path, route=route)
    model, trainer, losses, images = fit_and_sample(cfg)
    _check_run(exp, size, cfg, trainer, losses, images)
    _check_network_size(exp, size, route, model)
    assert trainer.precision == "bf16-mixed"


@pytest.mark.slow
@pytest.mark.parametrize(("exp", "budget", "size", "route"), [combo for combo in MATRIX if combo not in DEFAULT_SUITE_RUNS])
def test_gpu_matrix_trains_and_samples_on_cpu(exp: str, budget: str, size: int, route: str, tmp_path: Path) -> None:
    cfg = cpu_config(exp, budget, size, tmp_path, route=route)
    model, trainer, losses, images = fit_and_sample(cfg)
    _check_run(exp, size, cfg, trainer, losses, images)
    _check_network_size(exp, size, route, model)


# Whole runs: training, the checkpoint and the evaluation of a GPU user's full budget, with the evaluation's sizes
# shrunk (samples, real images, judge epochs) and its recipe kept (Inception FID at 299 px, the resnet18 judge,
# memorization, floor, bootstrap).
EVAL_SHRUNK = (
    "data.num_train=64", "data.num_val=32", "data.num_test=32", "eval.num_generated=8", "eval.num_real=32",
    "eval.num_recon=4", "eval.kid_subset_size=4", "eval.heldout.num_generated=0",
    "eval.progress=false", "eval.bootstrap.resamples=20", "logger=csv",
)


def _check_metrics(output_dir: Path, exp: str, size: int) -> None:
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["image_size"] == size and metrics["train_steps"] == BATCHES * OPTIMIZER_STEPS_PER_BATCH.get(exp, 1)
    assert metrics["fid"] is not None and metrics["fid"] >= 0
    config = OmegaConf.load(output_dir / "config.yaml")
    assert config.trainer.precision == "bf16-mixed" and config.data.image_size == size
    assert config.provenance.memory_estimate.activations_per_image_mib > 0


@pytest.mark.slow
@pytest.mark.parametrize(("exp", "route"), [(exp, "pixel") for exp in EXPERIMENTS] + [("hybrid", "latent")])
def test_full_budget_run_at_256_px_on_cpu(exp: str, route: str, tmp_path: Path) -> None:
    output_dir = tmp_path / exp
    cfg = compose_config(*gpu_overrides(exp, "full", 256, "gpu", route), *cpu_overrides(exp, output_dir, route=route), *EVAL_SHRUNK)
    run(cfg)
    _check_metrics(output_dir, exp, 256)


@pytest.mark.slow
@pytest.mark.parametrize(("exp", "route"), [(exp, "pixel") for exp in EXPERIMENTS] + [("ddpm", "latent")])
def test_ddp_full_budget_on_two_gloo_processes(exp: str, route: str, tmp_path: Path) -> None:
    output_dir = tmp_path / exp
    command = [
        sys.executable, "-m", "experiments.run", *gpu_overrides(exp, "full", 128, "ddp", route), *cpu_overrides(exp, output_dir, route=route),
        *EVAL_SHRUNK,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_metrics(output_dir, exp, 128)
    details = json.loads((output_dir / "eval" / "details.json").read_text())
    assert details["world_size"] == 2
