"""Network parameterizations in sigma space, and the denoiser wrappers: classifier-free guidance, thresholding.

A raw network F(input, noise_label, **cond) becomes a denoiser D(x, sigma, **cond) -> x0_hat through
D = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))   (EDM eq. 7).
Each parameterization is just its coefficients; the training target of F follows from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ._util import append_dims, as_sigma
from .schedules import DiscreteSchedule

Coefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def eps_coefficients(sigma: torch.Tensor, sigma_data: float = 1.0) -> Coefficients:
    """ε-prediction (DDPM): x0 = x - sigma * eps; the network sees the VP input x / sqrt(1 + sigma^2)."""
    return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt()


def v_coefficients(sigma: torch.Tensor, sigma_data: float = 1.0) -> Coefficients:
    """v-prediction (Salimans & Ho 2022, app. D): v = alpha eps - sigma_vp x0; with sigma_data = 1 this is the VP form.

    x0 = c_skip x + c_out v, c_skip = sd^2/(s^2+sd^2), c_out = -s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2).
    """
    sd2 = sigma_data**2
    return sd2 / (sigma**2 + sd2), -sigma * sigma_data / (sigma**2 + sd2).sqrt(), 1 / (sigma**2 + sd2).sqrt()


def x0_coefficients(sigma: torch.Tensor, sigma_data: float = 1.0) -> Coefficients:
    """x0-prediction: the network's output is the estimate itself."""
    return torch.zeros_like(sigma), torch.ones_like(sigma), 1 / (sigma**2 + sigma_data**2).sqrt()


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = 0.5) -> Coefficients:
    """EDM preconditioning (Karras et al. 2022, table 1): unit-variance input and training target."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / (sigma**2 + sd2).sqrt()
    c_in = 1 / (sigma**2 + sd2).sqrt()
    return c_skip, c_out, c_in


PARAMETERIZATIONS: dict[str, Callable[..., Coefficients]] = {
    "eps": eps_coefficients,
    "v": v_coefficients,
    "x0": x0_coefficients,
    "edm": edm_coefficients,
}


class Denoiser(nn.Module):
    """D(x, sigma, **cond) -> x0_hat from a raw network F(input, noise_label, **cond).

    parameterization: one of PARAMETERIZATIONS. noise label c_noise: the fractional timestep when a
    discrete `schedule` is given (a network trained on DDPM timesteps), else EDM's ln(sigma)/4.
    sigma_data: data std for "edm", "v" and "x0" (1 recovers the VP forms); "eps" ignores it.
    residual: None, or a condition whose first channels are a base image b of x's shape (an upscale run's A^+ y,
    diffusely.conditions.LowRes): the network then denoises x - b, and b is added back, D(x) = b + D'(x - b), so it
    learns only the detail the base lacks (SRDiff, Li et al. 2022; ResShift, Yue et al. 2023). Without the
    condition (its null) b is 0.
    """

    def __init__(self, net: nn.Module, parameterization: str = "edm", *, sigma_data: float = 0.5,
                 schedule: Optional[DiscreteSchedule] = None, residual: Optional[str] = None):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of: {', '.join(PARAMETERIZATIONS)}")
        self.net = net
        self.parameterization = parameterization
        self.sigma_data = sigma_data
        self.schedule = schedule
        self.residual = residual

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return PARAMETERIZATIONS[self.parameterization](sigma, self.sigma_data)

    def noise_label(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.schedule is not None:
            # beyond its table a timestep network is asked at the nearest timestep it was trained on (a
            # churn step may lift sigma past sigma_max); the coefficients still use the true sigma
            return self.schedule.sigma_to_t(sigma.clamp(self.schedule.sigma_min, self.schedule.sigma_max))
        return sigma.log() / 4  # EDM table 1, c_noise

    def base(self, x: torch.Tensor, cond: dict) -> torch.Tensor | float:
        """The image a residual denoiser adds its estimate to (see `residual`), or 0."""
        given = cond.get(self.residual) if self.residual else None
        return 0.0 if given is None else given[:, :x.shape[1]].to(x.dtype)

    def raw(self, x: torch.Tensor, sigma, **cond) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's output F and the (broadcastable) c_skip, c_out that turn it into x0_hat, c_skip x + c_out F
        (the training loss's form: a residual denoiser's base is folded into F, as (1 - c_skip) b / c_out, so not for
        a consistency student at sigma_min, where c_out is 0: its loss calls the denoiser itself)."""
        if not self.residual:
            return self._raw(x, sigma, cond)
        b = self.base(x, cond)
        F, c_skip, c_out = self._raw(x - b, sigma, cond)
        return F + (1 - c_skip) * b / c_out, c_skip, c_out

    def _raw(self, x: torch.Tensor, sigma, cond: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sigma = as_sigma(sigma, x)
        # coefficients in float32 at least: sigma^2 overflows float16 at sigma = 256
        s = sigma.to(torch.promote_types(sigma.dtype, torch.float32))
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.coefficients(s))
        F = self.net((c_in * x).to(x.dtype), self.noise_label(s), **cond)
        return F.to(c_out.dtype), c_skip, c_out

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if not self.residual:
            F, c_skip, c_out = self._raw(x, sigma, cond)
            return (c_skip * x + c_out * F).to(x.dtype)
        b = self.base(x, cond)  # added here, not folded as in raw: a consistency student's c_out is 0 at sigma_min
        F, c_skip, c_out = self._raw(x - b, sigma, cond)
        return (b + c_skip * (x - b) + c_out * F).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# classifier-free guidance


