"""The training-memory estimate: exact on networks whose saved tensors are known, linear in the batch, traceless."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from callbacks.rng import collect_rng_states
from experiments.memory_estimate import estimate_run_memory, log_memory_estimate, optimizer_factories, probe_batch
from models.checkpoint import build_generator
from models.generative import GenerativeModule
from models.memory import module_tensors, optimizer_states_per_parameter, probe_step, saved_activation_peak
from tests.helpers import compose_config

FLOAT = 4


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_saved_bytes_are_the_tensors_autograd_keeps_without_the_weights() -> None:
    net, x = _network(), torch.randn(5, 8)
    # Linear 1 keeps its input x for the weight gradient, ReLU its output, which Linear 2 keeps again (one storage);
    # the weights (and their transposed views) are parameters, counted elsewhere; sum() keeps nothing.
    expected = 5 * 8 * FLOAT + 5 * 16 * FLOAT
    assert saved_activation_peak(lambda: iter([net(x).sum()]), net) == expected
    assert all(p.grad is not None for p in net.parameters())  # the losses were back-propagated


def test_the_peak_counts_graphs_alive_at_the_same_time_once_each() -> None:
    net, x = _network(), torch.randn(5, 8)
    one_graph = 5 * 8 * FLOAT + 5 * 16 * FLOAT

    def one_after_the_other():
        yield net(x).sum()
        yield net(2 * x).sum()  # built after the first graph was freed by its backward

    def both_alive():
        first, second = net(x).sum(), net(2 * x).sum()  # 2 * x is a new storage
        yield first
        yield second

    assert saved_activation_peak(one_after_the_other, net) == one_graph
    assert saved_activation_peak(both_alive, net) == 2 * one_graph


def test_weights_include_networks_kept_out_of_the_module_registry() -> None:
    net = _network()
    hidden = nn.Linear(3, 3)
    object.__setattr__(net, "_frozen", hidden)  # as the fusion CNN and the frozen text encoder are attached
    found = {t.data_ptr() for t in module_tensors(net)}
    assert {p.data_ptr() for p in [*net.parameters(), *hidden.parameters()]} == found


@pytest.mark.parametrize(("factory", "states"), [
    (lambda p: torch.optim.AdamW(p, lr=1e-3), 2.0),
    (lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9), 1.0),
    (lambda p: torch.optim.SGD(p, lr=1e-3), 0.0),
])
def test_optimizer_state_is_measured_per_parameter(factory, states: float) -> None:
    assert optimizer_states_per_parameter(factory) == states


def _setup(exp: str, *overrides: str):
    cfg = compose_config(f"exp={exp}", "budget=smoke", "logger=none", "trainer.accelerator=cpu", *overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_generator(cfg.model, datamodule.info)
    return cfg, datamodule, model, instantiate(cfg.trainer, logger=False)


def _same_rng(a: dict, b: dict) -> bool:
    return torch.equal(a["torch"], b["torch"]) and torch.equal(a["numpy"]["keys"], b["numpy"]["keys"]) and a["python"] == b["python"]


@pytest.mark.parametrize("exp", ["gan", "ddpm_class", "vae"])
def test_the_probe_leaves_the_model_and_the_random_streams_as_found(exp: str) -> None:
    cfg, datamodule, model, trainer = _setup(exp)
    before = {k: v.clone() for k, v in model.state_dict().items()}  # GAN: BatchNorm statistics, spectral-norm vectors
    rng = collect_rng_states()
    estimate = estimate_run_memory(cfg, model, datamodule, trainer)
    assert estimate.activations_per_image > 0 and estimate.weights > 0
    assert _same_rng(rng, collect_rng_states())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_the_estimate_scales_with_the_batch_as_a_measured_step_does() -> None:
    cfg, datamodule, model, trainer = _setup("ddpm", "data.image_size=64", "data.batch_size=4")
    estimate = estimate_run_memory(cfg, model, datamodule, trainer)
    batch = probe_batch(datamodule.train_set, 4, torch.device("cpu"))
    measured, _ = probe_step(lambda: model.training_losses(batch), model, torch.device("cpu"))
    assert estimate.activations == pytest.approx(measured, rel=0.05)


def test_the_estimate_runs_under_the_run_precision() -> None:
    figures = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg, datamodule, model, trainer = _setup("ddpm", "data.image_size=64", f"trainer.precision={precision}")
        figures[precision] = estimate_run_memory(cfg, model, datamodule, trainer)
    assert figures["bf16-mixed"].precision == "bf16-mixed"
    # autocast keeps the convolutions' inputs in bf16 (half the bytes); normalisations stay in float32
    assert figures["bf16-mixed"].activations_per_image < 0.75 * figures["32-true"].activations_per_image


def test_weights_gradients_optimizer_and_ema_follow_the_config() -> None:
    cfg, datamodule, model, trainer = _setup("ddpm")
    estimate = estimate_run_memory(cfg, model, datamodule, trainer)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate.trainable_parameters == trainable and estimate.gradients == trainable * FLOAT
    assert estimate.optimizer_state == 2 * trainable * FLOAT  # AdamW: two moments
    assert estimate.ema == trainable * FLOAT  # callbacks.ema keeps one copy
    assert [type(f([nn.Parameter(torch.zeros(1))])).__name__ for f in optimizer_factories(cfg.model)] == ["AdamW"]
    assert estimate.total == estimate.weights + estimate.gradients + estimate.optimizer_state + estimate.ema + estimate.activations
    cfg_gan, datamodule, gan, trainer = _setup("gan")
    assert estimate_run_memory(cfg_gan, gan, datamodule, trainer).ema == 0  # the GAN averages its generator itself


def test_the_run_prints_the_estimate_unless_switched_off(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg, datamodule, model, trainer = _setup("vae")
    figures = log_memory_estimate(cfg, model, datamodule, trainer)
    printed = capsys.readouterr().out
    assert "Training memory estimate per device (16 px, batch 8, 32-true)" in printed and "GiB" in printed
    assert figures["batch_size"] == 8 and figures["activations_mib"] > 0
    cfg.memory_estimate = False
    assert log_memory_estimate(cfg, model, datamodule, trainer) is None
    assert capsys.readouterr().out == ""


def test_one_training_image_counts_wholly_per_image() -> None:
    cfg, datamodule, model, trainer = _setup("vae")
    datamodule.train_set = torch.utils.data.Subset(datamodule.train_set, [0])
    estimate = estimate_run_memory(cfg, model, datamodule, trainer)
    assert estimate.activations_per_image > 0 and estimate.activations_fixed == 0


def test_a_generator_without_training_losses_runs_without_an_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    cfg, datamodule, model, trainer = _setup("vae")

    class Opaque(type(model)):
        training_losses = GenerativeModule.training_losses

    model.__class__ = Opaque
    assert log_memory_estimate(cfg, model, datamodule, trainer) is None
    assert "does not expose its training losses" in capsys.readouterr().out
