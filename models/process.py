"""What every noise process offers the ``DiffusionModule``: a training loss and diffusers-driven samplers.

Three processes implement it: ``models.diffusion.NoiseProcess`` (DDPM-style discrete schedule),
``models.flow_matching.FlowMatching`` (rectified flow) and ``models.edm.EDM`` (Karras et al. 2022).
A model hands in a ``denoise_fn(sample, timestep) -> output`` closure (its UNet with the
conditioning bound) and gets back losses and images; the process alone knows how a noise level
is written as the UNet's timestep input, what the network's output means (``prediction_type``)
and which diffusers schedulers can sample it.

API shared by all three:

- ``training_loss(denoise_fn, x0, generator=None) -> (loss, aux)``: ``aux`` holds ``timesteps``
  (B,) the UNet's time input, ``noisy``, ``noise``, ``model_output``, ``pred_x0`` (with gradient),
  ``weight`` (B,) the loss weights and ``alpha_bar`` (B,) the signal's share of the noisy input's
  power (a_bar of a DDPM; the same quantity for the other processes).
- ``sample(denoise_fn, shape, sampler=..., steps=..., generator=None, device=None, progress=False)``.
- ``reconstruct(denoise_fn, x0, strength=..., sampler=..., steps=...)``: noise ``x0`` to the
  schedule's ``strength`` point and denoise from there (SDEdit / img2img).
- ``scheduler(sampler, steps=None)`` the diffusers scheduler (export saves it); ``check_sampler``;
  ``nfe(sampler, steps, guided)``; ``last_nfe`` (denoiser calls of the last draw); ``describe()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn
from tqdm.auto import tqdm

DenoiseFn = Callable[[Tensor, Tensor], Tensor]

# Every sampler name any process knows (a command line is checked against these before a model loads);
# each process says which of them it can use (``DiffusionProcess.samplers``).
SAMPLER_NAMES = ("ddpm", "ddim", "dpm_solver++", "euler", "heun")
SAMPLER_ALIASES = {"dpmsolver++": "dpm_solver++", "dpm++": "dpm_solver++", "dpm": "dpm_solver++", "dpm_solver": "dpm_solver++"}


def sampler_name(name: str) -> str:
    """Canonical sampler name; a clear error lists the valid ones."""
    key = SAMPLER_ALIASES.get(name.lower(), name.lower())
    if key not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler '{name}'; valid: {sorted(SAMPLER_NAMES)}")
    return key


def classifier_free_guidance(denoise_fn: DenoiseFn, guidance_scale: float) -> DenoiseFn:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + w * (cond - uncond)``.

    ``denoise_fn`` must expect a doubled batch whose first half is conditional and second half
    unconditional; the wrapped function takes the plain (B, C, H, W) batch, so conditional and
    unconditional outputs come from one network forward. The guided output is linear in the
    network's, so it means the same for every ``prediction_type``.
    """

    def guided(sample: Tensor, timestep: Tensor) -> Tensor:
        output = denoise_fn(torch.cat([sample, sample]), torch.cat([timestep, timestep]))  # (2B, C, H, W)
        cond, uncond = output.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    return guided


