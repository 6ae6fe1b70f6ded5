"""Export a trained diffusion generator in the diffusers ``save_pretrained`` layout.

    python -m experiments.export ckpt=PATH out=DIR

``DIR/unet/`` and ``DIR/scheduler/`` load with plain diffusers
(``UNet2DConditionModel.from_pretrained(DIR, subfolder="unet")``,
``DDIMScheduler.from_pretrained(DIR, subfolder="scheduler")``); a latent-route model adds its
first stage as ``DIR/vae/`` (``AutoencoderKL.from_pretrained(DIR, subfolder="vae")``, with the
measured ``scaling_factor`` and ``shift_factor`` in its config); the hybrid adds
``DIR/text_encoder/``, ``DIR/tokenizer/`` (Hugging Face layout) and ``DIR/fusion/`` (PCA and
retrieval-prior buffers as safetensors, plus a JSON of how to rebuild the CNN). ``DIR/README.md``
is a short model card, ``DIR/NOTICE`` the training data's licence and the intended use;
``DIR/dermsynth.json`` keeps the data vocabulary and run config.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from safetensors.torch import save_file

from datamodules.atomic import apply_umask_mode
from datamodules.licences import INTENDED_USE, licence_of, write_notice
from experiments.output_folder import check_output_folder, clear_output_folder, write_manifest
from experiments.command import command
from models.containers import safe_container
from models.generative import GenerativeModule


def export_model(model: GenerativeModule, out: str | Path) -> Path:
    """Write ``model`` (a diffusion generator with ``unet`` and ``noise``) to ``out``; returns ``out``."""
    out = Path(out)
    if not hasattr(model, "unet") or not hasattr(model, "noise"):
        raise ValueError(f"{type(model).__name__} is not a diffusion generator (no unet / noise process) and has no diffusers export")
    out.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(str(out / "unet"), safe_serialization=True)
    sampling = model.sampling_description()
    model.noise.scheduler(sampling["sampler"]).save_pretrained(str(out / "scheduler"))
    first_stage = getattr(model, "first_stage", None)
    if first_stage is not None:
        save_first_stage(first_stage, out / "vae")
    text_encoder = getattr(model, "text_encoder", None)
    if text_encoder is not None:
        text_encoder.save_pretrained(out / "text_encoder", out / "tokenizer")
    fusion = getattr(model, "fusion", None)
    if fusion is not None:
        (out / "fusion").mkdir(exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in fusion.state_dict().items()}, str(out / "fusion" / "fusion.safetensors"))
        conditioner_cfg = safe_container(model.hparams["conditioner"])  # the Hydra partial as plain values
        fusion_cfg = {k: v for k, v in conditioner_cfg["fusion"].items() if not k.startswith("_")}
        (out / "fusion" / "config.json").write_text(json.dumps({
            "enabled": fusion.enabled, "weight": fusion.weight, "text_components": fusion.text_components,
            "visual_components": fusion.visual_components, "attribute_names": list(fusion.attribute_names),
            "prior_prob": model.conditioner.prior_prob, "reference_source": model.conditioner.reference_source, **fusion_cfg,
        }, indent=1, default=str))
    head = getattr(model, "align_head", None)
    if head is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out / "alignment_head.safetensors"))
    (out / "dermsynth.json").write_text(json.dumps({
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "data_info": model.data_info.to_dict(),
        "guidance_scale": sampling["guidance_scale"],
        "sampler": {"name": sampling["sampler"], "steps": sampling["steps"]},
        "patch_size": getattr(model, "patch_size", 1),
        "first_stage": None if first_stage is None else first_stage.record(),
        "run_config": model.run_config,
    }, indent=1, default=str))
    (out / "README.md").write_text(model_card(model, sampling))
    apply_umask_mode(out.rglob("*.safetensors"))  # shared as any other file, not 0600
    write_notice(out, model.data_info.source, "A generator")
    return out


def save_first_stage(first_stage: Any, folder: Path) -> None:
    """The ``AutoencoderKL`` in the diffusers layout; its config carries the latent statistics the UNet was trained on."""
    vae = copy.deepcopy(first_stage.vae)  # the model's own config stays as it was
    vae.register_to_config(scaling_factor=float(first_stage.latent_scale), shift_factor=float(first_stage.latent_shift))
    vae.save_pretrained(str(folder), safe_serialization=True)


def model_card(model: GenerativeModule, sampling: dict[str, Any]) -> str:
    info = model.data_info
    params = sum(p.numel() for p in model.unet.parameters())
    unet_cls = type(model.unet).__name__
    text = getattr(getattr(model, "text_encoder", None), "name", None)
    patch = int(getattr(model, "patch_size", 1))
    lines = [
        f"# DermSynth {type(model).__name__} ({info.source}, {info.image_size} px)",
        "",
        f"Synthetic dermatology image generator trained with DermSynth on `{info.source}`. {INTENDED_USE}",
        "",
        f"- training data: {licence_of(info.source)[0]}; licence: {licence_of(info.source)[1]} (see `NOTICE`)",
        f"- denoiser: `{unet_cls}`, {params / 1e6:.2f} M parameters; noise process: {model.noise.describe()}",
        f"- sampler: `{sampling['sampler']}`, {sampling['steps']} steps, guidance scale {sampling['guidance_scale'] or 'n/a'}",
        f"- diagnoses: {', '.join(info.class_names)}; attributes: {', '.join(info.attribute_names) or 'none'}",
    ]
    first_stage = getattr(model, "first_stage", None)
    if first_stage is not None:
        record = first_stage.record()
        lines.append(
            f"- latent diffusion: the UNet denoises {record['latent_shape']} latents of the autoencoder in `vae/` (fitted on the "
            f"training split; validation PSNR {record['val_psnr']} dB, SSIM {record['val_ssim']}); decode with "
            "`vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample`"
        )
    if patch > 1:
        lines.append(
            f"- patches: the UNet works on {patch}x{patch} patches folded into channels; give it "
            f"`torch.nn.functional.pixel_unshuffle(x, {patch})` and apply `pixel_shuffle(out, {patch})` to its output"
        )
    if text:
        lines += [
            f"- text encoder: `{text}` (frozen; `text_encoder/`, `tokenizer/`); cross-attention on its token states",
            "- global conditioning (`class_labels` of the UNet): fused PCA codes of the pooled text embedding and a CNN "
            "image code (`fusion/`); rebuilding it needs DermSynth's `models.fusion`",
        ]
    imports = ["DDIMScheduler", unet_cls, *(["AutoencoderKL"] if first_stage is not None else [])]
    lines += [
        "",
        "```python",
        "from diffusers import " + ", ".join(sorted(imports)),
        f'unet = {unet_cls}.from_pretrained(DIR, subfolder="unet")',
        'scheduler = DDIMScheduler.from_pretrained(DIR, subfolder="scheduler")',
        *(['vae = AutoencoderKL.from_pretrained(DIR, subfolder="vae")'] if first_stage is not None else []),
        "```",
        "",
    ]
    return "\n".join(lines)


# Every entry export_model may write (export.json lists them, so overwrite=true replaces only these)
EXPORT_ENTRIES = ["unet", "scheduler", "vae", "text_encoder", "tokenizer", "fusion", "alignment_head.safetensors",
                  "dermsynth.json", "README.md", "NOTICE"]


def export(cfg: DictConfig) -> Path:
    """The command (``cfg`` composed from configs/export.yaml): load ``cfg.ckpt``, write ``cfg.out``.

    ``out`` is new or empty, or an earlier export (``export.json``) that ``overwrite=true`` replaces.
    """
    from models.checkpoint import load_generator

    previous = check_output_folder(cfg.out, "export", overwrite=bool(cfg.overwrite))  # before anything loads
    model = load_generator(cfg.ckpt, use_ema=bool(cfg.use_ema), local_files=cfg.local_files)
    clear_output_folder(cfg.out, previous)
    write_manifest(cfg.out, "export", EXPORT_ENTRIES, {"ckpt": str(cfg.ckpt)}, complete=False)
    out = export_model(model, cfg.out)
    write_manifest(cfg.out, "export", EXPORT_ENTRIES, {"ckpt": str(cfg.ckpt)}, complete=True)
    return out


@command("export")
def main(cfg: DictConfig) -> None:
    print(f"exported to {export(cfg).absolute()}", flush=True)


if __name__ == "__main__":
    main()
