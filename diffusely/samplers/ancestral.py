"""Ancestral samplers: a deterministic step to a lower noise level, then fresh noise back up.

In sigma space DDPM's posterior step, DDIM with eta and k-diffusion's Euler-ancestral are one
family: from sigma to sigma_next, step the ODE down to sigma_down and add noise of std sigma_up,
with sigma_down^2 + sigma_up^2 = sigma_next^2.
"""

from __future__ import annotations

import math

from .._util import randn_like
from ._common import denoise, report
from .registry import register


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) for a step from sigma to sigma_next.

    sigma_up = eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2) is DDIM's sigma_t(eta) (Song et al.
    2021, eq. 16) carried to the VE frame; eta = 1 is DDPM's posterior std, eta = 0 no noise.
    """
    if sigma_next == 0:
        return 0.0, 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(0.0, 1 - sigma_next**2 / sigma**2)))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@register("euler_ancestral", calls_per_step=1)
def sample_euler_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, eta=1.0):
    """Euler-ancestral: an Euler step down to sigma_down, then noise sigma_up (eta = 1: DDPM's variance).

    Cost: `steps` denoiser calls.
    """
    cond = cond or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = denoised + (sigma_down / sigma) * (x - denoised)
        if sigma_up > 0:
            x = x + randn_like(x, generator) * sigma_up
    return x


@register("ddim", calls_per_step=1)
def sample_ddim(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12) in sigma space: x_next = x0_hat + sqrt(sigma_next^2 - sigma_up^2) eps_hat + sigma_up z.

    eta = 0 (default) is deterministic and equals Euler on the probability-flow ODE; eta = 1 is DDPM.
    The same update as Euler-ancestral with the same eta. Cost: `steps` denoiser calls.
    """
    return sample_euler_ancestral(denoiser, x, sigmas, generator=generator, callback=callback, cond=cond, eta=eta)


@register("ddpm", calls_per_step=1)
def sample_ddpm(denoiser, x, sigmas, *, generator=None, callback=None, cond=None):
    """DDPM's ancestral sampler (Ho et al. 2020, eqs. 6-7): draw x_next from the posterior q(x_next | x, x0_hat).

    Written as the paper's posterior mean and variance, carried to sigma space:
    mean = (1 - r) x0_hat + r x, var = sigma_next^2 (1 - r), r = sigma_next^2 / sigma^2.
    Over any decreasing sigmas (the schedule's own timesteps reproduce the paper exactly).
    Cost: `steps` denoiser calls.
    """
    cond = cond or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, denoised)
        r = sigma_next**2 / sigma**2
        x = (1 - r) * denoised + r * x
        if sigma_next > 0:
            x = x + randn_like(x, generator) * sigma_next * math.sqrt(1 - r)
    return x
