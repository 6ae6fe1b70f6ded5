"""Checkpoints of the former flat model layout load as today's DiffusionModule, with the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from models.checkpoint import load_generator
from models.legacy import STATE_PREFIXES, upgrade_model_config, upgrade_run_config
from tests.test_baselines_common import INFO, conditions_of, make_batch

UNET = {"block_out_channels": [8, 16], "attention_levels": [False, True], "attention_head_dim": 4, "norm_num_groups": 4, "patch_size": 2}
OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.01}
NOISE = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample", "min_snr_gamma": 5, "snr_floor": 1}


def old_hybrid(cache_dir: Path) -> dict[str, Any]:
    """A model config as the former layout wrote it (model/hybrid.yaml before the DiffusionModule)."""
    return {
        "_target_": "models.hybrid.HybridDiffusion",
        "unet": {**UNET, "cross_attention_dim": 16}, "noise": NOISE, "sampler": {"name": "ddim", "steps": 3}, "guidance_scale": 1.5,
        "text_encoder": {"name": "all-MiniLM-L6-v2", "max_length": 77, "cache_dir": str(cache_dir)},
        "fusion": {"enabled": True, "cnn": "test_resnet", "pretrained": True, "text_components": 4, "visual_components": 4,
                   "max_fit_images": 16, "prior_prob": 0.5, "reference_source": "table"},
        "cfg": {"drop_prob": 0.1}, "align": {"weight": 0.0, "channels": [8, 16], "pool": 2, "blur": 0.0},
        "optimizer": OPTIMIZER, "warmup_steps": 100, "recon_strength": 0.5,
    }


OLD_DDPM_CLASS = {
    "_target_": "baselines.ddpm.DiffusionBaseline", "conditioning": "label", "unet": UNET, "noise": NOISE,
    "sampler": {"name": "ddim", "steps": 3}, "guidance_scale": 3.0, "cfg": {"drop_prob": 0.1},
    "embedding": {"use_attributes": True, "use_skin_tone": True}, "optimizer": OPTIMIZER, "warmup_steps": 100, "recon_strength": 0.5,
}


def saved_in_the_old_layout(model: torch.nn.Module, old_config: dict[str, Any], path: Path) -> Path:
    """``model``'s weights under the former state-dict keys, beside the former config."""
    back = {new: old for old, new in STATE_PREFIXES.items()}
    state = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in back if key.startswith(p)), None)
        state[back[prefix] + key[len(prefix):] if prefix else key] = value
    torch.save({"dermsynth_config": {"model": old_config}, "data_info": INFO.to_dict(), "state_dict": state}, path)
    return path


def test_old_hybrid_and_ddpm_class_checkpoints_load_with_their_weights(tmp_path: Path) -> None:
    hybrid_cfg = upgrade_model_config(old_hybrid(tmp_path))
    assert hybrid_cfg["guidance"] == {"scale": 1.5, "drop_prob": 0.1} and hybrid_cfg["unet"]["patch_size"] == 2
    fusion = hybrid_cfg["conditioner"]["fusion"]  # the CNN named 'cnn' had no weights on disk: the seeded random one
    assert (fusion["backbone"], fusion["pretrained"], fusion["input_size"]) == ("test_resnet", False, None)
    assert hybrid_cfg["align"] == {"weight": 0.0, "head": {"_target_": "models.hybrid.AlignmentHead", "_partial_": True,
                                                           "channels": [8, 16], "pool": 2, "blur": 0.0}}
    conditions = conditions_of(make_batch(2))
    for name, old in (("hybrid", old_hybrid(tmp_path)), ("ddpm_class", OLD_DDPM_CLASS)):
        torch.manual_seed(0)
        model = instantiate(upgrade_model_config(old), _partial_=True)(data_info=INFO).eval()
        if name == "hybrid":
            model.conditioner.fit([{**make_batch(16, seed=1), "index": torch.arange(16)}])
        loaded = load_generator(saved_in_the_old_layout(model, old, tmp_path / f"{name}.ckpt"))
        expected = model.generate(conditions, 2, generator=torch.Generator().manual_seed(4))
        assert torch.equal(loaded.generate(conditions, 2, generator=torch.Generator().manual_seed(4)), expected), name
        assert "conditioner" in loaded.run_config["model"]  # saved again, it is written in today's layout


def test_old_plain_ddpm_and_gan_settings_translate() -> None:
    plain = upgrade_model_config({**OLD_DDPM_CLASS, "conditioning": "none", "guidance_scale": 1.0, "cfg": {"drop_prob": 0.0}})
    assert plain["conditioner"] == {"_target_": "models.conditioners.NoConditioning", "_partial_": True}
    assert plain["guidance"] == {"scale": 1.0, "drop_prob": 0.0}
    no_prediction = upgrade_model_config({**OLD_DDPM_CLASS, "noise": {}, "sampler": {}})  # the former code's defaults
    assert no_prediction["noise"]["prediction_type"] == "epsilon" and no_prediction["sampler"] == {"name": "ddim", "steps": 50}
    assert upgrade_model_config({"_target_": "baselines.gan.GAN", "latent_dim": 8, "gan_projection_steps": 200}) == {
        "_target_": "baselines.gan.GAN", "latent_dim": 8}
    current = upgrade_model_config(plain)
    assert current is plain  # today's layout passes unchanged
    data = upgrade_run_config({"model": plain, "data": {"_target_": "datamodules.SkinDataModule", "source": "phantom"}})["data"]
    assert data["allow_upscale"] is False  # required today; the phantom's former YAML did not name it
