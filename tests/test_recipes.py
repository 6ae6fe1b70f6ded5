"""Training-recipe candidates (recipe=...): flow matching and EDM against exact denoisers, the power EMA,
the latent cache, and a few training steps of every recipe with every diffusion model."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

from callbacks.ema import EMA
from datamodules.transforms import POSES, Augment, posed, to_tensor
from experiments.bench_suites.common import build_datamodule
from models.checkpoint import build_generator
from models.edm import EDM
from models.flow_matching import FlowMatching
from tests.helpers import compose_config

DIFFUSION = ["ddpm", "ddpm_class", "hybrid"]
PIXEL_RECIPES = ["default", "flow", "edm", "lr_warmup", "ema_power", "wide", "deep"]
LATENT_RECIPES = ["latent", "latent_cached"]
TINY_UNET = ["model.unet.block_out_channels=[8,16,16]", "model.unet.norm_num_groups=4", "model.unet.attention_head_dim=4",
             "model.sampler.steps=2"]
TINY_FIRST_STAGE = ["model.first_stage.block_out_channels=[4,8,8]", "model.first_stage.norm_num_groups=4",
                    "model.first_stage.fit.batch_size=8"]
TINY_HYBRID = ["model.conditioner.cross_attention_dim=16", "model.conditioner.fusion.backbone=test_resnet",
               "model.conditioner.fusion.pretrained=false", "model.conditioner.fusion.input_size=16",
               "model.conditioner.fusion.text_components=4", "model.conditioner.fusion.visual_components=4"]


# ------------------------------------------------------------------------------------------------
# exact denoisers, written from the papers' conventions (not from the code under test)
def flow_time_to_t(time: torch.Tensor) -> torch.Tensor:
    return (time / 1000.0).view(-1, 1, 1, 1)  # UNet time = 1000 t


def edm_time_to_sigma(time: torch.Tensor, time_scale: float = 250.0) -> torch.Tensor:
    return torch.exp(4.0 * time / time_scale).view(-1, 1, 1, 1)  # UNet time = time_scale ln(sigma) / 4


def flow_oracle(mean: torch.Tensor | float, std: float):
    """Velocity E[eps - x0 | x_t] for data x0 ~ N(mean, std^2) per element (std 0: a single image)."""

    def velocity(x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        t = flow_time_to_t(time)
        x0_hat = mean + (1 - t) * std**2 / ((1 - t) ** 2 * std**2 + t**2) * (x - (1 - t) * mean)
        return (x - x0_hat) / t

    return velocity


def edm_oracle(mean: torch.Tensor | float, std: float, sigma_data: float = 0.5):
    """The preconditioned output F whose D = c_skip x + c_out F is E[x0 | x] for data x0 ~ N(mean, std^2)."""

    def output(model_input: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        sigma = edm_time_to_sigma(time)
        x = model_input * (sigma**2 + sigma_data**2).sqrt()  # c_in = 1 / sqrt(sigma^2 + sd^2)
        x0_hat = mean + std**2 / (std**2 + sigma**2) * (x - mean)
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
        return (x0_hat - c_skip * x) / c_out

    return output


PROCESSES = [(FlowMatching, flow_oracle, sampler) for sampler in ("euler", "heun", "dpm_solver++")] + [
    (EDM, edm_oracle, sampler) for sampler in ("euler", "dpm_solver++")]


@pytest.mark.parametrize(("process_cls", "oracle", "sampler"), PROCESSES, ids=lambda v: getattr(v, "__name__", v))
def test_training_noising_and_the_sampler_agree_on_an_exact_denoiser(process_cls, oracle, sampler: str) -> None:
    process = process_cls()
    x0 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exact = oracle(x0, 0.0)
    # training: the exact denoiser has zero loss, so training noises and targets as the oracle's convention says
    loss, aux = process.training_loss(exact, x0.expand(16, -1, -1, -1), generator=torch.Generator().manual_seed(1))
    assert loss < 1e-8 and torch.allclose(aux["pred_x0"], x0.expand(16, -1, -1, -1), atol=1e-5)
    assert aux["timesteps"].shape == (16,) and ((aux["alpha_bar"] > 0) & (aux["alpha_bar"] < 1)).all()
    # sampling: the diffusers scheduler, fed the same denoiser, lands on x0 from noise and from a noised x0
    images = process.sample(exact, (4, 3, 8, 8), sampler=sampler, steps=8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(images, x0.expand(4, -1, -1, -1), atol=1e-4, rtol=0)
    assert process.last_nfe == process.nfe(sampler, 8) == (15 if sampler == "heun" else 8)
    rebuilt = process.reconstruct(exact, x0.expand(4, -1, -1, -1), strength=0.5, sampler=sampler, steps=8,
                                  generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(rebuilt, x0.expand(4, -1, -1, -1), atol=1e-4, rtol=0)
    assert 0 < process.last_nfe < process.nfe(sampler, 8)


@pytest.mark.parametrize(("process_cls", "oracle", "sampler"), PROCESSES, ids=lambda v: getattr(v, "__name__", v))
def test_samples_of_the_exact_gaussian_denoiser_have_the_data_distribution(process_cls, oracle, sampler: str) -> None:
    mean, std = 0.2, 0.3
    process = process_cls(clip_sample=False)
    steps = 200 if sampler == "euler" else 30  # first order: its error at 30 steps is ~0.03 in std (it converges)
    images = process.sample(oracle(mean, std), (256, 3, 8, 8), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    assert abs(images.mean().item() - mean) < 0.02 and abs(images.std().item() - std) < 0.02


def test_edm_preconditioning_is_the_diffusers_schedulers() -> None:
    process = EDM()
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0])
    for scheduler in (EDMEulerScheduler(sigma_data=0.5), EDMDPMSolverMultistepScheduler(sigma_data=0.5)):
        sample, output = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
        s = sigma.view(-1, 1, 1, 1)
        torch.testing.assert_close(process.c_in(s) * sample, scheduler.precondition_inputs(sample, s))
        torch.testing.assert_close(process.c_noise(sigma), scheduler.precondition_noise(sigma))
        torch.testing.assert_close(process.c_skip(s) * sample + process.c_out(s) * output, scheduler.precondition_outputs(sample, output, s))


def test_flow_noising_is_the_diffusers_schedulers_and_the_logit_normal_is_drawn() -> None:
    process, scheduler = FlowMatching(), FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for index in (0, 4, 9):
        expected = scheduler.scale_noise(x0, scheduler.timesteps[index].expand(2), noise)
        torch.testing.assert_close(process.noised(x0, noise, scheduler, index), expected)
    t = process.draw_t(20000, torch.Generator().manual_seed(0))
    logits = torch.logit(t)
    assert abs(logits.mean().item()) < 0.03 and abs(logits.std().item() - 1.0) < 0.03  # sigmoid of N(0, 1)
    shifted = FlowMatching(shift=3.0).draw_t(20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, 3 * t / (1 + 2 * t))


def test_a_process_refuses_a_sampler_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="EDM samples with euler, dpm_solver"):
        EDM().scheduler("ddim", 10)
    with pytest.raises(ValueError, match="FlowMatching samples with euler, heun, dpm_solver"):
        FlowMatching().scheduler("ddpm", 10)


# ------------------------------------------------------------------------------------------------
# the power EMA
def test_power_ema_follows_its_profile() -> None:
    ema = EMA(power=4)
    decays = []
    for n in range(4):
        ema.num_updates = n
        decays.append(ema.current_decay())
    assert decays[0] == 0.0  # the first update copies the weights
    torch.testing.assert_close(torch.tensor(decays[1:]), torch.tensor([(1 - 1 / k) ** 5 for k in (2, 3, 4)]))
    # the average of a linear ramp of weights sits at a fixed share of the run, whatever its length
    for length in (200, 2000):
        ema = EMA(power=4)
        param = torch.nn.Parameter(torch.zeros(1))
        module = torch.nn.Module()
        module.p = param
        ema.on_fit_start(None, module)
        for step in range(1, length + 1):
            param.data.fill_(step / length)
            ema.on_train_batch_end(None, module)
        assert abs(ema.shadow["p"].item() - (1 - 1 / 6)) < 0.01  # E of the power-4 profile: (g + 1) / (g + 2)
    with pytest.raises(ValueError, match="power"):
        EMA(power=0)


# ------------------------------------------------------------------------------------------------
# the latent cache
def test_augment_reports_the_pose_it_gave() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    augment = Augment(brightness=0.0)
    seen = set()
    for seed in range(40):
        tensor, pose = augment.posed(image, torch.Generator().manual_seed(seed))
        assert torch.equal(tensor, to_tensor(posed(image, pose)))
        seen.add(pose)
    assert seen == set(range(POSES))
    # the draws are the ones the augmentation always made: same images for the same generator
    torch.testing.assert_close(augment(image, torch.Generator().manual_seed(5)), augment.posed(image, torch.Generator().manual_seed(5))[0])


def tiny(exp: str, recipe: str, size: int, *extra: str) -> list[str]:
    latent = recipe.startswith("latent")
    return [f"exp={exp}", f"recipe={recipe}", "budget=smoke", "logger=none", f"data.image_size={size}", "data.num_workers=0",
            *TINY_UNET, *(TINY_FIRST_STAGE if latent else []), *(TINY_HYBRID if exp == "hybrid" else []), *extra]


def fit(cfg, steps: int = 2):
    datamodule = build_datamodule(cfg.data)
    torch.manual_seed(0)
    model = build_generator(cfg.model, datamodule.info)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule)
    return model, datamodule, trainer


def test_cached_latents_are_the_encoded_batch_and_a_step_runs_no_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config(*tiny("ddpm", "latent_cached", 64))
    model, datamodule, _ = fit(cfg)
    cache = model.first_stage.latent_cache
    assert cache is not None and len(cache) == len(datamodule.train_set) and cache.latents.shape[1:] == (POSES, 4, 16, 16)
    batch = next(iter(datamodule.train_dataloader()))
    assert {"index", "pose"} <= set(batch) and len(set(batch["pose"].tolist())) > 1
    with torch.no_grad():
        encoded = model.first_stage.encode(batch["image"])  # the augmented images (brightness off on this route)
    torch.testing.assert_close(cache.lookup(batch["index"], batch["pose"]), encoded, atol=2e-3 * encoded.abs().max().item(), rtol=0)
    model.train()
    monkeypatch.setattr(model.first_stage.vae, "encode", lambda *a, **k: pytest.fail("the cached route ran the encoder in a training step"))
    assert torch.isfinite(model._step(batch)["loss"])
    # a second run on the same data and first stage reads the cache file instead of encoding
    monkeypatch.undo()
    again, _, _ = fit(cfg)
    torch.testing.assert_close(again.first_stage.latent_cache.latents, cache.latents)


def test_cached_latents_need_the_pose_in_the_batch() -> None:
    cfg = compose_config(*tiny("ddpm", "latent_cached", 64, "data.with_pose=false"))
    with pytest.raises(ValueError, match="cache_latents=true needs data.with_pose=true"):
        fit(cfg)


# ------------------------------------------------------------------------------------------------
# every recipe with every diffusion model: a few steps, finite loss, samples of the right shape and range
@pytest.mark.parametrize("recipe", PIXEL_RECIPES + LATENT_RECIPES)
@pytest.mark.parametrize("exp", DIFFUSION)
def test_every_recipe_trains_and_samples_with_every_diffusion_model(exp: str, recipe: str) -> None:
    size = 64 if recipe.startswith("latent") else 16
    cfg = compose_config(*tiny(exp, recipe, size))
    losses: list[float] = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, *args) -> None:
            losses.append(float(outputs["loss"]))

    datamodule = build_datamodule(cfg.data)
    torch.manual_seed(0)
    model = build_generator(cfg.model, datamodule.info)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Losses()])
    trainer.fit(model, datamodule=datamodule)
    assert len(losses) == 3 and all(np.isfinite(losses))
    model.eval()
    batch = next(iter(datamodule.val_dataloader()))
    conditions = None if model.conditioning == "none" else {k: (v[:2] if not isinstance(v, dict) else {a: b[:2] for a, b in v.items()})
                                                             for k, v in batch.items() if k != "image"}
    images = model.generate(conditions, 2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, size, size) and torch.isfinite(images).all() and images.abs().max() <= 1
    assert model.noise.last_nfe == model.nfe() // (2 if model.sampling.guidance_scale != 1 and model.conditioning != "none" else 1)
