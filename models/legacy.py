"""Checkpoints written before the diffusion models became one ``DiffusionModule``, read in today's layout.

Their model config was flat: ``unet`` (with the hybrid's ``cross_attention_dim``), ``noise``,
``sampler``, ``guidance_scale`` and ``cfg.drop_prob``, the hybrid's ``text_encoder``, ``fusion``
(with ``prior_prob`` and ``reference_source``) and ``align`` (weight and head settings side by
side), the baselines' ``conditioning`` and ``embedding``, and ``recon_strength`` /
``gan_projection_steps``, which the evaluation now passes in. Their state dicts keep the
conditioning under ``fusion.`` and ``condition_embedding.``, today ``conditioner.fusion.`` and
``conditioner.embedding.``. A setting the old YAML left out takes the default the old code had;
so does a data setting that has no default today (``allow_upscale``, absent from the phantom's).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from models.fusion import upgrade_settings

HYBRID = "models.hybrid.HybridDiffusion"
BASELINE = "baselines.ddpm.DiffusionBaseline"
STATE_PREFIXES = {"fusion.": "conditioner.fusion.", "condition_embedding.": "conditioner.embedding."}
# The old code's Python defaults for settings an old YAML might not name.
OLD_NOISE = {"prediction_type": "epsilon", "min_snr_gamma": None, "snr_floor": 0.0}
OLD_SAMPLER = {"name": "ddim", "steps": 50}


def upgrade_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored run config with its ``model`` and ``data`` read in today's layout."""
    upgraded = dict(config)
    if isinstance(config.get("model"), dict):
        upgraded["model"] = upgrade_fusion_normalization(upgrade_model_config(config["model"]))
    if isinstance(config.get("data"), dict) and "allow_upscale" not in config["data"]:
        upgraded["data"] = {**config["data"], "allow_upscale": False}  # the data module's former default
    return upgraded


def upgrade_fusion_normalization(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """A hybrid config whose fusion predates ``input_normalization`` keeps the ImageNet normalisation it was fitted with."""
    conditioner = model_cfg.get("conditioner")
    fusion = conditioner.get("fusion") if isinstance(conditioner, dict) else None
    if not isinstance(fusion, dict) or "input_normalization" in fusion:
        return model_cfg
    return {**model_cfg, "conditioner": {**conditioner, "fusion": upgrade_settings(fusion)}}


def is_legacy(model_cfg: dict[str, Any]) -> bool:
    """Whether a checkpoint's ``model`` config has the former diffusion layout (or a GAN's projection steps)."""
    if model_cfg.get("_target_") in (HYBRID, BASELINE):
        return "conditioner" not in model_cfg
    return "gan_projection_steps" in model_cfg


def upgrade_model_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Today's ``model`` config for a checkpoint's former one (unchanged when it is current)."""
    if not is_legacy(model_cfg):
        return model_cfg
    old = dict(model_cfg)
    target = old.pop("_target_")
    if target not in (HYBRID, BASELINE):  # the GAN: the evaluation passes the projection steps now
        old.pop("gan_projection_steps")
        return {"_target_": target, **old}
    unet = dict(old.pop("unet", {}))
    cross_attention_dim = unet.pop("cross_attention_dim", 128)
    labelled = target == HYBRID or old.pop("conditioning", "none") == "label"
    new = {
        "_target_": target,
        "unet": {"_target_": "models.unets.build_unet", "_partial_": True, "patch_size": 1, **unet},
        "noise": {"_target_": "models.diffusion.NoiseProcess", **OLD_NOISE, **old.pop("noise", {})},
        "sampler": {**OLD_SAMPLER, **old.pop("sampler", {})},
        "guidance": {
            "scale": float(old.pop("guidance_scale", 3.0 if target == HYBRID else 1.0)) if labelled else 1.0,
            "drop_prob": float(old.pop("cfg", {}).get("drop_prob", 0.1)) if labelled else 0.0,
        },
        "optimizer": old.pop("optimizer"),
        "warmup_steps": old.pop("warmup_steps", 100),
    }
    for unplaced in ("recon_strength", "guidance_scale", "cfg"):  # read above where they mean anything
        old.pop(unplaced, None)
    if target == HYBRID:
        new.update(hybrid_parts(old, cross_attention_dim))
    elif labelled:
        new["conditioner"] = {"_target_": "models.conditioners.Label", "_partial_": True, **old.pop("embedding", {})}
    else:
        old.pop("embedding", None)
        new["conditioner"] = {"_target_": "models.conditioners.NoConditioning", "_partial_": True}
    if old:
        raise ValueError(f"the checkpoint's model config has settings this code cannot place: {sorted(old)}")
    return new


def hybrid_parts(old: dict[str, Any], cross_attention_dim: int) -> dict[str, Any]:
    """The hybrid's conditioner and alignment settings, taken out of ``old``."""
    fusion = upgrade_settings(dict(old.pop("fusion", {})))
    align = {"weight": 0.1, "channels": [32, 64], "pool": 1, "blur": 0.0, **old.pop("align", {})}
    return {
        "conditioner": {
            "_target_": "models.text_fusion.TextFusion",
            "_partial_": True,
            "cross_attention_dim": cross_attention_dim,
            "prior_prob": fusion.pop("prior_prob", 0.5),
            "reference_source": fusion.pop("reference_source", "table"),
            "text_encoder": {"_target_": "models.text_encoder.TextEncoder", "_partial_": True, **old.pop("text_encoder", {})},
            "fusion": {"_target_": "models.fusion.FusionConditioner", "_partial_": True, **fusion},
        },
        "align": {"weight": align.pop("weight"), "head": {"_target_": "models.hybrid.AlignmentHead", "_partial_": True, **align}},
    }


def upgrade_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Former state-dict keys of the conditioning moved under ``conditioner.``."""
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in STATE_PREFIXES if key.startswith(p)), None)
        renamed[STATE_PREFIXES[prefix] + key[len(prefix):] if prefix else key] = value
    return renamed
