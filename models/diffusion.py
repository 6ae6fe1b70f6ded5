"""The Gaussian noise process of a DDPM (Ho et al. 2020): the default process of hybrid, ddpm and ddpm_class.

A discrete schedule of T noise levels (cosine by default), ``x_t = sqrt(a_bar) x0 + sqrt(1 - a_bar) eps``,
a choice of regression target (``prediction_type``) with Min-SNR weighting, and diffusers' DDPM,
DDIM and DPM-Solver++ schedulers to sample. The API it shares with the flow-matching and EDM
processes (training loss, sampling, the reconstruction protocol) is described in
``models.process``; ``NoiseProcess`` adds ``add_noise``, ``target``, ``predict_x0`` and ``loss_weight``.

    process = NoiseProcess(beta_schedule="squaredcos_cap_v2", prediction_type="sample")
    loss, aux = process.training_loss(denoise_fn, x0)
    images = process.sample(denoise_fn, (16, 3, 32, 32), sampler="dpm_solver++", steps=20)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from models.process import (  # noqa: F401  (re-exported: the names models and commands import from here)
    SAMPLER_ALIASES, SAMPLER_NAMES, DenoiseFn, DiffusionProcess, classifier_free_guidance, sampler_name,
)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers names; sample = the clean image x0

SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm_solver++": DPMSolverMultistepScheduler,
}


def shifted_betas(alphas_cumprod: Tensor, snr_shift: float) -> list[float]:
    """Betas whose a_bar has ``snr_shift`` times the SNR of ``alphas_cumprod``: logSNR moves by log(snr_shift)."""
    log_snr = torch.logit(alphas_cumprod.double(), eps=1e-12)  # log(a_bar / (1 - a_bar))
    shifted = torch.sigmoid(log_snr + torch.log(torch.tensor(float(snr_shift), dtype=torch.float64)))
    previous = torch.cat([torch.ones(1, dtype=torch.float64), shifted[:-1]])
    return (1.0 - shifted / previous).clamp(0.0, 0.999).tolist()  # a_bar_t = prod(1 - beta), capped as diffusers' cosine


class NoiseProcess(DiffusionProcess):
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
        self.clip_sample = bool(clip_sample)
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

    # ----------------------------------------------------------------------------------------
    # schedulers
    samplers: ClassVar[dict[str, type[SchedulerMixin]]] = SAMPLERS

    def build_scheduler(self, sampler: str) -> SchedulerMixin:
        return self.configured(SAMPLERS[sampler], self.config)

    def model_time(self, scheduler: SchedulerMixin, index: int, count: int, device: torch.device) -> Tensor:
        """The integer step t, as in training."""
        return torch.full((count,), int(scheduler.timesteps[index]), device=device, dtype=torch.long)

    def noised(self, x0: Tensor, noise: Tensor, scheduler: SchedulerMixin, index: int) -> Tensor:
        t_start = torch.full((x0.shape[0],), int(scheduler.timesteps[index]), device=x0.device, dtype=torch.long)
        return self.add_noise(x0, noise, t_start)

    def describe(self) -> str:
        return f"DDPM, prediction `{self.prediction_type}`, schedule `{self.config['beta_schedule']}` (T = {self.num_train_timesteps})"

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
            "alpha_bar": self.alphas_cumprod[timesteps],
        }
        return loss, aux

    def extra_repr(self) -> str:
        return (
            f"T={self.num_train_timesteps}, schedule={self.config['beta_schedule']}, "
            f"prediction={self.prediction_type}, min_snr_gamma={self.min_snr_gamma}, snr_floor={self.snr_floor}, snr_shift={self.snr_shift}"
        )
