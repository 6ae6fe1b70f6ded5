"""The shared noise process and UNet builders: forward process against diffusers, samplers on an oracle."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from models.diffusion import NoiseProcess, classifier_free_guidance, sampler_name
from models.unets import build_unet, count_parameters, patchify, unpatchify

DATA_MEAN, DATA_STD = 0.2, 0.3


def gaussian_oracle(process: NoiseProcess, mean: float = DATA_MEAN, std: float = DATA_STD):
    """The exact denoiser of data x0 ~ N(mean, std^2 I): a perfect model, so samplers can be checked alone."""

    def denoise(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        alpha_bar = process.alphas_cumprod[timestep].view(-1, 1, 1, 1)
        a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        variance = a * a * std * std + b * b
        eps = b * (sample - a * mean) / variance  # E[eps | x_t]
        x0 = mean + a * std * std * (sample - a * mean) / variance  # E[x0 | x_t]
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}[process.prediction_type]

    return denoise


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_forward_process_matches_diffusers(schedule: str, prediction: str) -> None:
    process = NoiseProcess(beta_schedule=schedule, prediction_type=prediction, min_snr_gamma=None, snr_floor=0.0)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction)
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(process.add_noise(x0, noise, t), reference.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)
    noisy = process.add_noise(x0, noise, t)
    target = process.target(x0, noise, t)
    if prediction == "v_prediction":
        torch.testing.assert_close(target, reference.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5)
    if prediction == "sample":
        assert torch.equal(target, x0)
    # The exact target implies the exact clean image (away from t = T-1 where a_bar ~ 0).
    torch.testing.assert_close(process.predict_x0(noisy, target, t)[:3], x0[:3], rtol=1e-3, atol=1e-3)


def test_training_loss_shapes_weights_and_gradient() -> None:
    process = NoiseProcess(min_snr_gamma=5.0, snr_floor=0.0, prediction_type="epsilon")
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    x0 = torch.rand(6, 3, 8, 8) * 2 - 1
    loss, aux = process.training_loss(lambda x, t: net(x), x0, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert aux["timesteps"].shape == (6,) and aux["pred_x0"].shape == x0.shape
    assert ((aux["weight"] > 0) & (aux["weight"] <= 1)).all()  # min(SNR, 5) / SNR
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    loss_again, _ = process.training_loss(lambda x, t: net(x), x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss.detach(), loss_again.detach())  # the generator fixes t and noise


def test_min_snr_weight_formula() -> None:
    t = torch.tensor([1, 300, 700, 999])
    # per-target weights: eps-loss = SNR * x0-loss, v-loss = (SNR + 1) * x0-loss, x0-loss = 1 * x0-loss
    for prediction, divisor in (("epsilon", lambda snr: snr), ("v_prediction", lambda snr: snr + 1), ("sample", lambda snr: 1.0)):
        process = NoiseProcess(min_snr_gamma=5.0, snr_floor=0.0, prediction_type=prediction)
        alpha_bar = process.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        torch.testing.assert_close(process.loss_weight(t), snr.clamp(max=5.0) / divisor(snr))
    assert torch.equal(NoiseProcess(min_snr_gamma=None, snr_floor=0.0).loss_weight(t), torch.ones(4))


def test_snr_floor_keeps_high_noise_weight_and_caps_low_noise() -> None:
    t = torch.tensor([1, 300, 700, 999])  # cosine SNR: 11435, 3.66, 0.25, ~0
    for prediction, divisor in (("v_prediction", lambda snr: snr + 1), ("sample", lambda snr: 1.0)):
        process = NoiseProcess(min_snr_gamma=5.0, snr_floor=1.0, prediction_type=prediction)
        alpha_bar = process.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        x0_weight = process.loss_weight(t) * divisor(snr)
        torch.testing.assert_close(x0_weight, torch.stack([torch.tensor(5.0), snr[1], torch.tensor(1.0), torch.tensor(1.0)]))
    with pytest.raises(ValueError, match="snr_floor"):
        NoiseProcess(min_snr_gamma=5.0, snr_floor=1.0, prediction_type="epsilon")
    with pytest.raises(ValueError, match="snr_floor"):
        NoiseProcess(min_snr_gamma=None, snr_floor=1.0)  # no gamma to cap it


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler, steps", [("ddpm", 50), ("ddim", 50), ("dpm_solver++", 20), ("dpm_solver++", 10)])
def test_every_sampler_is_finite_with_the_data_statistics(sampler: str, steps: int, prediction: str) -> None:
    process = NoiseProcess(prediction_type=prediction, min_snr_gamma=None, snr_floor=0.0)  # cosine schedule: the DPM-Solver++ pitfall
    images = process.sample(gaussian_oracle(process), (64, 3, 8, 8), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1))
    assert images.shape == (64, 3, 8, 8) and torch.isfinite(images).all()
    assert abs(images.mean().item() - DATA_MEAN) < 0.03
    assert abs(images.std().item() - DATA_STD) < 0.06
    assert process.last_nfe == steps == process.nfe(sampler, steps)


def test_sampling_is_reproducible_and_switchable() -> None:
    process = NoiseProcess()
    oracle = gaussian_oracle(process)
    a = process.sample(oracle, (2, 3, 8, 8), sampler="ddpm", steps=10, generator=torch.Generator().manual_seed(3))
    b = process.sample(oracle, (2, 3, 8, 8), sampler="ddpm", steps=10, generator=torch.Generator().manual_seed(3))
    c = process.sample(oracle, (2, 3, 8, 8), sampler="ddim", steps=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sampler_name("DPM++") == "dpm_solver++"
    with pytest.raises(ValueError, match="valid"):
        process.sample(oracle, (1, 3, 8, 8), sampler="lms", steps=5)
    with pytest.raises(ValueError, match="NoiseProcess samples with ddpm, ddim, dpm_solver"):  # a flow/EDM sampler
        process.sample(oracle, (1, 3, 8, 8), sampler="euler", steps=5)


def test_reconstruction_strength() -> None:
    process = NoiseProcess()
    oracle = gaussian_oracle(process)
    x0 = DATA_MEAN + DATA_STD * torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    assert torch.equal(process.reconstruct(oracle, x0, strength=0.0, sampler="ddim", steps=20), x0.clamp(-1, 1))
    errors = []
    for strength in (0.1, 0.5, 1.0):
        recon = process.reconstruct(oracle, x0, strength=strength, sampler="ddim", steps=20, generator=torch.Generator().manual_seed(0))
        assert process.last_nfe == round(strength * 20)
        errors.append((recon - x0).abs().mean().item())
    assert errors[0] < errors[1] < errors[2]  # more noise, further from the original
    recon = process.reconstruct(oracle, x0, strength=0.5, sampler="dpm_solver++", steps=20)
    assert torch.isfinite(recon).all()


def test_classifier_free_guidance_is_one_doubled_forward() -> None:
    calls = []

    def denoise(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        calls.append(sample.shape[0])
        half = sample.shape[0] // 2
        return torch.cat([torch.ones_like(sample[:half]), torch.zeros_like(sample[half:])])  # cond 1, uncond 0

    guided = classifier_free_guidance(denoise, guidance_scale=3.0)
    out = guided(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    assert calls == [8] and torch.allclose(out, torch.full_like(out, 3.0))


def test_one_unet_builder_serves_every_conditioning() -> None:
    sizes = dict(block_out_channels=(8, 16), attention_levels=(False, True), attention_head_dim=4, norm_num_groups=4, patch_size=1)
    plain = build_unet(image_size=16, **sizes)
    conditional = build_unet(image_size=16, cross_attention_dim=16, encoder_hid_dim=24, global_dim=6, **sizes)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    assert plain(x, t).sample.shape == x.shape
    out = conditional(x, t, encoder_hidden_states=torch.randn(2, 5, 24), class_labels=torch.randn(2, 6)).sample
    assert out.shape == x.shape
    labelled = build_unet(image_size=16, class_embed_type="identity", **sizes)  # a label vector of the time embedding's width
    assert labelled(x, t, class_labels=torch.randn(2, 4 * 8)).sample.shape == x.shape
    assert 0 < count_parameters(plain) < count_parameters(conditional)
    with pytest.raises(ValueError, match="divisible"):
        build_unet(image_size=18, block_out_channels=(8, 16, 16), attention_levels=(False, False, True), norm_num_groups=4, patch_size=1)


def test_patched_unet_runs_on_folded_patches() -> None:
    images = torch.randn(2, 3, 16, 16)
    patches = patchify(images, 2)
    assert patches.shape == (2, 12, 8, 8)
    assert torch.equal(patches[:, :4, 0, 0].flatten(), images[:, 0, :2, :2].flatten())  # channel 0's top-left 2x2 patch
    assert torch.equal(unpatchify(patches, 2), images) and patchify(images, 1) is images
    sizes = dict(block_out_channels=(8, 16), attention_levels=(False, True), attention_head_dim=4, norm_num_groups=4)
    unet = build_unet(image_size=16, patch_size=2, **sizes)
    assert (unet.config.sample_size, unet.config.in_channels, unet.config.out_channels) == (8, 12, 12)
    assert unet(patches, torch.tensor([3, 700])).sample.shape == patches.shape
    with pytest.raises(ValueError, match="patch_size=3"):
        build_unet(image_size=16, patch_size=3, **sizes)
    with pytest.raises(ValueError, match="patch_size = 2 is not divisible by 2\\^2"):  # 16 px / 8 = 2 positions; 3 levels halve twice
        build_unet(image_size=16, patch_size=8, block_out_channels=(8, 16, 16), attention_levels=(False, False, True), norm_num_groups=4)


def test_default_cpu_unet_is_about_two_million_parameters() -> None:
    unet = build_unet(image_size=32, patch_size=2, cross_attention_dim=128, encoder_hid_dim=384, global_dim=64)  # the hybrid's
    assert 1.0e6 < count_parameters(unet) < 3.0e6


@pytest.mark.parametrize("builder", ["plain", "conditional"])
def test_time_scale_shift_modulates_every_resnet_block(builder: str) -> None:
    sizes = dict(block_out_channels=(8, 16), attention_levels=(False, True), attention_head_dim=4, norm_num_groups=4, patch_size=1)
    extra = dict(cross_attention_dim=16, encoder_hid_dim=24, global_dim=6) if builder == "conditional" else {}
    additive, adagn = build_unet(image_size=16, **sizes, **extra), build_unet(image_size=16, time_scale_shift=True, **sizes, **extra)
    assert additive.config.resnet_time_scale_shift == "default" and adagn.config.resnet_time_scale_shift == "scale_shift"

    def resnets(unet: torch.nn.Module) -> list[torch.nn.Module]:
        return [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]

    pairs = list(zip(resnets(additive), resnets(adagn), strict=True))
    assert pairs  # one scale and one shift per channel instead of a bias
    assert all(b.time_emb_proj.out_features == 2 * a.time_emb_proj.out_features for a, b in pairs)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    kwargs = dict(encoder_hidden_states=torch.randn(2, 5, 24), class_labels=torch.randn(2, 6)) if extra else {}
    assert adagn(x, t, **kwargs).sample.shape == x.shape
