"""The Gaussian noise process shared by every diffusion model here (hybrid, ddpm, ddpm_class).

It knows nothing of conditioning: a model hands in a ``denoise_fn(sample, timestep) -> output``
closure (its UNet with the conditioning already bound) and gets back losses and images.

API (``process = NoiseProcess(beta_schedule="squaredcos_cap_v2", prediction_type="sample")``):

- ``process.training_loss(denoise_fn, x0, generator=None) -> (loss, aux)``: draw ``t`` and noise,
  build ``x_t``, regress the ``prediction_type`` target; optional min-SNR weighting.
  ``aux`` holds ``timesteps`` (B,), ``noisy`` (B,C,H,W), ``noise``, ``model_output``,
  ``pred_x0`` (the model's clean-image estimate, with gradient, for auxiliary losses) and
  ``weight`` (B,) the per-sample loss weights.
- ``process.sample(denoise_fn, shape, sampler=..., steps=..., generator=None, device=None,
  progress=False) -> x0`` (in [-1, 1] with ``clip_sample``): DDPM, DDIM or DPM-Solver++ via diffusers schedulers.
- ``process.reconstruct(denoise_fn, x0, strength=..., sampler=..., steps=..., generator=None,
  progress=False) -> x0_hat``: the img2img protocol (noise ``x0`` to ``t = strength * T``, denoise).
- ``classifier_free_guidance(denoise_fn, guidance_scale) -> denoise_fn``: wraps a denoiser whose
  conditioning was bound for a doubled batch ``[cond; uncond]``; one forward per step.
- ``process.scheduler(sampler, steps)`` the configured diffusers scheduler (also what export saves);
  ``process.nfe(sampler, steps, guided)`` network evaluations per image; ``process.last_nfe`` counts
  the ``denoise_fn`` calls of the last ``sample``/``reconstruct``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn
from tqdm.auto import tqdm

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers names; sample = the clean image x0

SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm_solver++": DPMSolverMultistepScheduler,
}
SAMPLER_ALIASES = {"dpmsolver++": "dpm_solver++", "dpm++": "dpm_solver++", "dpm": "dpm_solver++", "dpm_solver": "dpm_solver++"}


def sampler_name(name: str) -> str:
    """Canonical sampler name; a clear error lists the valid ones."""
    key = SAMPLER_ALIASES.get(name.lower(), name.lower())
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; valid: {sorted(SAMPLERS)}")
    return key


def classifier_free_guidance(denoise_fn: DenoiseFn, guidance_scale: float) -> DenoiseFn:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + w * (cond - uncond)``.

    ``denoise_fn`` must expect a doubled batch whose first half is conditional and second half
    unconditional; the wrapped function takes the plain (B, C, H, W) batch, so conditional and
    unconditional outputs come from one network forward.
    """

    def guided(sample: Tensor, timestep: Tensor) -> Tensor:
        output = denoise_fn(torch.cat([sample, sample]), torch.cat([timestep, timestep]))  # (2B, C, H, W)
        cond, uncond = output.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    return guided


def shifted_betas(alphas_cumprod: Tensor, snr_shift: float) -> list[float]:
    """Betas whose a_bar has ``snr_shift`` times the SNR of ``alphas_cumprod``: logSNR moves by log(snr_shift)."""
    log_snr = torch.logit(alphas_cumprod.double(), eps=1e-12)  # log(a_bar / (1 - a_bar))
    shifted = torch.sigmoid(log_snr + torch.log(torch.tensor(float(snr_shift), dtype=torch.float64)))
    previous = torch.cat([torch.ones(1, dtype=torch.float64), shifted[:-1]])
    return (1.0 - shifted / previous).clamp(0.0, 0.999).tolist()  # a_bar_t = prod(1 - beta), capped as diffusers' cosine


