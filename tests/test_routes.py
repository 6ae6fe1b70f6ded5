"""64 px routes: the patch table follows the image size; route=latent composes, trains, samples, evaluates, exports."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from experiments.bench_suites.common import build_datamodule
from experiments.checks import check_run_config
from experiments.export import export_model
from experiments.run import run
from models.checkpoint import build_generator, load_generator
from models.generative import ReconstructionSettings
from tests.helpers import compose_config, smoke_overrides

DIFFUSION = ["hybrid", "ddpm", "ddpm_class"]
TINY_UNET = ["model.unet.block_out_channels=[8,16,16]", "model.unet.norm_num_groups=4", "model.unet.attention_head_dim=4",
             "model.sampler.steps=2"]
TINY_FIRST_STAGE = ["model.first_stage.block_out_channels=[4,8,8]", "model.first_stage.norm_num_groups=4",
                    "model.first_stage.fit.batch_size=8"]
TINY_HYBRID = ["model.conditioner.cross_attention_dim=16", "model.conditioner.fusion.backbone=test_resnet",
               "model.conditioner.fusion.pretrained=false", "model.conditioner.fusion.input_size=16",
               "model.conditioner.fusion.text_components=4", "model.conditioner.fusion.visual_components=4"]


def tiny_overrides(exp: str, route: str) -> list[str]:
    return [f"exp={exp}", "budget=smoke", "logger=none", "data.image_size=64", f"route={route}", *TINY_UNET,
            *(TINY_FIRST_STAGE if route == "latent" else []), *(TINY_HYBRID if exp == "hybrid" else [])]


@pytest.mark.parametrize(("size", "patch", "positions"), [(16, 2, 8), (32, 2, 16), (64, 4, 16), (128, 4, 32), (256, 8, 32)])
def test_the_patch_follows_the_image_size(size: int, patch: int, positions: int) -> None:
    cfg = compose_config("exp=ddpm", "budget=smoke", "logger=none", f"data.image_size={size}")
    unet = instantiate(cfg.model.unet)(image_size=cfg.data.image_size)
    assert (unet.config.sample_size, unet.config.in_channels) == (positions, 3 * patch**2)


def test_one_patch_size_overrides_the_table_and_a_missing_size_is_named() -> None:
    cfg = compose_config("exp=ddpm", "budget=smoke", "data.image_size=64", "model.unet.patch_size=1")
    assert instantiate(cfg.model.unet)(image_size=64).config.sample_size == 64
    cfg = compose_config("exp=ddpm", "budget=smoke", "data.image_size=48")
    with pytest.raises(ValueError, match="unet.patch_size has no entry for image size 48 .*\\+model.unet.patch_size.48=2"):
        instantiate(cfg.model.unet)(image_size=48)
    cfg = compose_config("exp=ddpm", "budget=smoke", "data.image_size=48", "+model.unet.patch_size.48=3")
    assert instantiate(cfg.model.unet)(image_size=48).config.sample_size == 16  # a table entry added from the command line
    cfg = compose_config("exp=ddpm", "budget=smoke", "data.image_size=64", "model.unet.patch_size.64=2")
    assert instantiate(cfg.model.unet)(image_size=64).config.sample_size == 32  # one entry changed


@pytest.mark.parametrize("exp", DIFFUSION)
def test_route_latent_composes_for_every_diffusion_model(exp: str) -> None:
    pixel, latent = compose_config(*tiny_overrides(exp, "pixel")), compose_config(*tiny_overrides(exp, "latent"))
    assert pixel.model.first_stage is None and latent.model.first_stage._target_ == "models.first_stage.FirstStage"
    assert latent.model.unet.patch_size == 1 and latent.model.noise.clip_sample is False and pixel.model.noise.clip_sample is True
    assert latent.model.first_stage.fit.steps == latent.first_stage_fit_steps.smoke
    check_run_config(latent)


def test_route_latent_is_refused_for_models_without_a_diffusion_core() -> None:
    cfg = compose_config("exp=vae", "budget=smoke", "route=latent")
    with pytest.raises(ValueError, match="route=latent: baselines.vae.VAE \\(vae\\) is not a diffusion model"):
        check_run_config(cfg)


@pytest.mark.parametrize("route", ["pixel", "latent"])
@pytest.mark.parametrize("exp", DIFFUSION)
def test_routes_train_sample_and_reconstruct_at_64_px(exp: str, route: str) -> None:
    cfg = compose_config(*tiny_overrides(exp, route), "data.num_workers=0")
    datamodule = build_datamodule(cfg.data)
    torch.manual_seed(0)
    model = build_generator(cfg.model, datamodule.info)
    assert model.sample_shape == ((4, 16, 16) if route == "latent" else (3, 64, 64))
    assert model.unet.config.sample_size == 16 and model.patch_size == (1 if route == "latent" else 4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule)  # on_fit_start fits (or loads) the first stage before the steps
    if route == "latent":
        record = model.provenance()["first_stage"]
        assert record["fitted"] and record["val_psnr"] > 0 and record["latent_shape"] == [4, 16, 16]
        assert not any(p.requires_grad for p in model.first_stage.parameters())
    model.eval()
    batch = next(iter(datamodule.val_dataloader()))
    conditions = None if model.conditioning == "none" else {k: v for k, v in batch.items() if k != "image"}
    images = model.generate(None if conditions is None else _first(conditions, 2), 2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all() and images.abs().max() <= 1
    rebuilt = model.reconstruct(batch, ReconstructionSettings(strength=0.5, projection_steps=1), generator=torch.Generator().manual_seed(0))
    assert rebuilt.shape == batch["image"].shape and rebuilt.abs().max() <= 1
    assert ("first-stage latent" in model.reconstruction_protocol(ReconstructionSettings(0.5, 1))) == (route == "latent")


def test_alignment_loss_reads_the_decoded_estimate_on_the_latent_route() -> None:
    cfg = compose_config(*tiny_overrides("hybrid", "latent"), "data.num_workers=0", "model.align.weight=0.1",
                         "model.align.head.channels=[8,16]")
    datamodule = build_datamodule(cfg.data)
    model = build_generator(cfg.model, datamodule.info).train()
    model.conditioner.fit([next(iter(datamodule.train_dataloader()))])
    out = model._step(next(iter(datamodule.train_dataloader())))
    assert torch.isfinite(out["loss"]) and {"align_loss", "head_loss"} <= set(out)
    out["align_loss"].backward()  # through the frozen decoder into the UNet
    assert model.unet.conv_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.first_stage.parameters())


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("latent_run") / "hybrid"
    overrides = [o for o in tiny_overrides("hybrid", "latent") if not o.startswith(("exp=", "budget=", "logger="))]
    metrics = run(compose_config(*smoke_overrides(output_dir, "hybrid", *overrides)))
    return output_dir, metrics


def test_latent_run_records_its_first_stage_and_reloads(latent_run: tuple[Path, dict]) -> None:
    output_dir, metrics = latent_run
    model_provenance = json.loads((output_dir / "metrics.json").read_text())["provenance"]["model"]
    assert model_provenance["route"] == "latent" and model_provenance["first_stage"]["fitted"]
    assert model_provenance["first_stage"] == metrics["provenance"]["model"]["first_stage"]
    assert metrics["image_size"] == 64 and metrics["psnr"] is not None and "first-stage latent" in metrics["reconstruction_protocol"]
    model = load_generator(output_dir / "checkpoints" / "last.ckpt")  # the first stage travels in the checkpoint
    assert bool(model.first_stage.fitted) and model.provenance() == model_provenance
    images = model.generate(None, 2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


def test_latent_export_loads_in_diffusers(latent_run: tuple[Path, dict], tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    model = load_generator(latent_run[0] / "checkpoints" / "last.ckpt")
    out = export_model(model, tmp_path / "export")
    vae = AutoencoderKL.from_pretrained(out, subfolder="vae").eval()
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet").eval()
    DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert vae.config.scaling_factor == pytest.approx(float(model.first_stage.latent_scale))
    assert vae.config.shift_factor == pytest.approx(float(model.first_stage.latent_shift))
    latents, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    conditioning = model.conditioner.null(2)
    with torch.no_grad():  # the model card's recipe: the UNet on latents, then the VAE with the stored factors
        torch.testing.assert_close(unet(latents, t, **conditioning.unet_kwargs()).sample, model(latents, t, conditioning))
        decoded = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
        torch.testing.assert_close(decoded, model.decode(latents))
    card = (out / "README.md").read_text()
    assert 'AutoencoderKL.from_pretrained(DIR, subfolder="vae")' in card and "latent diffusion" in card
    assert json.loads((out / "dermsynth.json").read_text())["first_stage"]["latent_shape"] == [4, 16, 16]


def _first(conditions: dict, count: int) -> dict:
    return {k: (_first(v, count) if isinstance(v, dict) else v[:count]) for k, v in conditions.items()}



def test_snr_shift_scales_the_schedule_for_every_sampler() -> None:
    from models.diffusion import NoiseProcess

    base, shifted = NoiseProcess(), NoiseProcess(snr_shift=0.25)
    snr = lambda alphas: alphas / (1 - alphas)  # noqa: E731
    ratio = snr(shifted.alphas_cumprod.double()[:990]) / snr(base.alphas_cumprod.double()[:990])
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.25), rtol=1e-3, atol=0)
    for sampler in ("ddpm", "ddim", "dpm_solver++"):  # training and every sampler share the shifted schedule
        torch.testing.assert_close(shifted.scheduler(sampler).alphas_cumprod.float(), shifted.alphas_cumprod)
    assert "trained_betas" not in base.config
    with pytest.raises(ValueError, match="snr_shift must be positive"):
        NoiseProcess(snr_shift=0.0)
