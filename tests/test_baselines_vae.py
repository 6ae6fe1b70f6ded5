"""The VAE baseline: training with Lightning, the reconstruction path, generation, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import torch

from baselines.vae import VAE
from tests.test_baselines_common import RECONSTRUCTION, INFO, TinyData, assert_images, build, conditions_of, make_batch, tiny_trainer

TINY = {"channels": [8, 16], "latent_dim": 8, "norm_num_groups": 4, "condition_dim": 8, "frequency_weight": 0.1}


def test_fast_dev_run_trains_and_logs() -> None:
    model = build("vae", **TINY)
    assert isinstance(model, VAE) and model.conditioning == "none"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = tiny_trainer(fast_dev_run=2)
    trainer.fit(model, datamodule=TinyData())
    assert trainer.global_step == 2
    assert {"train/loss", "train/mse", "train/kl", "train/gradient_loss", "train/frequency_loss"} <= set(trainer.logged_metrics)
    assert "val/loss" in trainer.logged_metrics
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_kl_warmup_and_loss_terms() -> None:
    model = build("vae", **TINY, kl_warmup_steps=10)
    assert model.current_kl_weight() == model.kl_weight / 10  # no trainer: step 0 of the ramp
    out = model._step(make_batch(4))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["kl"] >= 0 and out["mse"] > 0
    out["loss"].backward()
    assert model.encoder.head.weight.grad.abs().sum() > 0


def test_reconstruction_is_the_posterior_mean() -> None:
    torch.manual_seed(0)
    model = build("vae", **TINY).eval()
    batch = make_batch(5)
    first = model.reconstruct(batch, RECONSTRUCTION)
    assert_images(first, 5)
    assert torch.equal(first, model.reconstruct(batch, RECONSTRUCTION))  # deterministic: no posterior sampling
    assert "posterior mean" in model.reconstruction_protocol(RECONSTRUCTION)


def test_reconstruction_improves_with_training() -> None:
    """A few hundred steps on one batch bring the reconstruction error well below its start."""
    torch.manual_seed(0)
    model = build("vae", **{**TINY, "kl_warmup_steps": 0, "gradient_weight": 0.0, "frequency_weight": 0.0})
    batch = make_batch(8)
    error = lambda: float(((model.reconstruct(batch, RECONSTRUCTION) - batch["image"]) ** 2).mean())  # noqa: E731
    start = error()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model._step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert error() < 0.5 * start


def test_conditional_vae_follows_conditions() -> None:
    model = build("vae", **TINY, conditional=True).eval()
    assert model.conditioning == "label"
    batch = make_batch(4)
    same = torch.Generator().manual_seed(0)
    images = model.generate(conditions_of(batch), 4, generator=same)
    assert_images(images, 4)
    other = {**conditions_of(batch), "label": (batch["label"] + 1) % 3}
    assert not torch.allclose(images, model.generate(other, 4, generator=torch.Generator().manual_seed(0)))


def test_generate_is_seeded_and_round_trips(tmp_path: Path) -> None:
    model = build("vae", **TINY).eval()
    images = model.generate(None, 6, generator=torch.Generator().manual_seed(3))
    assert_images(images, 6)
    assert torch.equal(images, model.generate(None, 6, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(images, model.generate(None, 6, generator=torch.Generator().manual_seed(4)))
    torch.save(model.state_dict(), tmp_path / "vae.pt")
    rebuilt = build("vae", **TINY)
    rebuilt.load_state_dict(torch.load(tmp_path / "vae.pt", weights_only=True))
    assert torch.equal(images, rebuilt.eval().generate(None, 6, generator=torch.Generator().manual_seed(3)))
    assert rebuilt.data_info == INFO