class DiffusionProcess(nn.Module):
    """Base class: the sampling loop and the reconstruction protocol over diffusers schedulers.

    Subclasses set ``samplers`` (name -> scheduler class), ``prediction_type`` and ``clip_sample``,
    and implement ``build_scheduler``, ``training_loss`` and ``noised``; ``model_time`` maps a
    scheduler timestep to the UNet's time input when the two differ.
    """

    samplers: ClassVar[dict[str, type[SchedulerMixin]]] = {}
    prediction_type: str
    clip_sample: bool

    def __init__(self) -> None:
        super().__init__()
        self.last_nfe = 0

    # ----------------------------------------------------------------------------------------
    # what subclasses provide
    def build_scheduler(self, sampler: str) -> SchedulerMixin:
        """A fresh diffusers scheduler of this process for a canonical sampler name in ``samplers``."""
        raise NotImplementedError

    def training_loss(self, denoise_fn: DenoiseFn, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def noised(self, x0: Tensor, noise: Tensor, scheduler: SchedulerMixin, index: int) -> Tensor:
        """``x0`` noised to the level of ``scheduler.timesteps[index]`` (the reconstruction's start)."""
        raise NotImplementedError

    def model_time(self, scheduler: SchedulerMixin, index: int, count: int, device: torch.device) -> Tensor:
        """The UNet's time input (count,) at step ``index`` of ``scheduler``: its timestep unless overridden."""
        return torch.full((count,), float(scheduler.timesteps[index]), device=device)

    def describe(self) -> str:
        """One line for the model card: the process, its parameterisation and schedule."""
        return f"{type(self).__name__}, prediction `{self.prediction_type}`"

    # ----------------------------------------------------------------------------------------
    # schedulers
    def check_sampler(self, name: str) -> str:
        """The canonical name of a sampler this process can use; else an error naming the ones it can."""
        key = sampler_name(name)
        if key not in self.samplers:
            raise ValueError(f"model.sampler.name={name}: {type(self).__name__} samples with {', '.join(self.samplers)}")
        return key

    def scheduler(self, sampler: str, steps: int | None = None) -> SchedulerMixin:
        """A fresh diffusers scheduler; ``set_timesteps(steps)`` done if given."""
        scheduler = self.build_scheduler(self.check_sampler(sampler))
        if steps is not None:
            limit = int(getattr(scheduler.config, "num_train_timesteps", 1000))
            if not 1 <= steps <= limit:
                raise ValueError(f"sampler steps must be in [1, {limit}], got {steps}")
            scheduler.set_timesteps(steps)
        return scheduler

    @staticmethod
    def configured(cls: type[SchedulerMixin], settings: dict[str, Any]) -> SchedulerMixin:
        """``cls`` built from the entries of ``settings`` its constructor takes."""
        accepted = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in settings.items() if k in accepted})

    def nfe(self, sampler: str, steps: int, guided: bool = False) -> int:
        """Network evaluations per image: one per scheduler timestep (Heun's 2N - 1), twice with guidance."""
        return len(self.scheduler(sampler, steps).timesteps) * (2 if guided else 1)

    # ----------------------------------------------------------------------------------------
    # sampling
    def _denoise_loop(
        self, denoise_fn: DenoiseFn, sample: Tensor, scheduler: SchedulerMixin, start: int,
        generator: torch.Generator | None, progress: bool,
    ) -> Tensor:
        """Run ``scheduler`` from its step ``start`` to the end."""
        self.last_nfe = 0
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        extra = {"generator": generator} if takes_generator else {}
        scale_input = getattr(scheduler, "scale_model_input", None)  # EDM's c_in; flow schedulers have none
        for index in tqdm(range(start, len(scheduler.timesteps)), disable=not progress, desc="sampling", leave=False):
            timestep = scheduler.timesteps[index]
            # 1. the network's output at this noise level (the scheduler scales its input where the process needs it)
            model_input = scale_input(sample, timestep) if scale_input is not None else sample
            model_output = denoise_fn(model_input, self.model_time(scheduler, index, sample.shape[0], sample.device))
            self.last_nfe += 1
            # 2. one step towards the clean sample by the scheduler's update rule
            sample = scheduler.step(model_output, timestep, sample, **extra).prev_sample
        return self._bounded(sample)

    def _bounded(self, sample: Tensor) -> Tensor:
        """Images are bounded to [-1, 1]; latents (``clip_sample`` false on the latent route) are not."""
        return sample.clamp(-1.0, 1.0) if self.clip_sample else sample

    @torch.no_grad()
    def sample(
        self, denoise_fn: DenoiseFn, shape: tuple[int, ...], *, sampler: str, steps: int,
        generator: torch.Generator | None = None, device: torch.device | str | None = None, progress: bool = False,
    ) -> Tensor:
        """Draw samples of ``shape`` (N, C, H, W) from pure noise; in [-1, 1] with ``clip_sample``.

        ``generator`` is a CPU generator: the same seed gives the same images on any device.
        """
        device = torch.device(device) if device is not None else self.device_of_buffers()
        scheduler = self.scheduler(sampler, steps)
        # x_T ~ N(0, I) scaled by the scheduler's initial sigma (~sigma_max for EDM; 1 for DDPM, and flow schedulers lack it)
        initial_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
        sample = torch.randn(shape, generator=generator, device="cpu").to(device) * initial_sigma
        return self._denoise_loop(denoise_fn, sample, scheduler, 0, generator, progress)

    @torch.no_grad()
    def reconstruct(
        self, denoise_fn: DenoiseFn, x0: Tensor, *, strength: float, sampler: str, steps: int,
        generator: torch.Generator | None = None, progress: bool = False,
    ) -> Tensor:
        """Noise real images to the ``strength`` point of the schedule and denoise them back (SDEdit, Meng et al. 2022).

        Runs the last ``round(strength * steps)`` steps of the ``steps``-step schedule, as the
        diffusers img2img pipelines do; strength 1 is a fresh sample, strength 0 returns ``x0``.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"reconstruction strength must be in [0, 1], got {strength}")
        scheduler = self.scheduler(sampler, steps)
        num_run = min(int(round(strength * steps)), steps)
        if num_run == 0:
            self.last_nfe = 0
            return self._bounded(x0)
        start = (steps - num_run) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)  # multistep solvers track their position
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(device=x0.device, dtype=x0.dtype)
        noisy = self.noised(x0, noise, scheduler, start)
        return self._denoise_loop(denoise_fn, noisy, scheduler, start, generator, progress)

    def device_of_buffers(self) -> torch.device:
        buffer = next(self.buffers(), None)
        return buffer.device if buffer is not None else torch.device("cpu")
