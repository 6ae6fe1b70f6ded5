"""The GAN baseline: manual optimisation (both optimisers step), EMA, projection, sampling, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from baselines.gan import GAN
from baselines.gan_networks import Discriminator, Generator, num_levels
from models.generative import ReconstructionSettings
from tests.test_baselines_common import RECONSTRUCTION, INFO, TinyData, assert_images, build, conditions_of, make_batch, tiny_trainer

TINY = {"latent_dim": 8, "generator_width": 8, "discriminator_width": 8, "max_width": 16, "condition_dim": 8}


def test_networks_follow_the_image_size() -> None:
    assert [num_levels(s) for s in (8, 16, 32, 64)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="power-of-two"):
        num_levels(24)
    generator, discriminator = Generator(32, 8, 8, 32), Discriminator(32, 8, 32, INFO)
    images = generator(torch.randn(3, 8))
    assert images.shape == (3, 3, 32, 32) and images.abs().max() <= 1
    assert discriminator(images, conditions_of(make_batch(3))).shape == (3,)


def test_fast_dev_run_steps_both_optimisers() -> None:
    model = build("gan", **TINY, conditional=True)
    assert isinstance(model, GAN) and not model.automatic_optimization
    generator_before = [p.detach().clone() for p in model.generator.parameters()]
    discriminator_before = [p.detach().clone() for p in model.discriminator.parameters()]
    embedding_before = [p.detach().clone() for p in model.condition_embedding.parameters()]
    ema_before = [p.detach().clone() for p in model.generator_ema.parameters()]
    trainer = tiny_trainer(fast_dev_run=2)
    trainer.fit(model, datamodule=TinyData())
    changed = lambda before, module: any(not torch.equal(b, a) for b, a in zip(before, module.parameters()))  # noqa: E731
    assert changed(generator_before, model.generator), "generator did not step"
    assert changed(discriminator_before, model.discriminator), "discriminator did not step"
    assert changed(embedding_before, model.condition_embedding), "generator's condition embedding did not step"
    assert changed(ema_before, model.generator_ema), "EMA generator did not follow"
    # Lightning counts both optimiser steps of a batch: fast_dev_run's 2 steps are one batch
    assert trainer.global_step == 2 and int(model.generator_ema.n_averaged) == 1
    assert {"train/loss", "train/loss_d", "train/loss_g"} <= set(trainer.logged_metrics)
    validated = trainer.validate(model, datamodule=TinyData(), verbose=False)[0]
    assert validated["val/loss"] >= 0
    # all parameters trainable again after the toggling, except the averaged copy
    assert all(p.requires_grad for p in model.generator.parameters()) and all(p.requires_grad for p in model.discriminator.parameters())
    assert not any(p.requires_grad for p in model.generator_ema.parameters())


def test_losses_are_hinge() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert GAN.discriminator_loss(real, fake) == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert GAN.generator_loss(fake) == pytest.approx(1.0)


def test_generate_shapes_seeds_and_fixed_noise() -> None:
    model = build("gan", **TINY).eval()
    images = model.generate(None, 5, generator=torch.Generator().manual_seed(1))
    assert_images(images, 5)
    assert torch.equal(images, model.generate(None, 5, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(images, model.generate(None, 5, generator=torch.Generator().manual_seed(2)))
    # one image does not depend on the rest of its batch (BatchNorm in eval mode)
    assert torch.allclose(images[:2], model.generate(None, 2, generator=torch.Generator().manual_seed(1)), atol=1e-6)
    fixed = model.generate(None, 4)  # no generator: the fixed sample noise buffer
    assert torch.equal(fixed, model.generate(None, 4))
    assert "sample_noise" in model.state_dict()


def test_projection_reconstruct_reduces_error() -> None:
    torch.manual_seed(0)
    model = build("gan", **TINY).eval()
    batch = make_batch(3)
    assert "5 Adam steps" in model.reconstruction_protocol(RECONSTRUCTION)
    generator = torch.Generator().manual_seed(0)
    start = model.reconstruct(batch, ReconstructionSettings(strength=0.5, projection_steps=0), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the projection enables gradients itself
        projected = model.reconstruct(batch, ReconstructionSettings(strength=0.5, projection_steps=30), generator=generator)
    assert_images(projected, 3)
    error = lambda x: float(((x - batch["image"]) ** 2).mean())  # noqa: E731
    assert error(projected) < error(start)
    assert all(p.grad is None for p in model.parameters())  # only the latent was optimised


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build("gan", **TINY, conditional=True)
    trainer = tiny_trainer(max_steps=4, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(model, datamodule=TinyData())
    path = tmp_path / "gan.ckpt"
    trainer.save_checkpoint(path)
    conditions = conditions_of(make_batch(4, seed=5))
    expected = model.eval().generate(conditions, 4, generator=torch.Generator().manual_seed(7))
    checkpoint = torch.load(path, weights_only=True)
    rebuilt = build("gan", **TINY, conditional=True)
    rebuilt.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["data_info"] == INFO.to_dict()
    assert torch.equal(expected, rebuilt.eval().generate(conditions, 4, generator=torch.Generator().manual_seed(7)))