@dataclass
class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) as a denoiser:

    D_w(x) = D(x | null) + scale * (D(x | cond) - D(x | null))

    Conditional and unconditional halves go through the network in one batched call. `uncond`
    maps each conditioning keyword to its null value (e.g. {"class_labels": tensor of the null
    label}), batch-shaped like the conditioning it replaces. scale 1 is the conditional denoiser
    and scale 0 the unconditional one; both skip the other half.

    rescale (phi; Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    sec. 3.4): scale the guided estimate so its per-sample std matches the conditional one's, and
    blend: D = phi * D_w * std(D_cond) / std(D_w) + (1 - phi) * D_w. It acts on the x0 estimate
    (what this wrapper returns): a large scale inflates x0's std, which shows as over-exposure; at
    high sigma, where eps is nearly the input's own noise, rescaling eps (as diffusers' pipelines do)
    would say little about the image. Lin et al. suggest phi = 0.7.

    interval (sigma_lo, sigma_hi): guide only where sigma_lo < sigma <= sigma_hi (Kynkäänniemi et al.
    2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality");
    elsewhere D is the conditional call alone, which saves the unconditional half.
    """

    denoiser: Callable[..., torch.Tensor]
    scale: float
    uncond: dict
    rescale: float = 0.0
    interval: tuple[float, float] = (0.0, float("inf"))

    def __post_init__(self):
        # an infinite or NaN scale turns every estimate into inf or NaN: black images and exit 0
        if not math.isfinite(self.scale):
            raise ValueError(f"the guidance scale must be a finite number (1: none, 0: unconditional), got {self.scale}")
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"the guidance rescale (phi) must lie in [0, 1], got {self.rescale}")
        low, high = self.interval
        if not 0 <= low < high:
            raise ValueError(f"the guidance interval (sigma_lo, sigma_hi) needs 0 <= sigma_lo < sigma_hi, got {self.interval}")

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        missing = set(self.uncond) - set(cond)
        if missing:
            raise ValueError(f"guidance needs the conditioning {sorted(missing)} that its null values replace")
        sigma = as_sigma(sigma, x)
        guided = (sigma > self.interval[0]) & (sigma <= self.interval[1])
        if self.scale == 1 or not guided.any():
            return self.denoiser(x, sigma, **cond)
        if guided.all():
            return self._guide(x, sigma, cond, self.uncond)
        # samples at different sigmas, some inside the interval (rare: samplers use one sigma a step)
        rows = lambda values, mask: {k: v[mask] for k, v in values.items()}
        out = torch.empty_like(x)
        out[~guided] = self.denoiser(x[~guided], sigma[~guided], **rows(cond, ~guided))
        out[guided] = self._guide(x[guided], sigma[guided], rows(cond, guided), rows(self.uncond, guided))
        return out

    def _guide(self, x, sigma, cond, uncond):
        if self.scale == 0:
            return self.denoiser(x, sigma, **{**cond, **uncond})
        both = {k: torch.cat([uncond[k], v]) if k in uncond else torch.cat([v, v]) for k, v in cond.items()}
        d_uncond, d_cond = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
        d = d_uncond + self.scale * (d_cond - d_uncond)
        if self.rescale:
            dims = tuple(range(1, x.ndim))
            # Lin et al. sec. 3.4: rescale to the conditional estimate's std, then blend by phi (eq. 16)
            factor = d_cond.std(dims, keepdim=True) / d.std(dims, keepdim=True)
            d = d * (self.rescale * factor + 1 - self.rescale)
        return d


@dataclass
class Thresholded:
    """Static thresholding (Saharia et al. 2022, "Imagen", sec. 2.3): clip the guided x0 estimate to the data's
    range. Guidance extrapolates past the data (3 D_cond - 2 D_uncond can be far outside [-1, 1]); an ODE
    that follows such estimates leaves the range the network was trained on, and its later estimates fail."""

    denoiser: Callable[..., torch.Tensor]
    low: float = -1.0
    high: float = 1.0

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        return self.denoiser(x, sigma, **cond).clamp(self.low, self.high)
