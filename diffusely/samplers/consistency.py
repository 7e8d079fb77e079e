"""Consistency models' multistep sampling (Song et al. 2023, alg. 1)."""

from __future__ import annotations

from .._util import randn_like
from ._common import denoise, report
from .registry import register


@register("consistency", calls_per_step=1)
def sample_consistency(denoiser, x, sigmas, *, generator=None, callback=None, cond=None):
    """Denoise at sigmas[0]; before each later evaluation, noise the estimate back up to that step's sigma.

    Made for consistency students (diffusely.distill), whose one evaluation lands on the ODE's end; with any other
    denoiser each step is its x0 estimate renoised. Fresh noise brings x to sigma, not sqrt(sigma^2 - sigma_min^2)
    (CM alg. 1 line 5): the two differ by under 1e-6 relative at EDM's sigma_min. Cost: `steps` denoiser calls.
    """
    cond = cond or {}
    for i in range(len(sigmas) - 1):
        sigma = float(sigmas[i])
        if i > 0:
            x = x + sigma * randn_like(x, generator)
        denoised = denoise(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, denoised)
        x = denoised
    if float(sigmas[-1]) > 0:  # asked to stop short of 0 (RePaint steps one interval at a time): noise to its level
        x = x + float(sigmas[-1]) * randn_like(x, generator)
    return x
