"""The 64 px routes' training step beside today's 32 px one (part of the ``train`` suite).

Three ``exp=ddpm`` models at the suite's batch size: ``pixel_32px`` (``data.image_size=32``, the
shipped patch table's 2x2 patches), ``pixel`` (``data.image_size=64``: 4x4 patches) and
``latent`` (``data.image_size=64 route=latent``: the UNet on 16 x 16 x 4 latents, plus the
first stage's encoder under no_grad in every step). The route's cost does not depend on the
conditioning, so the unconditional model stands for all three diffusion experiments, and not on
the first stage's weights, so its fit is skipped here.

A step is ``DiffusionModule._step`` (encode, noise, UNet, loss), backward, the run's gradient
clipping and the AdamW step, outside Lightning (``train.lightning_over_bare`` measures that
wrapper); the three are timed in interleaved rounds, so their ratios hold on a shared machine.
Each route's FLOPs per step (``flops.step_flops``) give its fraction of the matmul peak.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate

from experiments.bench_suites.common import build_datamodule, compose_run_config, log, median, ratio, synchronize
from experiments.bench_suites.flops import step_flops
from models.checkpoint import build_generator

ROUTES = {"pixel_32px": ("32", "pixel"), "pixel": ("64", "pixel"), "latent": ("64", "latent")}


def route_models(options: dict[str, str], common: list[str], where: torch.device) -> dict[str, tuple[Any, list[dict[str, Any]], Any]]:
    """Each route's model (on ``where``), the batches it is timed on and its run config."""
    built = {}
    count = int(options["warmup"]) + int(options["routes_steps"])
    for name, (size, route) in ROUTES.items():
        size = options["routes_image_size"] if size == "64" else size
        cfg = compose_run_config("ddpm", options["budget"], [*common, f"data.image_size={size}", f"route={route}",
                                                             f"data.num_train={options['routes_num_train']}"])
        datamodule = build_datamodule(cfg.data)
        torch.manual_seed(0)
        model = build_generator(cfg.model, datamodule.info).to(where).train()
        batches: list[dict[str, Any]] = []
        while len(batches) < count:
            batches.extend(batch for _, batch in zip(range(count - len(batches)), datamodule.train_dataloader()))
        built[name] = (model, batches, cfg)
    return built


def module_step(model: Any, optimizer: torch.optim.Optimizer, clip: Callable[[Any], Any] | None, batch: dict[str, Any]) -> None:
    loss = model._step(batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        clip([p for p in model.parameters() if p.requires_grad])
    optimizer.step()


def route_figures(options: dict[str, str], common: list[str], clip: Callable[[Any], Any] | None, where: torch.device,
                  peak_flops: float) -> dict[str, Any]:
    """``train.routes``: per route the median step time, its ratio to ``pixel_32px``, GFLOP per step and fraction of peak."""
    built = route_models(options, common, where)
    warmup, rounds = int(options["warmup"]), int(options["rounds"])
    per_round = max(1, -(-int(options["routes_steps"]) // rounds))
    times: dict[str, list[float]] = defaultdict(list)
    optimizers = {name: instantiate(cfg.model.optimizer)([p for p in model.parameters() if p.requires_grad])
                  for name, (model, _, cfg) in built.items()}
    for round_index in range(rounds):
        log.info("train: routes round %d/%d: %s, %d timed steps each", round_index + 1, rounds, ", ".join(built), per_round)
        for name, (model, batches, _) in built.items():
            for index, batch in enumerate(batches[: warmup + per_round]):
                batch = {**batch, "image": batch["image"].to(where)}
                synchronize(where)
                start = time.perf_counter()
                module_step(model, optimizers[name], clip, batch)
                synchronize(where)
                if index >= warmup:
                    times[name].append(time.perf_counter() - start)
    figures: dict[str, Any] = {}
    reference = median(times["pixel_32px"])
    for name, (model, batches, _) in built.items():
        step_s = median(times[name])
        batch = {**batches[0], "image": batches[0]["image"].to(where)}
        flops = step_flops(lambda: model._step(batch)["loss"])
        figures[name] = {
            "step_s": round(step_s, 4), "over_pixel_32px": ratio(step_s, reference), "gflop_per_step": round(flops / 1e9, 2),
            "fraction_of_matmul_peak": ratio(flops / step_s, peak_flops), "image_size": int(batch["image"].shape[-1]),
            "unet_input": [int(model.unet.config.in_channels), int(model.unet.config.sample_size), int(model.unet.config.sample_size)],
            "patch_size": int(model.patch_size), "timed_steps": len(times[name]),
        }
    return figures
