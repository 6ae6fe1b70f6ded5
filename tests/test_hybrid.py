"""The hybrid LightningModule on synthetic batches: shapes, CFG dropout, the reference rule, fusion, round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments import CONFIG_DIR
from models.fusion import FusionConditioner, attribute_matrix
from models.generative import ReconstructionSettings, SamplingSettings
from models.hybrid import HybridDiffusion
from tests.helpers import experiment_names
from tests.test_baselines_common import INFO, model_config


def tiny_model_config(cache_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The shipped model YAML (on model/_diffusion.yaml), shrunk to 16 px and tiny widths."""
    tiny = {
        "unet": {"block_out_channels": [8, 16], "attention_levels": [False, True], "attention_head_dim": 4, "norm_num_groups": 4},
        "sampler": {"name": "ddim", "steps": 4},
        "conditioner": {
            "cross_attention_dim": 16,
            "text_encoder": {"cache_dir": str(cache_dir)},
            "fusion": {"backbone": "test_resnet", "pretrained": False, "input_size": 16, "text_components": 4, "visual_components": 4, "max_fit_images": 24},
        },
        "align": {"weight": 0.1, "head": {"channels": [8, 16]}},  # off in the shipped YAML; on here so that its tests run
    }
    return model_config("hybrid", **OmegaConf.merge(tiny, overrides))


def build(cache_dir: Path, **overrides: Any) -> HybridDiffusion:
    return instantiate(tiny_model_config(cache_dir, **overrides), data_info=INFO.to_dict())


