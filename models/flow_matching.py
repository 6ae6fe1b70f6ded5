"""Flow matching / rectified flow: straight paths from data to noise, a velocity target.

``x_t = (1 - t) x0 + t eps`` for t in [0, 1] (Lipman et al. 2023, arXiv:2210.02747, with the
optimal-transport path; Liu et al. 2023's rectified flow), and the network regresses the path's
velocity ``v = dx_t/dt = eps - x0`` with an unweighted MSE. Training draws t from a logit-normal
(Esser et al. 2024, arXiv:2403.03206, sec. 3.1: ``t = sigmoid(u)``, ``u ~ N(m, s^2)``), which puts
the training signal on the middle of the path where the velocity is hardest to predict; ``shift``
moves every t as SD3 does for larger images (``shift * t / (1 + (shift - 1) t)``), in training and
sampling alike.

Sampling integrates the ODE with diffusers' flow schedulers, which read the same convention
(sigma = t, timestep = 1000 t, ``prediction_type`` "flow_prediction", x0 = x_t - t v):
``euler`` (FlowMatchEulerDiscreteScheduler), ``heun`` (FlowMatchHeunDiscreteScheduler: 2 network
evaluations per step) and ``dpm_solver++`` (DPMSolverMultistepScheduler with flow sigmas, the
second-order multistep solver the DDPM process samples with).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from models.process import DenoiseFn, DiffusionProcess

TIME_SAMPLINGS = ("logit_normal", "uniform")


class FlowMatching(DiffusionProcess):
    """The rectified-flow process behind the ``DiffusionModule`` interface (see ``models.process``).

    Args:
        num_train_timesteps: the UNet's time input is ``num_train_timesteps * t`` (diffusers' flow
            schedulers pass timestep = 1000 sigma), the range its sinusoidal embedding is laid out for.
        time_sampling: ``logit_normal`` (Esser et al. 2024) or ``uniform`` t in training.
        logit_mean, logit_std: m and s of the logit-normal (SD3: 0 and 1).
        shift: SD3's timestep shift (1 = none; > 1 spends more steps at high noise).
        clip_sample: bound the drawn samples to [-1, 1] (false for latents).
    """

    samplers: ClassVar[dict[str, type[SchedulerMixin]]] = {
        "euler": FlowMatchEulerDiscreteScheduler,
        "heun": FlowMatchHeunDiscreteScheduler,
        "dpm_solver++": DPMSolverMultistepScheduler,
    }
    prediction_type = "flow_prediction"  # diffusers' name for the velocity eps - x0

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,
        time_sampling: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        clip_sample: bool = True,
    ) -> None:
        super().__init__()
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"model.noise.time_sampling must be one of {list(TIME_SAMPLINGS)}, got '{time_sampling}'")
        if logit_std <= 0 or shift <= 0:
            raise ValueError(f"model.noise.logit_std and shift must be positive, got {logit_std} and {shift}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, float(logit_mean), float(logit_std)
        self.shift = float(shift)
        self.clip_sample = bool(clip_sample)

    # ----------------------------------------------------------------------------------------
    # the path
    def shifted(self, t: Tensor) -> Tensor:
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def draw_t(self, count: int, generator: torch.Generator | None) -> Tensor:
        """(count,) training times in (0, 1)."""
        if self.time_sampling == "uniform":
            t = torch.rand(count, generator=generator)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(count, generator=generator))
        return self.shifted(t)

    @staticmethod
    def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = (1 - t) x0 + t eps (t broadcast over (B, C, H, W))."""
        t = t.view(-1, *([1] * (x0.ndim - 1)))
        return (1.0 - t) * x0 + t * noise

    def training_loss(self, denoise_fn: DenoiseFn, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """1. t from the logit-normal, eps ~ N(0, I);  2. x_t = (1 - t) x0 + t eps;  3. MSE of the velocity eps - x0."""
        t = self.draw_t(x0.shape[0], generator)
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=torch.float32)
        t, noise = t.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype)
        noisy = self.interpolate(x0, noise, t)
        timesteps = t * self.num_train_timesteps
        model_output = denoise_fn(noisy, timesteps)
        per_sample = F.mse_loss(model_output.float(), (noise - x0).float(), reduction="none").mean(dim=(1, 2, 3))
        weight = torch.ones_like(per_sample)
        aux = {
            "timesteps": timesteps, "noisy": noisy, "noise": noise, "model_output": model_output,
            "pred_x0": noisy - t.view(-1, 1, 1, 1) * model_output, "weight": weight,
            "alpha_bar": (1 - t) ** 2 / ((1 - t) ** 2 + t**2),  # the signal's share of x_t's power
        }
        return (weight * per_sample).mean(), aux

    # ----------------------------------------------------------------------------------------
    # schedulers
    def build_scheduler(self, sampler: str) -> SchedulerMixin:
        if sampler == "dpm_solver++":
            return DPMSolverMultistepScheduler(
                num_train_timesteps=self.num_train_timesteps, prediction_type="flow_prediction", use_flow_sigmas=True,
                flow_shift=self.shift, algorithm_type="dpmsolver++", solver_order=2,
            )
        return self.samplers[sampler](num_train_timesteps=self.num_train_timesteps, shift=self.shift)

    def model_time(self, scheduler: SchedulerMixin, index: int, count: int, device: torch.device) -> Tensor:
        """``num_train_timesteps`` sigma, from the sigma itself: DPM-Solver++ stores its flow timesteps as integers."""
        return torch.full((count,), self.num_train_timesteps * float(scheduler.sigmas[index]), device=device)

    def noised(self, x0: Tensor, noise: Tensor, scheduler: SchedulerMixin, index: int) -> Tensor:
        sigma = scheduler.sigmas[index].to(x0.device, x0.dtype)
        return (1.0 - sigma) * x0 + sigma * noise

    def describe(self) -> str:
        return (f"flow matching (rectified flow), velocity target, {self.time_sampling} t "
                f"(m {self.logit_mean}, s {self.logit_std}), shift {self.shift}; UNet time = {self.num_train_timesteps} t")

    def extra_repr(self) -> str:
        return f"time_sampling={self.time_sampling}, logit_mean={self.logit_mean}, logit_std={self.logit_std}, shift={self.shift}"