class NoiseProcess(nn.Module):
    """Forward noising, training target and samplers of a DDPM (Ho et al. 2020).

    Args:
        num_train_timesteps: T, the number of noise levels in training.
        beta_schedule: ``squaredcos_cap_v2`` (cosine, Nichol & Dhariwal 2021; better at low
            resolution) or ``linear`` / ``scaled_linear``.
        beta_start, beta_end: range of the linear schedules.
        prediction_type: ``epsilon`` (Ho et al.), ``v_prediction`` (Salimans & Ho 2022) or
            ``sample`` (the network outputs x0; no noise to copy through the network, so a small,
            briefly trained model does not leave per-pixel noise in its samples).
        min_snr_gamma: Min-SNR-gamma loss weighting (Hang et al. 2023, arXiv:2303.09556), e.g. 5;
            None trains with the plain (unweighted) MSE. In x0-loss terms the weight is min(SNR, gamma).
        snr_floor: lower bound of that x0-loss weight, max(min(SNR, gamma), floor); 1 keeps the
            high-noise levels at their plain x0-loss weight (the "truncated SNR" of Salimans & Ho
            2022) while the low-noise levels, where fine detail is decided, gain up to gamma.
            0 is plain Min-SNR. Needs ``min_snr_gamma``.
        clip_sample: clip the predicted clean image to [-1, 1] in DDPM/DDIM steps and the drawn
            samples at the end; false for latents, which are standardised, not bounded.
        timestep_spacing: ``trailing`` starts sampling at t = T-1, where the cosine schedule is
            pure noise (Lin et al. 2023, arXiv:2305.08891); ``leading`` / ``linspace`` as diffusers.
        lambda_min_clipped: lower bound of log-SNR for DPM-Solver++. Without it the cosine
            schedule's last steps diverge (sample std in the thousands); -5.1 per diffusers docs.
        snr_shift: multiplies the schedule's SNR at every t ("simple diffusion", Hoogeboom et al.
            2023, sec. 3.1: a schedule tuned at resolution r0 keeps its effect at r with
            (r0 / r)^2, since averaging s x s pixels raises their SNR s^2-fold). 1 = unchanged;
            otherwise the shifted betas go to every sampler as ``trained_betas``.
    """

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "sample",
        min_snr_gamma: float | None = 5.0,
        snr_floor: float = 1.0,
        clip_sample: bool = True,
        timestep_spacing: str = "trailing",
        lambda_min_clipped: float = -5.1,
        snr_shift: float = 1.0,
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got '{prediction_type}'")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive or None, got {min_snr_gamma}")
        if snr_floor < 0 or (snr_floor > 0 and (min_snr_gamma is None or snr_floor > min_snr_gamma)):
            raise ValueError(f"snr_floor must be in [0, min_snr_gamma] and needs min_snr_gamma, got {snr_floor} (gamma {min_snr_gamma})")
        if snr_floor > 0 and prediction_type == "epsilon":
            raise ValueError("snr_floor needs prediction_type sample or v_prediction: as eps-loss weight it is floor / SNR, unbounded as t -> T")
        self.config: dict[str, Any] = dict(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            clip_sample=clip_sample,
            clip_sample_range=1.0,
            timestep_spacing=timestep_spacing,
            lambda_min_clipped=lambda_min_clipped,
            algorithm_type="dpmsolver++",
            solver_order=2,
            set_alpha_to_one=True,
            steps_offset=0,
        )
        self.prediction_type = prediction_type
        self.min_snr_gamma = min_snr_gamma
        self.snr_floor = float(snr_floor)
        self.num_train_timesteps = num_train_timesteps
        if snr_shift <= 0:
            raise ValueError(f"snr_shift must be positive, got {snr_shift}")
        if snr_shift != 1.0:
            self.config["trained_betas"] = shifted_betas(self.scheduler("ddpm").alphas_cumprod, snr_shift)
        self.snr_shift = float(snr_shift)
        train_scheduler = self.scheduler("ddpm")  # also validates the schedule name
        # Derived from the config, so not saved: checkpoints stay valid if diffusers changes dtype.
        self.register_buffer("alphas_cumprod", train_scheduler.alphas_cumprod.float().clone(), persistent=False)
        self.last_nfe = 0

    # ----------------------------------------------------------------------------------------
    # schedulers
    def scheduler(self, sampler: str, steps: int | None = None) -> SchedulerMixin:
        """A fresh diffusers scheduler of this schedule; ``set_timesteps(steps)`` done if given."""
        cls = SAMPLERS[sampler_name(sampler)]
        accepted = inspect.signature(cls.__init__).parameters
        scheduler = cls(**{k: v for k, v in self.config.items() if k in accepted})
        if steps is not None:
            if not 1 <= steps <= self.num_train_timesteps:
                raise ValueError(f"sampler steps must be in [1, {self.num_train_timesteps}], got {steps}")
            scheduler.set_timesteps(steps)
        return scheduler

    def nfe(self, sampler: str, steps: int, guided: bool = False) -> int:
        """Network evaluations per image: one per step for these samplers, two with CFG."""
        sampler_name(sampler)
        return steps * (2 if guided else 1)

    # ----------------------------------------------------------------------------------------
    # training
    def _coefficients(self, timesteps: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, *([1] * (ndim - 1)))  # (B, 1, 1, 1)
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """q(x_t | x_0) = N(sqrt(a_bar) x_0, (1 - a_bar) I)  (Ho et al. 2020, eq. 4)."""
        sqrt_ab, sqrt_one_minus_ab = self._coefficients(timesteps, x0.ndim)
        return sqrt_ab * x0 + sqrt_one_minus_ab * noise

    def target(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The regression target: epsilon, x0 itself (``sample``), or v = sqrt(a_bar) eps - sqrt(1 - a_bar) x0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        sqrt_ab, sqrt_one_minus_ab = self._coefficients(timesteps, x0.ndim)
        return sqrt_ab * noise - sqrt_one_minus_ab * x0

    def predict_x0(self, noisy: Tensor, model_output: Tensor, timesteps: Tensor) -> Tensor:
        """The clean image implied by a model output at ``timesteps`` (differentiable)."""
        sqrt_ab, sqrt_one_minus_ab = self._coefficients(timesteps, noisy.ndim)
        if self.prediction_type == "epsilon":
            return (noisy - sqrt_one_minus_ab * model_output) / sqrt_ab
        if self.prediction_type == "sample":
            return model_output
        return sqrt_ab * noisy - sqrt_one_minus_ab * model_output

    def loss_weight(self, timesteps: Tensor) -> Tensor:
        """Per-sample weight (B,): ones, or clamp(SNR, floor, gamma) as x0-loss weight, expressed for the target."""
        if self.min_snr_gamma is None:
            return torch.ones(timesteps.shape[0], device=timesteps.device)
        alpha_bar = self.alphas_cumprod[timesteps]
        snr = alpha_bar / (1.0 - alpha_bar).clamp_min(1e-8)
        # eps-loss equals SNR * x0-loss; v-loss equals (SNR + 1) * x0-loss (Hang et al., sec. 3.4)
        if self.prediction_type == "epsilon":  # min(SNR, g) / SNR, stable at SNR ~ 0 (the floor is refused for eps)
            return (self.min_snr_gamma / snr.clamp_min(1e-12)).clamp(max=1.0)
        x0_weight = snr.clamp(min=self.snr_floor, max=self.min_snr_gamma)
        if self.prediction_type == "sample":
            return x0_weight
        return x0_weight / (snr + 1.0)

    def training_loss(
        self, denoise_fn: DenoiseFn, x0: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Denoising loss on a batch of clean samples ``x0`` (B, C, H, W): images in [-1, 1] or standardised latents.

        1. draw t ~ U{0..T-1} and eps ~ N(0, I);  2. x_t = sqrt(a_bar) x0 + sqrt(1 - a_bar) eps;
        3. regress the target with ``denoise_fn(x_t, t)``;  4. weight per sample and average.
        """
        batch = x0.shape[0]
        timesteps = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device="cpu")
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=torch.float32)
        timesteps, noise = timesteps.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype)
        noisy = self.add_noise(x0, noise, timesteps)
        model_output = denoise_fn(noisy, timesteps)
        target = self.target(x0, noise, timesteps)
        per_sample = F.mse_loss(model_output.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weight = self.loss_weight(timesteps)
        loss = (weight * per_sample).mean()
        aux = {
            "timesteps": timesteps,
            "noisy": noisy,
            "noise": noise,
            "model_output": model_output,
            "pred_x0": self.predict_x0(noisy, model_output, timesteps),
            "weight": weight,
        }
        return loss, aux

    # ----------------------------------------------------------------------------------------
    # sampling
    def _denoise_loop(
        self,
        denoise_fn: DenoiseFn,
        sample: Tensor,
        scheduler: SchedulerMixin,
        timesteps: Tensor,
        generator: torch.Generator | None,
        progress: bool,
    ) -> Tensor:
        self.last_nfe = 0
        for timestep in tqdm(timesteps, disable=not progress, desc="sampling", leave=False):
            # 1. the network's output at this noise level (timestep broadcast over the batch)
            t_batch = torch.full((sample.shape[0],), int(timestep), device=sample.device, dtype=torch.long)
            model_input = scheduler.scale_model_input(sample, timestep)
            model_output = denoise_fn(model_input, t_batch)
            self.last_nfe += 1
            # 2. one reverse step x_t -> x_{t-1} by the scheduler's update rule
            sample = scheduler.step(model_output, timestep, sample, generator=generator).prev_sample
        return self._bounded(sample)

    def _bounded(self, sample: Tensor) -> Tensor:
        """Images are bounded to [-1, 1]; latents (``clip_sample`` false on the latent route) are not."""
        return sample.clamp(-1.0, 1.0) if self.config["clip_sample"] else sample

    @torch.no_grad()
    def sample(
        self,
        denoise_fn: DenoiseFn,
        shape: tuple[int, ...],
        *,
        sampler: str,
        steps: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw samples of ``shape`` (N, C, H, W) from pure noise; in [-1, 1] with ``clip_sample``.

        ``generator`` is a CPU generator: the same seed gives the same images on any device.
        """
        device = torch.device(device) if device is not None else self.alphas_cumprod.device
        scheduler = self.scheduler(sampler, steps)
        # x_T ~ N(0, I) scaled by the scheduler's initial sigma (1 for these schedulers)
        sample = torch.randn(shape, generator=generator, device="cpu").to(device) * scheduler.init_noise_sigma
        return self._denoise_loop(denoise_fn, sample, scheduler, scheduler.timesteps, generator, progress)

    @torch.no_grad()
    def reconstruct(
        self,
        denoise_fn: DenoiseFn,
        x0: Tensor,
        *,
        strength: float,
        sampler: str,
        steps: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Noise real images to ``t ~ strength * T`` and denoise them back (SDEdit, Meng et al. 2022).

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
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)  # multistep solvers track their position
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(device=x0.device, dtype=x0.dtype)
        t_start = torch.full((x0.shape[0],), int(timesteps[0]), device=x0.device, dtype=torch.long)
        noisy = self.add_noise(x0, noise, t_start)
        return self._denoise_loop(denoise_fn, noisy, scheduler, timesteps, generator, progress)

    def extra_repr(self) -> str:
        return (
            f"T={self.num_train_timesteps}, schedule={self.config['beta_schedule']}, "
            f"prediction={self.prediction_type}, min_snr_gamma={self.min_snr_gamma}, snr_floor={self.snr_floor}, snr_shift={self.snr_shift}"
        )
