"""One diffusion LightningModule for ``hybrid``, ``ddpm`` and ``ddpm_class``: UNet + noise process + conditioner.

Three layers, as MONAI's generative models: the denoiser network (``models.unets.build_unet``),
the noise process (``models.process.DiffusionProcess``: the DDPM ``NoiseProcess``, ``FlowMatching`` or
``EDM``: schedule, loss, samplers) and this module,
which binds a conditioner's output to the UNet (one closure), drops conditioning for
classifier-free guidance, and trains, samples and reconstructs. The models differ only in their
conditioner (``models.conditioners``) and guidance settings, so the comparison table compares
conditioning and nothing else. A subclass adds training losses through ``auxiliary_loss``.

Two routes to an image (``route=pixel|latent``): the UNet denoises pixels (on patches), or the
latents of a frozen first stage (``models.first_stage.FirstStage``), which is fitted on the
training split before the training clock starts; ``encode``/``decode`` are the identity on pixels.
Generation and reconstruction return images in [-1, 1] on either route.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from datamodules.info import DataInfo
from models.conditioners import Conditioner, Conditioning
from models.containers import plain_dict
from models.first_stage import FirstStage
from models.generative import Conditions, ReconstructionSettings, SamplingSettings, SingleLossModule
from models.process import DenoiseFn, DiffusionProcess, classifier_free_guidance
from models.schedules import Progress, with_warmup_cosine
from models.unets import patchify, unpatchify


def required_keys(group: Mapping[str, Any] | None, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A config group as a dict holding exactly ``keys``; a clear error names what is missing or unknown."""
    values = plain_dict(group)
    missing, unknown = set(keys) - set(values), set(values) - set(keys)
    if missing or unknown:
        raise ValueError(f"model.{name} needs the keys {list(keys)}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return values


def partial_setting(factory: Callable[..., Any], name: str) -> Any:
    """The value a (partial) factory will use for argument ``name``: given, or its signature default."""
    if isinstance(factory, functools.partial) and name in factory.keywords:
        return factory.keywords[name]
    return inspect.signature(factory).parameters[name].default


class DiffusionModule(SingleLossModule):
    """Diffusion on pixels or first-stage latents, conditioned through a pluggable conditioner.

    Args (the keys of ``experiments/configs/model/_diffusion.yaml`` and the model files on it):
        conditioner: builds the ``models.conditioners.Conditioner`` (a Hydra partial) given
            ``data_info`` and ``time_embed_dim``.
        unet: builds the UNet (partial of ``models.unets.build_unet`` with its size keys).
        noise: the noise process (``model/noise/<ddpm|flow|edm>.yaml``): schedule, target, loss weighting, samplers.
        sampler: ``{name, steps}`` for generation and reconstruction; the names the process samples with
            (DDPM: ddpm, ddim, dpm_solver++; flow: euler, heun, dpm_solver++; EDM: euler, dpm_solver++).
        guidance: ``{scale, drop_prob}``: classifier-free guidance weight at sampling (1 = none)
            and the probability of dropping a training row's conditioning (enables guidance).
        optimizer: partial optimiser (``torch.optim.AdamW``) given the parameter groups.
        warmup_steps: linear warm-up steps, then cosine decay to 0 at ``trainer.max_steps``.
        first_stage: None (pixels), or builds the ``FirstStage`` (a partial given ``image_size``)
            whose latents the UNet denoises (``configs/route/latent.yaml``).
    """

    def __init__(
        self,
        data_info: DataInfo | dict[str, Any],
        conditioner: Callable[..., Conditioner],
        unet: Callable[..., nn.Module],
        noise: DiffusionProcess,
        sampler: Mapping[str, Any],
        guidance: Mapping[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup_steps: int,
        first_stage: Callable[..., FirstStage] | None = None,
    ) -> None:
        super().__init__(data_info)
        self.save_hyperparameters(ignore=["data_info", "noise"])
        sampler_cfg = required_keys(sampler, "sampler", ("name", "steps"))
        guidance_cfg = required_keys(guidance, "guidance", ("scale", "drop_prob"))
        self.noise = noise
        self.sampling = SamplingSettings(noise.check_sampler(sampler_cfg["name"]), int(sampler_cfg["steps"]), float(guidance_cfg["scale"]))
        self.drop_prob = float(guidance_cfg["drop_prob"])
        self.optimizer_factory = optimizer
        self.warmup_steps = int(warmup_steps)
        # diffusers UNets embed the timestep in 4 x the first level's channels; a label vector is added there.
        time_embed_dim = 4 * int(partial_setting(unet, "block_out_channels")[0])
        self.conditioner = conditioner(data_info=self.data_info, time_embed_dim=time_embed_dim)
        self.first_stage = first_stage(image_size=self.image_size) if first_stage is not None else None
        channels, side = (3, self.image_size) if self.first_stage is None else (self.first_stage.latent_channels, self.first_stage.latent_size)
        self.sample_shape = (channels, side, side)  # what the noise process draws and denoises, per image
        self.unet = unet(image_size=side, in_channels=channels, out_channels=channels, **self.conditioner.unet_inputs())
        self.patch_size = side // int(self.unet.config.sample_size)
        self.schedule_progress: Progress | None = None  # the learning-rate decay's clock: steps, unless a budget sets it

    @property
    def conditioning(self) -> str:  # type: ignore[override]
        return self.conditioner.kind

    # ---------------------------------------------------------------------------------------
    # sampling settings
    def effective_sampling(self, sampling: SamplingSettings | None = None) -> SamplingSettings:
        """``sampling`` with its None fields filled from the configured settings."""
        given = sampling or SamplingSettings()
        configured = self.sampling
        return SamplingSettings(
            sampler=self.noise.check_sampler(given.sampler) if given.sampler is not None else configured.sampler,
            steps=int(given.steps) if given.steps is not None else configured.steps,
            guidance_scale=float(given.guidance_scale) if given.guidance_scale is not None else configured.guidance_scale,
        )

    def _guidance_scale(self, settings: SamplingSettings) -> float:
        return settings.guidance_scale if self.conditioning != "none" else 1.0

    def nfe(self, sampling: SamplingSettings | None = None) -> int:
        settings = self.effective_sampling(sampling)
        return self.noise.nfe(settings.sampler, settings.steps, guided=self._guidance_scale(settings) != 1.0)

    def sampling_description(self, sampling: SamplingSettings | None = None) -> dict[str, Any]:
        settings = self.effective_sampling(sampling)
        guidance = settings.guidance_scale if self.conditioning != "none" else None  # nothing to guide
        return {"sampler": settings.sampler, "steps": settings.steps, "guidance_scale": guidance}

    # ---------------------------------------------------------------------------------------
    # pixels <-> the space the UNet denoises
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> the diffusion's samples: themselves, or their first-stage latents (no gradient)."""
        if self.first_stage is None:
            return images
        with torch.no_grad():
            return self.first_stage.encode(images)

    def decode(self, samples: Tensor) -> Tensor:
        """The diffusion's samples -> images (differentiable, for losses on the clean-image estimate)."""
        return samples if self.first_stage is None else self.first_stage.decode(samples)

    def provenance(self) -> dict[str, Any]:
        return {"route": "pixel" if self.first_stage is None else "latent", "patch_size": self.patch_size,
                "first_stage": None if self.first_stage is None else self.first_stage.record()}

    def on_fit_start(self) -> None:
        """Fit (or load from the cache) the first stage on the training split, and encode its latent cache when asked;
        Lightning's clock starts after this hook."""
        if self.first_stage is None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "train_set", None) is None or getattr(datamodule, "val_set", None) is None:
            raise RuntimeError("the latent route fits its first stage on the datamodule's train_set and measures it on val_set")
        progress = self.trainer.progress_bar_callback is not None
        if not bool(self.first_stage.fitted):
            if self.trainer.is_global_zero:
                self.first_stage.prepare(datamodule.train_set, datamodule.val_set, self.data_info.fingerprint, progress=progress)
            self.first_stage.broadcast(lambda tensor: self.trainer.strategy.broadcast(tensor, src=0))  # one fit for all ranks
        if self.first_stage.cache_latents and self.first_stage.latent_cache is None:
            if not getattr(datamodule.train_set, "with_pose", False):
                raise ValueError("model.first_stage.cache_latents=true needs data.with_pose=true: a step looks its latents up by image and pose")
            # rank 0 encodes and writes the cache file; the other ranks read it (or encode alike without a cache folder)
            if self.trainer.is_global_zero:
                self.first_stage.prepare_latents(datamodule.train_set, self.data_info.fingerprint, progress=progress)
            self.trainer.strategy.barrier()
            if not self.trainer.is_global_zero:
                self.first_stage.prepare_latents(datamodule.train_set, self.data_info.fingerprint)

    def training_samples(self, batch: dict[str, Any]) -> Tensor:
        """The clean samples of a batch: its latent-cache entries (index and pose, training split), else ``encode``."""
        cache = None if self.first_stage is None else self.first_stage.latent_cache
        if self.training and cache is not None and "pose" in batch and "index" in batch:
            return cache.lookup(batch["index"], batch["pose"]).to(self.device)
        return self.encode(batch["image"])

    # ---------------------------------------------------------------------------------------
    # the denoiser
    def denoiser(self, conditioning: Conditioning) -> DenoiseFn:
        """Bind conditioning to the UNet: ``fn(x_t (B, 3, H, W), t (B,)) -> model output``."""
        inputs = conditioning.unet_kwargs()

        def denoise(sample: Tensor, timestep: Tensor) -> Tensor:
            out = self.unet(patchify(sample, self.patch_size), timestep, **inputs).sample
            return unpatchify(out, self.patch_size)

        return denoise

    def forward(self, sample: Tensor, timestep: Tensor, conditioning: Conditioning) -> Tensor:
        return self.denoiser(conditioning)(sample, timestep)

    def guided_denoiser(self, conditions: Conditions | None, count: int, guidance_scale: float) -> DenoiseFn:
        """The sampling denoiser: conditional with classifier-free guidance, or unconditional."""
        if conditions is None or self.conditioning == "none":
            return self.denoiser(self.conditioner.null(count))
        conditioning = self.conditioner(conditions, count)
        if guidance_scale == 1.0:
            return self.denoiser(conditioning)
        both = conditioning.cat(self.conditioner.null(count))  # [cond; uncond], 2B rows
        return classifier_free_guidance(self.denoiser(both), guidance_scale)

    # ---------------------------------------------------------------------------------------
    # training
    def auxiliary_loss(self, batch: dict[str, Any], aux: dict[str, Tensor], conditioned: Tensor) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Extra training loss beside the diffusion loss: ``(loss, values to log)``, or None.

        ``aux`` is ``NoiseProcess.training_loss``'s (timesteps, noisy input, ``pred_x0`` with
        gradient, ...); ``conditioned`` (B,) marks the rows that kept their conditioning.
        """
        return None

    def _step(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        clean = self.training_samples(batch)  # (B, C, h, w): pixels, or latents on the latent route
        count = clean.shape[0]
        conditioning = self.conditioner(batch, count, training=self.training)
        dropped = torch.zeros(count, dtype=torch.bool, device=self.device)
        out: dict[str, Tensor] = {}
        if self.training and self.drop_prob > 0:
            dropped = torch.rand(count, device=self.device) < self.drop_prob
            conditioning = conditioning.where(dropped, self.conditioner.null(count))
            out["dropped"] = dropped.float().mean()
        loss, aux = self.noise.training_loss(self.denoiser(conditioning), clean, generator=generator)
        out["loss"] = loss
        extra = self.auxiliary_loss(batch, aux, ~dropped) if self.training else None
        if extra is not None:
            out.update(extra[1], diffusion_loss=loss, loss=loss + extra[0])
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Fixed noise and timesteps per batch, so val/loss moves only when the model does.
        out = self._step(batch, generator=torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: every trainable parameter in one."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        # A CPU-time budget (callbacks/cpu_budget.py) sets schedule_progress: the cosine decay then ends with the budget.
        return with_warmup_cosine(self.optimizer_factory(self.parameter_groups()), self.warmup_steps, self.trainer.max_steps,
                                  self.schedule_progress)

    # ---------------------------------------------------------------------------------------
    # the GenerativeModule contract
    @torch.no_grad()
    def generate(self, conditions: Conditions | None, num_images: int, *, generator: torch.Generator | None = None,
                 progress: bool = False, sampling: SamplingSettings | None = None) -> Tensor:
        settings = self.effective_sampling(sampling)
        denoise = self.guided_denoiser(conditions, num_images, self._guidance_scale(settings))
        samples = self.noise.sample(
            denoise, (num_images, *self.sample_shape), sampler=settings.sampler, steps=settings.steps, generator=generator,
            device=self.device, progress=progress,
        )
        return self.decode(samples).clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, Any], settings: ReconstructionSettings, *, generator: torch.Generator | None = None,
                    sampling: SamplingSettings | None = None) -> Tensor:
        drawing = self.effective_sampling(sampling)
        images = batch["image"].to(self.device)
        conditions = {k: v for k, v in batch.items() if k not in ("image", "reference")}
        denoise = self.guided_denoiser(conditions, images.shape[0], self._guidance_scale(drawing))
        samples = self.noise.reconstruct(
            denoise, self.encode(images), strength=settings.strength, sampler=drawing.sampler, steps=drawing.steps, generator=generator
        )
        return self.decode(samples).clamp(-1.0, 1.0)

    def reconstruction_protocol(self, settings: ReconstructionSettings, sampling: SamplingSettings | None = None) -> str:
        drawing = self.effective_sampling(sampling)
        guidance = f", guidance {self._guidance_scale(drawing)}" if self.conditioning != "none" else ""
        subject, decoded = ("each image", "") if self.first_stage is None else ("each image's first-stage latent", ", then decode")
        return (
            f"img2img: noise {subject} to t = {settings.strength}*T (eval.recon_strength), denoise with "
            f"{self.conditioner.reconstruction_input}; {drawing.sampler}, {drawing.steps} steps{guidance}{decoded}"
        )
