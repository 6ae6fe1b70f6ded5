"""EDM (Karras et al. 2022, arXiv:2206.00364): preconditioning, log-normal noise levels and the EDM loss weight.

Data are noised as ``x = x0 + sigma eps`` and the network F is wrapped so that its input and
target have unit variance at every sigma (table 1 of the paper):

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
    c_skip = sd^2 / (sigma^2 + sd^2)   c_out = sigma sd / sqrt(sigma^2 + sd^2)
    c_in = 1 / sqrt(sigma^2 + sd^2)    c_noise = ln(sigma) / 4

Training draws ``ln sigma ~ N(P_mean, P_std^2)`` (-1.2, 1.2) and weights ``||D - x0||^2`` by
``lambda(sigma) = 1 / c_out^2``, which is an unweighted MSE of F against
``(x0 - c_skip x) / c_out``; that is the form computed here. diffusers' EDM schedulers
(``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``) apply the same c_in in
``scale_model_input``, pass c_noise as the timestep and form D with the same c_skip and c_out
(their ``prediction_type`` "epsilon" is this F), so sampling undoes exactly what training did.

The UNet's time input is ``time_scale * c_noise``: diffusers' sinusoidal timestep embedding is laid
out for DDPM steps 0-999, and c_noise spans only ~2.7 units over sigma in [0.002, 80].
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from models.process import DenoiseFn, DiffusionProcess


class EDM(DiffusionProcess):
    """The EDM process behind the ``DiffusionModule`` interface (see ``models.process``).

    Args:
        sigma_min, sigma_max: the sampler's noise range (paper: 0.002, 80).
        sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).
        p_mean, p_std: the log-normal of training sigmas (paper: -1.2, 1.2).
        rho: the Karras sigma schedule's exponent for sampling (paper: 7).
        time_scale: multiplies c_noise to give the UNet's time input (module docstring).
        clip_sample: bound the drawn samples to [-1, 1] (false for latents).
    """

    samplers: ClassVar[dict[str, type[SchedulerMixin]]] = {
        "euler": EDMEulerScheduler,
        "dpm_solver++": EDMDPMSolverMultistepScheduler,
    }
    prediction_type = "epsilon"  # diffusers' EDM schedulers' name for the preconditioned output F

    def __init__(
        self,
        *,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        rho: float = 7.0,
        time_scale: float = 250.0,
        clip_sample: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < sigma_min < sigma_max or sigma_data <= 0 or p_std <= 0 or time_scale <= 0:
            raise ValueError(f"model.noise: need 0 < sigma_min < sigma_max and positive sigma_data, p_std, time_scale; got "
                             f"{sigma_min}, {sigma_max}, {sigma_data}, {p_std}, {time_scale}")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.p_mean, self.p_std, self.rho, self.time_scale = float(p_mean), float(p_std), float(rho), float(time_scale)
        self.clip_sample = bool(clip_sample)

    # ----------------------------------------------------------------------------------------
    # preconditioning (Karras et al. 2022, table 1)
    def c_skip(self, sigma: Tensor) -> Tensor:
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: Tensor) -> Tensor:
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma: Tensor) -> Tensor:
        return 1.0 / (sigma**2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma: Tensor) -> Tensor:
        return sigma.log() / 4.0

    def training_loss(self, denoise_fn: DenoiseFn, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """1. ln sigma ~ N(P_mean, P_std^2), eps ~ N(0, I);  2. x = x0 + sigma eps;  3. F(c_in x; c_noise);
        4. MSE of F against (x0 - c_skip x) / c_out (= the lambda-weighted denoising loss)."""
        count = x0.shape[0]
        sigma = (self.p_mean + self.p_std * torch.randn(count, generator=generator)).exp()
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=torch.float32)
        sigma, noise = sigma.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        noisy = x0 + s * noise
        timesteps = self.time_scale * self.c_noise(sigma)
        model_output = denoise_fn(self.c_in(s) * noisy, timesteps)
        target = (x0 - self.c_skip(s) * noisy) / self.c_out(s)
        per_sample = F.mse_loss(model_output.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weight = torch.ones_like(per_sample)
        aux = {
            "timesteps": timesteps, "noisy": noisy, "noise": noise, "model_output": model_output,
            "pred_x0": self.c_skip(s) * noisy + self.c_out(s) * model_output, "weight": weight,
            "alpha_bar": self.sigma_data**2 / (self.sigma_data**2 + sigma**2),  # the signal's share of x's power
        }
        return (weight * per_sample).mean(), aux

    # ----------------------------------------------------------------------------------------
    # schedulers
    def build_scheduler(self, sampler: str) -> SchedulerMixin:
        settings = dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, sigma_data=self.sigma_data, sigma_schedule="karras",
                        rho=self.rho, prediction_type="epsilon", final_sigmas_type="zero")
        if sampler == "dpm_solver++":
            settings.update(solver_order=2, algorithm_type="dpmsolver++")
        return self.samplers[sampler](**settings)

    def model_time(self, scheduler: SchedulerMixin, index: int, count: int, device: torch.device) -> Tensor:
        """The schedulers' timestep is c_noise; the UNet reads it scaled, as in training."""
        return torch.full((count,), self.time_scale * float(scheduler.timesteps[index]), device=device)

    def noised(self, x0: Tensor, noise: Tensor, scheduler: SchedulerMixin, index: int) -> Tensor:
        return x0 + float(scheduler.sigmas[index]) * noise

    def describe(self) -> str:
        return (f"EDM (Karras et al. 2022), preconditioned F, log-normal sigma (P_mean {self.p_mean}, P_std {self.p_std}), "
                f"sigma_data {self.sigma_data}, sigma in [{self.sigma_min}, {self.sigma_max}]; UNet time = "
                f"{self.time_scale:g} ln(sigma) / 4")

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}, p_mean={self.p_mean}, p_std={self.p_std}, time_scale={self.time_scale}"

