"""Noise schedules, the VP <-> sigma conversions, sampling spacings and the forward process.

Everything lives in the variance-exploding frame of Karras et al. 2022 (EDM): x = x0 + sigma * n.
A variance-preserving schedule (DDPM's alphas_cumprod, abar) is the same process rescaled:
x_vp = x / sqrt(1 + sigma^2) with sigma = sqrt((1 - abar) / abar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch

from ._util import Generator, append_dims, as_sigma, randn_like

# ---------------------------------------------------------------------------------------------
# VP <-> sigma


def alpha_bar_to_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - abar) / abar)."""
    alpha_bar = torch.as_tensor(alpha_bar)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """abar = 1 / (1 + sigma^2), the inverse of alpha_bar_to_sigma."""
    sigma = torch.as_tensor(sigma)
    return 1 / (1 + sigma**2)


def vp_to_ve(x_vp: torch.Tensor, sigma) -> torch.Tensor:
    """A VP sample sqrt(abar) x0 + sqrt(1-abar) n  ->  the VE sample x0 + sigma n."""
    return x_vp * append_dims((1 + as_sigma(sigma, x_vp) ** 2).sqrt(), x_vp.ndim)


def ve_to_vp(x: torch.Tensor, sigma) -> torch.Tensor:
    """The VE sample x0 + sigma n  ->  the VP sample sqrt(abar) x0 + sqrt(1-abar) n."""
    return x / append_dims((1 + as_sigma(sigma, x) ** 2).sqrt(), x.ndim)


# ---------------------------------------------------------------------------------------------
# discrete VP schedules (alphas_cumprod tables, float64)


def _betas_to_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1 - betas, dim=0)


def _alpha_bar_fn_to_alphas_cumprod(alpha_bar: Callable[[torch.Tensor], torch.Tensor], steps: int,
                                    max_beta: float) -> torch.Tensor:
    # improved DDPM, eq. 17: beta_t = min(1 - abar(t) / abar(t-1), max_beta), so the last betas
    # don't reach 1 (which would make sigma_max infinite)
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    ab = alpha_bar(t)
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return _betas_to_alphas_cumprod(betas)


