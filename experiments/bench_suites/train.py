"""``train`` suite: what a training step costs, and which part of it is ours.

    python -m experiments.bench train                        # quick budget: 32 px, batch 32
    python -m experiments.bench train train.steps=20 train.rounds=4 train.compile=true

Every figure is a ratio of median step times taken in this one process. The measurements are
interleaved in ``rounds`` (each round: the bare loop, then ddpm and hybrid under Lightning), so a
change of load on a shared machine moves both sides of a ratio alike; absolute seconds are kept
in ``train.step_s`` for reference only.

What is timed: forward, loss, backward, gradient clipping (the run's ``trainer.gradient_clip_val``)
and the AdamW step. Data loading is excluded on both sides: the bare loop runs on batches fetched
from the real training loader beforehand, and under Lightning the window opens in
``on_train_batch_start``, after the batch was fetched (``data.num_workers=0``, so no loader
worker competes for the cores while a step runs). The first ``warmup`` steps of each loop and fit
(optimizer state, allocator growth) are dropped. Run callbacks (EMA, checkpoints, sample grids)
are left out: they are not framework overhead.

Keys:
- ``train.lightning_over_bare``: ddpm's LightningModule under ``lightning.Trainer`` / a plain
  PyTorch loop over the same UNet, objective (``model.noise.training_loss``) and optimiser.
  Target <= 1.10.
- ``train.hybrid_over_ddpm``: hybrid step (cached text embeddings) / ddpm step, both under
  Lightning; the two configs share the UNet width (``train.settings.unet``). Target <= 1.15.
- ``train.cache_speedup``: hybrid step that runs the text encoder on every caption / hybrid step
  with the embedding cache. Alternate steps of one fit, so both see the same weights and load;
  ``train.encoder_captions_per_step`` shows the cache was on (0) and off (2 x batch: the batch's
  captions plus the empty captions of the unconditional rows).
- ``train.images_per_s``: batch size / ddpm step under Lightning.
- ``train.fraction_of_matmul_peak``: the bare-loop ddpm step's FLOP rate (FLOPs of one step counted
  by torch's ``FlopCounterMode`` / its median time) over this CPU's single-precision matmul peak
  (a ``matmul_size``-square fp32 product timed here, same threads, by torch's BLAS and by oneDNN: the
  faster; ``experiments/bench_suites/flops.py``). ``train.flops`` holds both sides and each kernel's rate.
- ``train.routes`` (with ``routes=true``): the 64 px routes' step time, ``pixel`` (4x4 patches) and
  ``latent``, beside ``pixel_32px`` (2x2 patches), with their GFLOP and fraction of the peak
  (``experiments/bench_suites/routes.py``); ``train.step_s_64px`` repeats the two 64 px step times.
- ``train.knobs``: bare-loop step with each speed knob / the plain fp32 bare step, measured side
  by side after the rounds (below 1 is faster): ``channels_last`` (via
  ``models.performance.apply_performance``), ``bf16_autocast``, ``bf16_channels_last``,
  ``fused_adamw``, ``foreach_adamw``, and ``compile`` with ``compile=true`` (off by default: it
  takes minutes to compile on CPU; its compile time is in ``train.settings.compile_and_warmup_s``).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from experiments.bench_suites.common import (
    build_datamodule, compose_run_config, device, flag, hydra_overrides, log, median, ratio, size_overrides, synchronize,
)
from experiments.bench_suites.flops import matmul_rates, step_flops
from experiments.bench_suites.routes import route_figures
from models.checkpoint import build_generator
from models.performance import apply_performance
from models.unets import patchify, unpatchify



def bare_loop_times(
    unet: torch.nn.Module,
    noise: torch.nn.Module,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    batches: list[dict[str, Any]],
    warmup: int,
    clip: Callable[[Any], Any] | None,
    where: torch.device,
    *,
    bf16: bool = False,
    channels_last: bool = False,
    patch_size: int = 1,
) -> list[float]:
    """Step times of a plain PyTorch loop: ddpm's objective on ``unet``, ``clip(parameters)``, optimiser step."""
    optimizer = optimizer_factory(unet.parameters())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    times = []
    for index, batch in enumerate(batches):
        images = batch["image"].to(where).contiguous(memory_format=memory_format)
        synchronize(where)
        start = time.perf_counter()
        with torch.autocast(where.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = noise.training_loss(
                lambda sample, timestep: unpatchify(unet(patchify(sample, patch_size), timestep).sample, patch_size), images
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            clip(unet.parameters())
        optimizer.step()
        synchronize(where)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


class StepTimer(Callback):
    """Wall time of each training step, ``on_train_batch_start`` to ``on_train_batch_end``.

    Lightning fetches the batch before ``on_train_batch_start``, so loading falls outside the
    window. Times are kept per ``mode`` (one mode here; subclasses alternate) after ``warmup`` steps.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup, self.step = warmup, 0
        self.times: dict[str, list[float]] = defaultdict(list)
        self.current, self.start = "step", 0.0

    def mode(self, pl_module: L.LightningModule) -> str:
        return "step"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.current = self.mode(pl_module)
        synchronize(pl_module.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        synchronize(pl_module.device)
        elapsed = time.perf_counter() - self.start
        if self.step >= self.warmup:
            self.times[self.current].append(elapsed)
            self.timed(pl_module)
        self.step += 1

    def timed(self, pl_module: L.LightningModule) -> None:
        """Called after each kept step."""


class CacheToggle(StepTimer):
    """Alternate hybrid steps with the text-embedding cache and with the encoder run every step.

    ``text_encoder.cache = None`` sends ``TextEncoder.forward`` straight to the network, the path a
    model without the cache takes. ``encoder_calls`` counts captions through the network; its
    increase per step is kept per mode as the evidence that the toggle took effect.
    """

    def __init__(self, warmup: int) -> None:
        super().__init__(warmup)
        self.captions: dict[str, list[int]] = defaultdict(list)
        self.cache: Any = None
        self.calls_before = 0

    def mode(self, pl_module: L.LightningModule) -> str:
        encoder = pl_module.text_encoder
        self.cache = self.cache if self.cache is not None else encoder.cache
        cached = self.step % 2 == 0
        encoder.cache = self.cache if cached else None
        self.calls_before = encoder.encoder_calls
        return "cached" if cached else "uncached"

    def timed(self, pl_module: L.LightningModule) -> None:
        self.captions[self.current].append(pl_module.text_encoder.encoder_calls - self.calls_before)

    def restore(self, pl_module: L.LightningModule) -> None:
        if self.cache is not None:
            pl_module.text_encoder.cache = self.cache

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore(pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore(pl_module)


def timed_fit(model: L.LightningModule, datamodule: Any, cfg: DictConfig, timer: StepTimer, steps: int, where: torch.device) -> None:
    """``warmup + steps`` optimiser steps of ``model`` under a bare-bones Trainer, timed by ``timer``."""
    trainer = L.Trainer(
        accelerator="gpu" if where.type == "cuda" else "cpu", devices=1, precision="32-true",
        max_steps=timer.warmup + steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val, gradient_clip_algorithm=cfg.trainer.gradient_clip_algorithm,
        log_every_n_steps=cfg.trainer.log_every_n_steps, callbacks=[timer],
    )
    trainer.fit(model, datamodule=datamodule)


def gradient_clipping(cfg: DictConfig) -> Callable[[Any], Any] | None:
    """The run's ``trainer.gradient_clip_val`` / ``gradient_clip_algorithm`` as a function of the parameters."""
    value, algorithm = cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm
    if not value:
        return None
    if algorithm == "norm":
        return functools.partial(torch.nn.utils.clip_grad_norm_, max_norm=float(value))
    return functools.partial(torch.nn.utils.clip_grad_value_, clip_value=float(value))


def prefetch(datamodule: Any, count: int) -> list[dict[str, Any]]:
    """``count`` batches of the real training loader (cycled if an epoch is shorter)."""
    batches: list[dict[str, Any]] = []
    while len(batches) < count:
        batches.extend(batch for _, batch in zip(range(count - len(batches)), datamodule.train_dataloader()))
    return batches


def knob_ratios(
    unet: torch.nn.Module, noise: torch.nn.Module, optimizer_factory: Callable[..., torch.optim.Optimizer],
    batches: list[dict[str, Any]], warmup: int, clip: Callable[[Any], Any] | None, where: torch.device, compile: bool,
    patch_size: int = 1,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Each knob's bare-loop step time / the plain fp32 one, measured one after the other."""
    variants: dict[str, dict[str, Any]] = {
        "fp32": {},
        "channels_last": {"channels_last": True},
        "bf16_autocast": {"bf16": True},
        "bf16_channels_last": {"bf16": True, "channels_last": True},
        "fused_adamw": {"optimizer": functools.partial(optimizer_factory, fused=True)},
        "foreach_adamw": {"optimizer": functools.partial(optimizer_factory, foreach=True)},
    }
    if compile:
        variants["compile"] = {"compile": True}
    medians: dict[str, float | None] = {}
    notes: dict[str, Any] = {}
    for name, knob in variants.items():
        log.info("train: knob %s, %d steps", name, len(batches))
        network = apply_performance(copy.deepcopy(unet), channels_last=knob.get("channels_last", False), compile=knob.get("compile", False))
        started = time.perf_counter()
        try:
            times = bare_loop_times(
                network, noise, knob.get("optimizer", optimizer_factory), batches, max(warmup, 1) if name == "compile" else warmup, clip, where,
                bf16=knob.get("bf16", False), channels_last=knob.get("channels_last", False), patch_size=patch_size,
            )
        except (RuntimeError, TypeError) as error:  # a knob this torch build or device lacks
            medians[name], notes[name] = None, f"{type(error).__name__}: {str(error).splitlines()[0]}"
            continue
        medians[name] = median(times)
        if name == "compile":
            notes["compile_and_warmup_s"] = round(time.perf_counter() - started - sum(times), 1)
    return {name: ratio(value, medians["fp32"]) for name, value in medians.items() if name != "fp32"}, notes


def suite(options: dict[str, str]) -> dict[str, Any]:
    steps, warmup, rounds = int(options["steps"]), int(options["warmup"]), int(options["rounds"])
    per_round = max(1, math.ceil(steps / rounds))
    common = [*size_overrides(options), "data.num_workers=0", *hydra_overrides(options)]
    ddpm_cfg = compose_run_config("ddpm", options["budget"], common)
    hybrid_cfg = compose_run_config("hybrid", options["budget"], [*common, f"model.conditioner.fusion.max_fit_images={options['fit_images']}"])
    where = device()
    datamodule, hybrid_data = build_datamodule(ddpm_cfg.data), build_datamodule(hybrid_cfg.data)
    batches = prefetch(datamodule, warmup + max(per_round, int(options["knob_steps"])))
    torch.manual_seed(0)
    bare_model = build_generator(ddpm_cfg.model, datamodule.info).to(where)
    ddpm = build_generator(ddpm_cfg.model, datamodule.info)
    hybrid = build_generator(hybrid_cfg.model, hybrid_data.info)
    optimizer_factory = instantiate(ddpm_cfg.model.optimizer)
    clip = gradient_clipping(ddpm_cfg)

    times: dict[str, list[float]] = defaultdict(list)
    captions: dict[str, list[int]] = defaultdict(list)
    for round_index in range(rounds):
        log.info("train: round %d/%d: bare loop, ddpm and hybrid under Lightning, %d timed steps each", round_index + 1, rounds, per_round)
        times["bare"] += bare_loop_times(
            bare_model.unet, bare_model.noise, optimizer_factory, batches[: warmup + per_round], warmup, clip, where, patch_size=bare_model.patch_size
        )
        timer = StepTimer(warmup)
        timed_fit(ddpm, datamodule, ddpm_cfg, timer, per_round, where)
        times["ddpm"] += timer.times["step"]
        toggle = CacheToggle(warmup)  # the hybrid's PCA fit runs in on_fit_start of round 1, outside the window
        timed_fit(hybrid, hybrid_data, hybrid_cfg, toggle, 2 * per_round, where)
        times["hybrid"] += toggle.times["cached"]
        times["hybrid_uncached"] += toggle.times["uncached"]
        for mode, counts in toggle.captions.items():
            captions[mode] += counts

    step_s = {name: median(values) for name, values in times.items()}
    knobs: dict[str, float | None] = {}
    notes: dict[str, Any] = {}
    if flag(options["knobs"]):
        knob_batches = batches[: warmup + int(options["knob_steps"])]
        knobs, notes = knob_ratios(
            bare_model.unet, bare_model.noise, optimizer_factory, knob_batches, warmup, clip, where, flag(options["compile"]),
            patch_size=bare_model.patch_size,
        )
    batch_size = int(batches[0]["image"].shape[0])
    flops = matmul_figures(bare_model, batches[0], step_s["bare"], options, where)
    routes = route_figures(options, [*common_without_sizes(common), f"data.batch_size={batch_size}"], clip, where,
                           flops["matmul_peak_gflops"] * 1e9) if flag(options["routes"]) else None
    return {
        "train.fraction_of_matmul_peak": flops["fraction"],
        "train.flops": flops,
        "train.routes": routes,
        "train.step_s_64px": None if routes is None else {name: routes[name]["step_s"] for name in ("pixel", "latent")},
        "train.lightning_over_bare": ratio(step_s["ddpm"], step_s["bare"]),
        "train.hybrid_over_ddpm": ratio(step_s["hybrid"], step_s["ddpm"]),
        "train.cache_speedup": ratio(step_s["hybrid_uncached"], step_s["hybrid"]),
        "train.images_per_s": round(batch_size / step_s["ddpm"], 2),
        "train.step_s": {name: round(value, 4) for name, value in step_s.items()},
        "train.encoder_captions_per_step": {mode: sum(c) / len(c) for mode, c in captions.items() if c},
        "train.knobs": knobs or None,
        "train.settings": settings_record(options, where, batches[0], ddpm, hybrid, times, ddpm_cfg, notes),
    }


def matmul_figures(model: Any, batch: dict[str, Any], step_s: float, options: dict[str, str], where: torch.device) -> dict[str, Any]:
    """The bare ddpm step's GFLOP, its rate, the fp32 matmul peak and their ratio (``train.flops``)."""
    images = batch["image"].to(where)
    patch = model.patch_size
    flops = step_flops(lambda: model.noise.training_loss(
        lambda sample, timestep: unpatchify(model.unet(patchify(sample, patch), timestep).sample, patch), images)[0])
    rates = matmul_rates(int(options["matmul_size"]), int(options["matmul_repeats"]), where)
    peak = max(rates.values())
    return {
        "fraction": ratio(flops / step_s, peak, digits=4), "gflop_per_step": round(flops / 1e9, 3),
        "step_gflops": round(flops / step_s / 1e9, 2), "matmul_peak_gflops": round(peak / 1e9, 2),
        "matmul_gflops": {kernel: round(rate / 1e9, 2) for kernel, rate in rates.items()},
        "matmul_size": int(options["matmul_size"]), "threads": torch.get_num_threads(),
        "counted": "torch.utils.flop_counter.FlopCounterMode: matmuls, convolutions, attention; forward + backward",
    }


def common_without_sizes(common: list[str]) -> list[str]:
    """The suite's overrides less the image size and training-set size, which the route configs set."""
    return [o for o in common if not o.startswith(("data.image_size=", "data.num_train=", "data.batch_size="))]


def settings_record(
    options: dict[str, str], where: torch.device, batch: dict[str, Any], ddpm: Any, hybrid: Any,
    times: dict[str, list[float]], cfg: DictConfig, notes: dict[str, Any],
) -> dict[str, Any]:
    """``train.settings``: what was measured and how."""
    return {
        "options": dict(options),
        "device": where.type,
        "threads": torch.get_num_threads(),
        "image_size": int(batch["image"].shape[-1]),
        "batch_size": int(batch["image"].shape[0]),
        "unet": {"ddpm": list(ddpm.unet.config.block_out_channels), "hybrid": list(hybrid.unet.config.block_out_channels)},
        "timed_steps": {name: len(values) for name, values in times.items()},
        "gradient_clip": f"{cfg.trainer.gradient_clip_algorithm} {cfg.trainer.gradient_clip_val}",
        "optimizer": OmegaConf.to_container(cfg.model.optimizer),
        "timing": "median step time; loading excluded in both (bare loop: pre-fetched batches; Lightning: "
                  "on_train_batch_start..end, data.num_workers=0); no run callbacks (EMA, checkpoints, samples)",
        "cache": "alternate hybrid steps: embedding cache vs text_encoder.cache=None (encoder on every caption)",
        "knobs": "bare-loop ddpm UNet step with the knob / plain fp32 bare step (below 1: faster)",
        **notes,
    }
