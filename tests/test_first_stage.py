"""The latent route's first stage: shapes, its fit, its figures against scikit-image, its cache and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torch.utils.data import Dataset

import models.first_stage as first_stage_module
from models.first_stage import FirstStage
from models.first_stage_fit import FitRecipe, fit_autoencoder, reconstruction_quality

FIT = {"steps": 40, "batch_size": 8, "lr": 3e-3, "kl_weight": 1e-6, "seed": 0}


class Images(Dataset):
    """Items in the batch contract around a stack of images (N, 3, H, W) in [-1, 1]."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": 0}


def Blobs(count: int, size: int = 16, seed: int = 0) -> Images:  # noqa: N802 (reads as the data set it makes)
    """Smooth coloured discs on a plain background: a learnable image family."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij"))
    centre, radius = torch.rand(count, 2, 1, 1, generator=g) - 0.5, 0.3 + 0.4 * torch.rand(count, 1, 1, generator=g)
    disc = torch.sigmoid((radius - (grid[None] - centre).norm(dim=1)) * 12)[:, None]  # (N, 1, H, W)
    colour, skin = torch.rand(count, 3, 1, 1, generator=g) * 2 - 1, torch.rand(count, 3, 1, 1, generator=g) * 0.5
    return Images((disc * colour + (1 - disc) * skin).clamp(-1, 1))


def tiny(image_size: int = 16, **settings: Any) -> FirstStage:
    options = dict(block_out_channels=[8, 16, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4, mid_attention=False,
                   fit=FIT, val_images=None, cache_dir=None)
    options.update(settings)
    torch.manual_seed(0)
    return FirstStage(image_size=image_size, **options)


@pytest.mark.parametrize("size", [16, 64, 128, 256])
def test_round_trip_shapes(size: int) -> None:
    stage = tiny(size, block_out_channels=[4, 8, 8])  # tiny widths: the shapes are the point
    images = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        latents = stage.encode(images)
        assert latents.shape == (2, 4, size // 4, size // 4) == (2, stage.latent_channels, stage.latent_size, stage.latent_size)
        assert stage.decode(latents).shape == images.shape
    assert not any(p.requires_grad for p in stage.parameters())  # frozen outside its own fit
    with pytest.raises(ValueError, match="not divisible by its downsampling 4"):
        tiny(18)


def test_latents_are_standardised_by_the_measured_statistics() -> None:
    stage = tiny()
    images = Blobs(6).images
    with torch.no_grad():
        raw = stage.vae.encode(images).latent_dist.mode()
        stage.latent_shift.fill_(0.3)
        stage.latent_scale.fill_(2.0)
        torch.testing.assert_close(stage.encode(images), (raw - 0.3) * 2.0)
        torch.testing.assert_close(stage.decode(stage.encode(images)), stage.vae.decode(raw).sample)


def test_a_short_fit_reduces_reconstruction_error_and_leaves_the_random_streams_alone() -> None:
    data = Blobs(64)
    stage = tiny()
    round_trip = lambda x: stage.vae.decode(stage.vae.encode(x).latent_dist.mode()).sample  # noqa: E731
    with torch.no_grad():
        before = reconstruction_quality(round_trip, data, None, 16)
    state = torch.get_rng_state()
    seconds = fit_autoencoder(stage.vae, data, FitRecipe.from_config(FIT))
    assert torch.equal(torch.get_rng_state(), state)  # a cache hit and a fresh fit leave the run's draws alike
    with torch.no_grad():
        after = reconstruction_quality(round_trip, data, None, 16)
    assert seconds > 0 and not any(p.requires_grad for p in stage.vae.parameters())
    assert after[0] > before[0] + 3.0, (before, after)  # PSNR gains several dB in 40 steps
    assert after[1] > before[1]


def adding(noise: torch.Tensor) -> Any:
    """A round trip that adds the next rows of ``noise`` to each batch it is given."""
    used = 0

    def round_trip(images: torch.Tensor) -> torch.Tensor:
        nonlocal used
        used += len(images)
        return images + noise[used - len(images) : used]

    return round_trip


@pytest.mark.parametrize("kind", ["blobs", "white_noise"])
def test_reconstruction_figures_follow_the_evaluation_and_match_scikit_image(kind: str) -> None:
    """The figures of ``evaluation.reconstruction.image_quality`` (torchmetrics) on the same images; scikit-image's
    PSNR, and its SSIM where the conventions meet: torchmetrics averages the SSIM map over the border rows too,
    scikit-image leaves them out, so they agree on images without structure (white noise, as the evaluation's test)."""
    from evaluation.reconstruction import image_quality

    g = torch.Generator().manual_seed(8)
    images = Blobs(5, size=32).images if kind == "blobs" else torch.rand(5, 3, 32, 32, generator=g) * 2 - 1
    noise = 0.2 * torch.randn(images.shape, generator=g)
    psnr, ssim, count = reconstruction_quality(adding(noise), Images(images), 4, 3)  # batches of 3 and 1
    noisy = (images[:4] + noise[:4]).clamp(-1, 1)
    reference = image_quality(noisy, images[:4])
    assert count == 4 and (psnr, ssim) == pytest.approx((reference["psnr"], reference["ssim"]), rel=1e-6)
    a, b = ((noisy + 1) / 2).double().numpy(), ((images[:4] + 1) / 2).double().numpy()
    assert psnr == pytest.approx(np.mean([sk_psnr(b[i], a[i], data_range=1.0) for i in range(4)]), rel=1e-4)
    if kind == "white_noise":
        reference_ssim = np.mean([sk_ssim(b[i], a[i], data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False) for i in range(4)])
        assert ssim == pytest.approx(reference_ssim, abs=2e-3)


def test_prepare_fits_once_then_loads_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, val = Blobs(48), Blobs(12, seed=1)
    first = tiny(cache_dir=str(tmp_path))
    record = first.prepare(train, val, "data-a")
    files = list((tmp_path / "first_stage").glob("*.safetensors"))
    assert [f.name for f in files] == [f"{first.cache_key('data-a')}.safetensors"]
    assert record["fitted"] and record["val_images"] == 12 and record["fit_steps"] == FIT["steps"]
    assert 5 < record["val_psnr"] < 60 and 0 < record["val_ssim"] <= 1
    assert record["scaling_factor"] > 0 and record["latent_shape"] == [4, 4, 4]
    with torch.no_grad():  # standardised on the training split
        latents = first.encode(torch.stack([train[i]["image"] for i in range(48)]))
    assert abs(float(latents.mean())) < 0.2 and 0.7 < float(latents.std()) < 1.3

    def no_fit(*args: Any, **kwargs: Any) -> float:
        raise AssertionError("a cached first stage was fitted again")

    monkeypatch.setattr(first_stage_module, "fit_autoencoder", no_fit)
    second = tiny(cache_dir=str(tmp_path))
    assert second.prepare(train, val, "data-a") == record
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    other = tiny(cache_dir=str(tmp_path), fit={**FIT, "lr": 1e-3})
    assert other.cache_key("data-a") != first.cache_key("data-a") != first.cache_key("data-b")


def test_a_first_stage_of_other_data_or_settings_is_refused(tmp_path: Path) -> None:
    train, val = Blobs(16), Blobs(8, seed=1)
    fitted = tiny(cache_dir=str(tmp_path), fit={**FIT, "steps": 2})
    fitted.prepare(train, val, "data-a")
    (path,) = (tmp_path / "first_stage").glob("*.safetensors")
    with pytest.raises(ValueError, match="fitted on data 'data-a', this run's data is 'data-b'"):
        tiny(path=str(path), fit={**FIT, "steps": 2}).prepare(train, val, "data-b")
    with pytest.raises(ValueError, match="other model.first_stage settings \\(block_out_channels\\)"):
        tiny(path=str(path), fit={**FIT, "steps": 2}, block_out_channels=[8, 16, 32]).prepare(train, val, "data-a")
    renamed = tmp_path / "first_stage" / f"{tiny(fit={**FIT, 'steps': 2}).cache_key('data-b')}.safetensors"
    path.rename(renamed)  # a file put where another data set's cache goes is still read by its own record
    with pytest.raises(ValueError, match="fitted on data 'data-a'"):
        tiny(cache_dir=str(tmp_path), fit={**FIT, "steps": 2}).prepare(train, val, "data-b")
    with pytest.raises(FileNotFoundError, match="model.first_stage.path"):
        tiny(path=str(tmp_path / "absent.safetensors")).prepare(train, val, "data-a")


def test_fit_recipe_names_bad_keys() -> None:
    with pytest.raises(ValueError, match="missing \\['seed'\\], unknown \\['sead'\\]"):
        FitRecipe.from_config({k: v for k, v in FIT.items() if k != "seed"} | {"sead": 0})
    with pytest.raises(ValueError, match="must be positive"):
        FitRecipe.from_config({**FIT, "steps": 0})
