"""The diffusion baselines: one class, two conditionings; training, CFG, sampling, reconstruction, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from baselines.ddpm import DiffusionBaseline
from models.conditioners import NoConditioning
from models.generative import ReconstructionSettings
from tests.test_baselines_common import INFO, TinyData, assert_images, build, conditions_of, make_batch, tiny_trainer

TINY = {
    "unet": {"block_out_channels": [8, 16], "attention_levels": [False, True], "attention_head_dim": 4, "norm_num_groups": 4},
    "sampler": {"name": "ddim", "steps": 3},
}


class TextLike(NoConditioning):
    """A conditioner that claims text conditioning, which a baseline must refuse."""

    kind = "text"


@pytest.mark.parametrize("name", ["ddpm", "ddpm_class"])
def test_fast_dev_run(name: str) -> None:
    model = build(name, **TINY)
    assert isinstance(model, DiffusionBaseline)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = tiny_trainer(fast_dev_run=2)
    trainer.fit(model, datamodule=TinyData())
    assert trainer.global_step == 2 and {"train/loss", "val/loss"} <= set(trainer.logged_metrics)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_two_differ_only_in_conditioning() -> None:
    plain, labelled = build("ddpm", **TINY), build("ddpm_class", **TINY)
    assert plain.conditioning == "none" and isinstance(plain.conditioner, NoConditioning) and plain.sampling.guidance_scale == 1.0
    assert labelled.conditioning == "label" and labelled.sampling.guidance_scale == 3.0 and labelled.drop_prob == 0.1
    assert plain.nfe() == 3 and labelled.nfe() == 6  # CFG: two evaluations per step
    plain_keys = set(plain.state_dict())
    extra = set(labelled.state_dict()) - plain_keys
    assert plain_keys <= set(labelled.state_dict())
    assert extra and all(k.startswith("conditioner.") for k in extra)
    assert plain.noise.config == labelled.noise.config
    with pytest.raises(Exception, match="conditioner must be one of"):
        build("ddpm", **TINY, conditioner={"_target_": "tests.test_baselines_ddpm.TextLike", "_partial_": True})


def test_label_embedding_reaches_the_unet_and_guidance_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("ddpm_class", **{**TINY, "guidance": {"drop_prob": 0.5}}).train()
    batch = make_batch(12)
    seen: dict[str, torch.Tensor] = {}
    original = model.unet.forward
    monkeypatch.setattr(model.unet, "forward", lambda *args, **kwargs: seen.update(kwargs) or original(*args, **kwargs))
    torch.manual_seed(0)
    out = model._step(batch)
    out["loss"].backward()
    assert model.conditioner.embedding.tables["label"].weight.grad.abs().sum() > 0
    # a dropped row gets exactly the unconditional embedding, a kept row its own
    with torch.no_grad():
        own, null = model.conditioner(batch, 12).class_labels, model.conditioner.null(12).class_labels
    dropped = (seen["class_labels"] == null).all(dim=1)
    assert 0 < int(dropped.sum()) < 12 and out["dropped"].item() == pytest.approx(dropped.float().mean().item())
    assert torch.equal(seen["class_labels"][~dropped], own[~dropped]) and not torch.equal(own, null)


def test_generate_follows_labels_and_seed() -> None:
    model = build("ddpm_class", **TINY).eval()
    with torch.no_grad():  # a random embedding so that labels visibly matter before training
        for table in model.conditioner.embedding.tables.values():
            table.weight.normal_(std=3.0)
    conditions = conditions_of(make_batch(4))
    images = model.generate(conditions, 4, generator=torch.Generator().manual_seed(0))
    assert_images(images, 4)
    assert torch.equal(images, model.generate(conditions, 4, generator=torch.Generator().manual_seed(0)))
    other = {**conditions, "label": (conditions["label"] + 1) % 3}
    assert not torch.allclose(images, model.generate(other, 4, generator=torch.Generator().manual_seed(0)))
    assert_images(model.generate(None, 2, generator=torch.Generator().manual_seed(0)), 2)  # unconditional draw
    assert model.noise.last_nfe == 3


def test_reconstruct_at_strength() -> None:
    model = build("ddpm", **{**TINY, "sampler": {"name": "ddim", "steps": 4}}).eval()
    batch = make_batch(3)
    half = ReconstructionSettings(strength=0.5, projection_steps=0)
    reconstruction = model.reconstruct(batch, half, generator=torch.Generator().manual_seed(0))
    assert_images(reconstruction, 3)
    assert model.noise.last_nfe == 2  # the last half of the 4-step schedule
    assert "0.5*T" in model.reconstruction_protocol(half)
    assert torch.allclose(model.reconstruct(batch, ReconstructionSettings(strength=0.0, projection_steps=0)), batch["image"])


@pytest.mark.parametrize("name", ["ddpm", "ddpm_class"])
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = build(name, **TINY)
    trainer = tiny_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyData())
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    conditions = conditions_of(make_batch(2, seed=3)) if name == "ddpm_class" else None
    expected = model.eval().generate(conditions, 2, generator=torch.Generator().manual_seed(5))
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    rebuilt = build(name, **TINY)
    rebuilt.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["data_info"] == INFO.to_dict()
    assert torch.equal(expected, rebuilt.eval().generate(conditions, 2, generator=torch.Generator().manual_seed(5)))