def make_batch(n: int, seed: int = 0, with_index: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    border = torch.randint(0, 2, (n,), generator=g)
    hair = torch.randint(-1, 2, (n,), generator=g)  # -1: unknown
    tone = torch.randint(0, 7, (n,), generator=g)
    captions = [f"{INFO.class_names[l]} lesion with a {INFO.attribute_classes['border'][b]} border" for l, b in zip(labels.tolist(), border.tolist())]
    # Each label has its own brightness so the visual codes differ between labels.
    images = (0.4 * labels.float() - 0.4).view(n, 1, 1, 1) + 0.2 * torch.randn(n, 3, 16, 16, generator=g)
    batch = {"image": images.clamp(-1, 1), "caption": captions, "label": labels, "attributes": {"border": border, "hair": hair}, "skin_tone": tone}
    if with_index:
        batch["index"] = torch.arange(n)
    return batch


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hybrid_cache")


@pytest.fixture(scope="module")
def model(cache_dir: Path) -> HybridDiffusion:
    model = build(cache_dir)
    model.conditioner.fit([make_batch(24, seed=1, with_index=True)])
    return model


def test_training_step_shapes_and_gradients(model: HybridDiffusion) -> None:
    model.train()
    out = model._step(make_batch(6))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert set(out) >= {"diffusion_loss", "align_loss", "head_loss", "head_accuracy"}
    model.zero_grad()
    out["loss"].backward()
    assert model.unet.conv_in.weight.grad.abs().sum() > 0
    assert model.unet.class_embedding.linear_1.weight.grad.abs().sum() > 0  # the global vector is used
    assert model.align_head.classifiers["label"].weight.grad.abs().sum() > 0


def test_generate_and_reconstruct_contract(model: HybridDiffusion) -> None:
    model.eval()
    batch = make_batch(3)
    conditions = {k: v for k, v in batch.items() if k != "image"}
    images = model.generate(conditions, 3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert model.nfe() == 2 * 4  # DDIM-4 with guidance: conditional + unconditional per step
    recon = model.reconstruct(batch, ReconstructionSettings(strength=0.5, projection_steps=0), generator=torch.Generator().manual_seed(0))
    assert recon.shape == batch["image"].shape and torch.isfinite(recon).all()
    free = model.generate({"caption": ["a malignant lesion with an irregular border"] * 2}, 2)  # label parsed from text
    assert free.shape == (2, 3, 16, 16)
    unconditional = model.generate(None, 2)
    assert unconditional.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver++"])
def test_sampler_switching(model: HybridDiffusion, sampler: str) -> None:
    model.eval()
    conditions = {k: v for k, v in make_batch(2).items() if k != "image"}
    images = model.generate(conditions, 2, generator=torch.Generator().manual_seed(0), sampling=SamplingSettings(sampler=sampler))
    assert torch.isfinite(images).all() and model.noise.last_nfe == 4
    assert model.sampling_description()["sampler"] == "ddim"  # the model's own setting is untouched


def test_guidance_dropout_rate_and_null_conditioning(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(cache_dir, guidance={"drop_prob": 0.3}, align={"weight": 0.0})
    model.conditioner.fit([make_batch(24, seed=1, with_index=True)])
    model.train()
    seen: dict[str, torch.Tensor] = {}
    original = model.unet.forward

    def spy(sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> Any:
        seen.update(global_=kwargs["class_labels"], tokens=kwargs["encoder_hidden_states"], mask=kwargs["encoder_attention_mask"])
        return original(sample, timestep, **kwargs)

    monkeypatch.setattr(model.unet, "forward", spy)
    torch.manual_seed(0)
    out = model._step(make_batch(400, seed=2))
    dropped = (seen["global_"] == 0).all(dim=1)
    assert abs(dropped.float().mean().item() - 0.3) < 0.07
    assert out["dropped"].item() == pytest.approx(dropped.float().mean().item())
    null = model.conditioner.null(1)
    length = null.encoder_hidden_states.shape[1]
    assert torch.equal(seen["tokens"][dropped][:, :length], null.encoder_hidden_states.expand(int(dropped.sum()), -1, -1))
    assert not seen["mask"][dropped][:, length:].any()  # the empty caption's padding stays masked


def test_reference_is_never_the_target() -> None:
    fusion = FusionConditioner(text_dim=8, attribute_names=("border",), backbone="test_resnet", pretrained=False, visual_components=4, max_fit_images=12)
    features = torch.randn(12, fusion.image_features(torch.zeros(1, 3, 16, 16)).shape[1])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2])
    fusion.fit(torch.randn(12, 8), features, labels, torch.full((12, 2), -1), indices=torch.arange(100, 112))
    codes = fusion.table_codes[:12]
    for _ in range(20):
        picked = fusion.table_reference(labels, exclude=torch.arange(100, 112))
        matches = (picked[:, None] - codes[None]).abs().sum(-1).argmin(1)  # which table row was picked
        assert (matches != torch.arange(12)).all()
        assert (labels[matches] == labels).all()


def test_hybrid_experiments_give_training_batches_what_the_reference_needs() -> None:
    # Without data.with_index the table references never happen: every row falls back to the prior.
    checked = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        configs = {exp: compose(config_name="config", overrides=[f"exp={exp}"]) for exp in experiment_names()}
    for exp, cfg in configs.items():
        conditioner = cfg.model.get("conditioner")
        if cfg.model._target_ != "models.hybrid.HybridDiffusion" or not conditioner.fusion.enabled:
            continue
        needs = "with_index" if conditioner.reference_source == "table" else "with_reference"
        assert cfg.data[needs], f"exp={exp}: conditioner.reference_source={conditioner.reference_source} needs data.{needs}=true"
        checked.append(exp)
    assert "hybrid" in checked and len(checked) >= 5


def test_training_uses_the_batch_reference_not_the_image(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(cache_dir, conditioner={"reference_source": "batch", "prior_prob": 0.0})
    model.conditioner.fit([make_batch(24, seed=1, with_index=True)])
    model.train()
    batch = make_batch(4, seed=3)
    batch["reference"] = torch.rand(4, 3, 16, 16) * 2 - 1
    encoded: list[torch.Tensor] = []
    original = model.fusion.image_features
    monkeypatch.setattr(model.fusion, "image_features", lambda images, **k: encoded.append(images) or original(images, **k))
    model._step(batch)
    assert len(encoded) == 1 and torch.equal(encoded[0], batch["reference"])


def test_retrieval_prior_matches_attributes() -> None:
    fusion = FusionConditioner(text_dim=8, attribute_names=("border",), backbone="test_resnet", pretrained=False, visual_components=4, max_fit_images=8)
    labels = torch.tensor([0, 0, 1, 1])
    batch = {"label": labels, "attributes": {"border": torch.tensor([0, 1, 0, 1])}, "skin_tone": torch.tensor([0, 0, 2, 2])}
    features = torch.randn(4, int(fusion._cnn.num_features))
    fusion.fit(torch.randn(4, 8), features, labels, attribute_matrix(batch, ("border",), 4))
    codes = fusion.table_codes[:4]
    query = attribute_matrix({"attributes": {"border": torch.tensor([1, -1])}}, ("border",), 2)
    prior = fusion.prior(torch.tensor([0, 1]), query)
    torch.testing.assert_close(prior[0], codes[1])  # benign + irregular: exactly one image
    torch.testing.assert_close(prior[1], codes[2:4].mean(0))  # malignant, border unknown: both
    assert fusion.table_size == 4 and fusion.fitted
    # In training the target is left out, though it always matches best; a label's only entry stays.
    fusion.fit(torch.randn(4, 8), features, labels, attribute_matrix(batch, ("border",), 4), indices=torch.tensor([10, 11, 12, 13]))
    own = attribute_matrix(batch, ("border",), 4)
    torch.testing.assert_close(fusion.prior(labels, own), codes)  # without exclusion: each row's own code
    left_out = fusion.prior(labels, own, exclude=torch.tensor([10, 11, 12, 13]))
    torch.testing.assert_close(left_out, codes[[1, 0, 3, 2]])  # the other image of the same diagnosis
    fusion.fit(torch.randn(3, 8), features[:3], labels[:3], own[:3], indices=torch.tensor([10, 11, 12]))
    lone = fusion.prior(labels[2:3], own[2:3], exclude=torch.tensor([12]))
    torch.testing.assert_close(lone, fusion.table_codes[2:3])  # the only malignant entry is kept


def test_fusion_ablation(cache_dir: Path) -> None:
    model = instantiate(tiny_model_config(cache_dir, conditioner={"fusion": {"enabled": False}}, align={"weight": 0.0}), data_info=INFO.to_dict())
    assert model.fusion.output_dim == 4 and model.align_head is None
    model.conditioner.fit([make_batch(8)])
    model.train()
    assert torch.isfinite(model._step(make_batch(4))["loss"])


def test_checkpoint_round_trip_reproduces_samples(model: HybridDiffusion, cache_dir: Path, tmp_path: Path) -> None:
    from models.checkpoint import load_generator

    model.eval()
    model.run_config = {"model": tiny_model_config(cache_dir)}
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    assert not any(k.startswith("conditioner.text_encoder.") for k in checkpoint["state_dict"])  # frozen encoder not saved
    loaded = load_generator(path)
    conditions = {k: v for k, v in make_batch(3, seed=5).items() if k != "image"}
    expected = model.generate(conditions, 3, generator=torch.Generator().manual_seed(7))
    actual = loaded.generate(conditions, 3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(loaded.fusion.prior(torch.tensor([1]), torch.full((1, 3), -1)), model.fusion.prior(torch.tensor([1]), torch.full((1, 3), -1)))


def test_alignment_head_sees_the_pooled_image_only() -> None:
    from models.hybrid import AlignmentHead

    torch.manual_seed(0)
    pooled = AlignmentHead({"label": 3}, (8, 16), groups=4, pool=2)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    images.requires_grad_(True)
    pooled(images)["label"].sum().backward()
    # Within each 2 x 2 patch the gradient is constant: a pattern inside a patch cannot move the logits.
    grad = images.grad
    torch.testing.assert_close(grad, F.interpolate(F.avg_pool2d(grad, 2), scale_factor=2, mode="nearest"))
    with pytest.raises(ValueError, match="align.pool must be >= 1"):
        AlignmentHead({"label": 3}, pool=0)


def _high_frequency_share(gradient: torch.Tensor) -> float:
    """Share of a (H, W) map's spectral energy at periods of 4 pixels or shorter (the plaids)."""
    spectrum = torch.fft.fft2(gradient).abs() ** 2
    frequency = torch.fft.fftfreq(gradient.shape[-1]).abs()
    fine = (frequency[:, None] >= 1 / 4) | (frequency[None, :] >= 1 / 4)
    return float(spectrum[fine].sum() / spectrum.sum())


def test_blurred_alignment_head_sends_only_smooth_gradients_into_x0() -> None:
    from models.hybrid import AlignmentHead

    shares = {}
    for name, kwargs in {"pooled": dict(pool=2), "blurred": dict(pool=1, blur=1.5)}.items():
        torch.manual_seed(0)
        head = AlignmentHead({"label": 3}, (8, 16), groups=4, **kwargs)
        images = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
        head(images)["label"][:, 0].sum().backward()
        shares[name] = sum(_high_frequency_share(g) for g in images.grad.flatten(0, 1)) / 12
    # The pooled head's block-constant gradient, through stride-2 convolutions, is a fine grid:
    # much of its energy is at periods of 2-4 pixels. The blur leaves little there.
    assert shares["pooled"] > 0.3
    assert shares["blurred"] < 0.1
    with pytest.raises(ValueError, match="align.blur must be >= 0"):
        AlignmentHead({"label": 3}, blur=-1.0)
