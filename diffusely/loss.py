"""The training loss, written once in the sigma frame:

    loss(x0) = weight(sigma) * mean |D(x0 + sigma n, sigma) - x0|^2,   sigma ~ p_train

DDPM's simple ε-loss is weight = 1/sigma^2 with sigma at uniform integer timesteps, because
|eps_hat - eps|^2 = |D - x0|^2 / sigma^2 for D = x - sigma eps_hat. EDM's weighting and min-SNR-gamma
are other weight functions. Losses are per sample; the training loop reduces them.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._util import Generator
from .denoisers import Denoiser
from .schedules import DiscreteSchedule, add_noise

# ---------------------------------------------------------------------------------------------
# training sigma distributions


def lognormal_sigmas(batch: int, *, P_mean: float = -1.2, P_std: float = 1.2, generator: Generator = None,
                     device="cpu", dtype=torch.float32) -> torch.Tensor:
    """EDM's training distribution (table 1): ln(sigma) ~ N(P_mean, P_std^2)."""
    n = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
    return (P_mean + P_std * n).exp().to(dtype)


def discrete_sigmas(batch: int, schedule: DiscreteSchedule, *, generator: Generator = None, device="cpu",
                    dtype=torch.float32) -> torch.Tensor:
    """DDPM's training distribution: t ~ Uniform{0, ..., T-1}, sigma = sigma_t."""
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=device)
    return schedule.sigmas.to(device)[t].to(dtype)


# ---------------------------------------------------------------------------------------------
# weightings, as functions of sigma (per sample)


def eps_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """DDPM's simple loss |eps_hat - eps|^2 in the x0 frame: 1 / sigma^2 (= SNR)."""
    return sigma**-2


def edm_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM eq. 8: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, a unit-weight loss on F's target."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def min_snr_weight(sigma: torch.Tensor, sigma_data: float = 0.5, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): the x0-loss weighted by min(SNR, gamma), SNR = 1/sigma^2.

    In the x0 frame it is the same function for ε-, v- and x0-prediction (their eq. for ε divides by SNR
    exactly because |eps err|^2 = SNR |x0 err|^2).
    """
    return (sigma**-2).clamp(max=gamma)


def uniform_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """Plain x0 MSE."""
    return torch.ones_like(sigma)


WEIGHTINGS: dict[str, Callable[..., torch.Tensor]] = {
    "eps": eps_weight,
    "edm": edm_weight,
    "min-snr": min_snr_weight,
    "uniform": uniform_weight,
}


def weighting(name: str) -> Callable[..., torch.Tensor]:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of: {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[name]


def denoising_loss(denoiser: Callable[..., torch.Tensor], x0: torch.Tensor, sigma: torch.Tensor,
                   weight: torch.Tensor, noise: torch.Tensor | None = None, *, generator: Generator = None,
                   **cond) -> torch.Tensor:
    """Per-sample weighted denoising loss, shape (B,): weight * mean over non-batch dims of (D(x, sigma) - x0)^2."""
    x = add_noise(x0, sigma, noise, generator=generator)
    if isinstance(denoiser, Denoiser):
        # EDM eq. 8: the same loss on the network's own target, (x0 - c_skip x) / c_out, with weight
        # * c_out^2. Avoids float32 cancellation in D - x0 when c_out is large (eps-prediction at sigma 157).
        F, c_skip, c_out = denoiser.raw(x, sigma, **cond)
        target = (x0 - c_skip * x) / c_out
        err = c_out.flatten().float() ** 2 * ((F.float() - target.float()) ** 2).flatten(1).mean(1)
    else:
        err = ((denoiser(x, sigma, **cond).float() - x0.float()) ** 2).flatten(1).mean(1)
    return weight.float() * err