def linear_alphas_cumprod(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM (Ho et al. 2020, sec. 4): betas linear from 1e-4 to 0.02 over 1000 steps."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return _betas_to_alphas_cumprod(betas)


def cosine_alphas_cumprod(steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17): abar(t) = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2."""
    def f(t):
        return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return _alpha_bar_fn_to_alphas_cumprod(lambda t: f(t) / f(torch.zeros(())), steps, max_beta)


def sigmoid_alphas_cumprod(steps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                           max_beta: float = 0.999) -> torch.Tensor:
    """Sigmoid schedule (Chen 2023, "On the importance of noise scheduling", alg. 1):
    abar(t) = (sigmoid(end/tau) - sigmoid((t (end - start) + start)/tau)) / (sigmoid(end/tau) - sigmoid(start/tau))."""
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64)), torch.sigmoid(
        torch.tensor(end / tau, dtype=torch.float64))

    def abar(t):
        return ((v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)).clamp(min=1e-9)
    return _alpha_bar_fn_to_alphas_cumprod(abar, steps, max_beta)


VP_SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_alphas_cumprod,
    "cosine": cosine_alphas_cumprod,
    "sigmoid": sigmoid_alphas_cumprod,
}


@dataclass(frozen=True)
class DiscreteSchedule:
    """A DDPM-style schedule of `len(alphas_cumprod)` integer timesteps, seen in sigma space.

    Timestep t (0-based) has noise level sigmas[t]; sigmas increase with t. Any sigma inside
    [sigma_min, sigma_max] maps to a fractional timestep by interpolating log-sigma, so a network
    trained on integer timesteps can be queried at any sigma a sampler asks for.
    """

    alphas_cumprod: torch.Tensor  # (T,) float64

    @classmethod
    def named(cls, name: str, steps: int = 1000, **kwargs) -> "DiscreteSchedule":
        if name not in VP_SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(VP_SCHEDULES)}")
        return cls(VP_SCHEDULES[name](steps, **kwargs))

    @property
    def sigmas(self) -> torch.Tensor:
        return alpha_bar_to_sigma(self.alphas_cumprod)

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self.sigmas.log()

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """Fractional timestep for each sigma (log-sigma interpolated over the table)."""
        sigma = torch.as_tensor(sigma)
        s = sigma.to(torch.float64)
        lo, hi = self.sigma_min, self.sigma_max
        # a hair of slack for float32 sigmas that round just outside the table's ends
        if s.numel() and (s.min() < lo * (1 - 1e-6) or s.max() > hi * (1 + 1e-6)):
            raise ValueError(f"sigma outside this schedule's range [{lo:.6g}, {hi:.6g}]: got "
                             f"{float(s.min()):.6g}..{float(s.max()):.6g}; clamp sigma_min/sigma_max to the schedule's")
        log_sigmas = self.log_sigmas.to(s.device)
        log_s = s.clamp(lo, hi).log()
        i = torch.searchsorted(log_sigmas, log_s, right=True).clamp(1, len(log_sigmas) - 1) - 1
        w = (log_s - log_sigmas[i]) / (log_sigmas[i + 1] - log_sigmas[i])
        return (i + w).to(sigma.dtype if sigma.is_floating_point() else torch.float64)

    def t_to_sigma(self, t) -> torch.Tensor:
        """Noise level of a (fractional) timestep, interpolating log-sigma."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.numel() and (t.min() < 0 or t.max() > self.num_timesteps - 1):
            raise ValueError(f"timestep outside [0, {self.num_timesteps - 1}]")
        log_sigmas = self.log_sigmas.to(t.device)
        i = t.floor().long().clamp(max=len(log_sigmas) - 2)
        w = t - i
        return ((1 - w) * log_sigmas[i] + w * log_sigmas[i + 1]).exp()

    def timesteps(self, steps: int, mode: str = "trailing") -> torch.Tensor:
        """`steps` integer timesteps, decreasing, spaced as DDIM and diffusers do.

        leading: 0, T/steps, 2T/steps, ... (DDIM's original; never visits the last timestep)
        trailing: T-1, T-1-T/steps, ... (starts at the noisiest timestep; Lin et al. 2024 table 2)
        linspace: round(linspace(0, T-1, steps))
        """
        T = self.num_timesteps
        _check_steps(steps)
        if mode == "leading":
            ts = torch.arange(steps) * (T // steps)
        elif mode == "trailing":
            # T - 1 - round(i T / steps); a float arange here can yield one step too many
            ts = (T - (torch.arange(steps, dtype=torch.float64) * T / steps).round() - 1).long().flip(0)
        elif mode == "linspace":
            ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long()
        else:
            raise ValueError(f"unknown timestep spacing {mode!r}; choose one of: leading, trailing, linspace")
        return ts.flip(0)

    def timestep_sigmas(self, steps: int, mode: str = "trailing") -> torch.Tensor:
        """`steps + 1` decreasing sigmas at the chosen integer timesteps, ending in 0."""
        return _append_zero(self.sigmas[self.timesteps(steps, mode)])

    def spacing(self, mode: str = "trailing") -> Callable[[int, float, float], torch.Tensor]:
        """A spacing for `diffusely.sample` that visits this schedule's own timesteps (ignores sigma_min/max)."""
        return lambda steps, sigma_min=None, sigma_max=None: self.timestep_sigmas(steps, mode)


@dataclass(frozen=True)
class EDMSchedule:
    """EDM's continuous range (Karras et al. 2022, table 1): sigma in [0.002, 80], data std sigma_data = 0.5."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5


# ---------------------------------------------------------------------------------------------
# sampling spacings: each returns steps + 1 decreasing sigmas that end in 0


def _check_steps(steps: int) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be > 0, got {sigma_min}")
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not math.isfinite(sigma_max):
        raise ValueError(f"sigma_max must be finite, got {sigma_max}")


def check_sigmas(sigmas: torch.Tensor, steps: int, sigma_min: float, sigma_max: float) -> None:
    """Refuse a sigma sequence a sampler cannot run: it must hold steps + 1 finite sigmas, strictly decreasing
    from at most sigma_max to at least sigma_min, then 0. (A sigma far below sigma_min, 1e-300 say, is 0 in
    a float32 network: its noise label log(sigma) is -inf and every sample comes out NaN.)"""
    got = f"got {[round(float(s), 6) for s in sigmas[:8]]}{' ...' if len(sigmas) > 8 else ''}"
    if sigmas.shape != (steps + 1,):
        raise ValueError(f"a sigma sequence for {steps} steps holds {steps + 1} sigmas (the last 0), {got}")
    if not sigmas.isfinite().all() or sigmas[-1] != 0 or not (sigmas.diff() < 0).all():
        raise ValueError(f"sigmas must be finite and strictly decreasing, ending in 0, {got}")
    # a relative slack of 1e-6 for sequences written out as text and read back
    if sigmas[0] > sigma_max * (1 + 1e-6) or sigmas[-2] < sigma_min * (1 - 1e-6):
        raise ValueError(f"sigmas must lie in [sigma_min, sigma_max] = [{sigma_min:.6g}, {sigma_max:.6g}] "
                         f"before the final 0, {got}")


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1, dtype=torch.float64)])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0."""
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def log_snr_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log-SNR = -2 log(sigma) (DPM-Solver's "logSNR" spacing), then 0."""
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    return _append_zero((math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max))).exp())


# the continuous VP-linear schedule of Song et al. 2021 (beta_min 0.1, beta_d 19.9; EDM table 1)
_VP_BETA_MIN, _VP_BETA_D = 0.1, 19.9


def _vp_sigma(t: torch.Tensor) -> torch.Tensor:
    return ((0.5 * _VP_BETA_D * t**2 + _VP_BETA_MIN * t).exp() - 1).sqrt()


def _vp_sigma_inv(sigma: float) -> float:
    return (math.sqrt(_VP_BETA_MIN**2 + 2 * _VP_BETA_D * math.log1p(sigma**2)) - _VP_BETA_MIN) / _VP_BETA_D


def uniform_t_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in the time t of the continuous VP-linear schedule (EDM table 1, "VP" column), then 0."""
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    t_max, t_min = _vp_sigma_inv(sigma_max), _vp_sigma_inv(sigma_min)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    return _append_zero(_vp_sigma(t_max + ramp * (t_min - t_max)))


SPACINGS: dict[str, Callable[[int, float, float], torch.Tensor]] = {
    "karras": karras_sigmas,
    "log-snr": log_snr_sigmas,
    "uniform-t": uniform_t_sigmas,
}

Spacing = Union[str, Callable[[int, float, float], torch.Tensor], None]


def get_sigmas(steps: int, sigma_min: float, sigma_max: float, spacing: Spacing = "karras") -> torch.Tensor:
    """steps + 1 decreasing sigmas ending in 0, from a spacing name or a callable(steps, sigma_min, sigma_max)."""
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if spacing is None:
        spacing = "karras"
    if isinstance(spacing, str):
        if spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
        spacing = SPACINGS[spacing]
    sigmas = torch.as_tensor(spacing(steps, sigma_min, sigma_max), dtype=torch.float64)
    check_sigmas(sigmas, steps, sigma_min, sigma_max)
    return sigmas


# ---------------------------------------------------------------------------------------------
# the forward process


def add_noise(x0: torch.Tensor, sigma, noise: torch.Tensor | None = None, *, generator: Generator = None) -> torch.Tensor:
    """The forward process in sigma space: x = x0 + sigma * n, n ~ N(0, I).

    x0: (B, C, ...); sigma: float or (B,). Pass `noise` to fix n, or a generator (one, or one per sample).
    """
    if noise is None:
        noise = randn_like(x0, generator)
    return x0 + append_dims(as_sigma(sigma, x0), x0.ndim) * noise


def add_noise_vp(x0: torch.Tensor, t, schedule: DiscreteSchedule, noise: torch.Tensor | None = None, *,
                 generator: Generator = None) -> torch.Tensor:
    """DDPM's forward process at integer timesteps t (B,): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n (Ho et al. eq. 4)."""
    if noise is None:
        noise = randn_like(x0, generator)
    t = torch.as_tensor(t, device=x0.device).long()
    if t.ndim == 0:
        t = t.expand(x0.shape[0])
    if t.min() < 0 or t.max() >= schedule.num_timesteps:
        raise ValueError(f"timesteps must lie in [0, {schedule.num_timesteps - 1}]")
    ab = schedule.alphas_cumprod.to(x0.device)[t]
    return append_dims(ab.sqrt(), x0.ndim).to(x0.dtype) * x0 + append_dims((1 - ab).sqrt(), x0.ndim).to(x0.dtype) * noise
