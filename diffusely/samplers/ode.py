"""Deterministic samplers: integrate the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

Euler and Heun take EDM's optional "churn" (Karras et al. 2022, alg. 2): before each step, noise
is added to raise sigma to sigma_hat = sigma (1 + gamma), which makes them stochastic.
"""

from __future__ import annotations

import math

from .._util import randn_like
from ._common import denoise, report
from .registry import register


def _churn(x, sigma, steps, generator, S_churn, S_tmin, S_tmax, S_noise):
    """EDM alg. 2 lines 5-6: raise the noise level from sigma to sigma_hat by adding fresh noise."""
    gamma = min(S_churn / steps, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + randn_like(x, generator) * S_noise * math.sqrt(sigma_hat**2 - sigma**2), sigma_hat


def _d(denoiser, x, sigma, cond):
    """The ODE's derivative dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3), and D itself."""
    denoised = denoise(denoiser, x, sigma, cond)
    return (x - denoised) / sigma, denoised


@register("euler", calls_per_step=1)
def sample_euler(denoiser, x, sigmas, *, generator=None, callback=None, cond=None,
                 S_churn=0.0, S_tmin=0.0, S_tmax=float("inf"), S_noise=1.0):
    """Euler's method on the probability-flow ODE (= deterministic DDIM, Song et al. 2021, in sigma space).

    Cost: `steps` denoiser calls for `steps + 1` sigmas. First order: halving the step halves the error.
    """
    cond = cond or {}
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x, sigma = _churn(x, sigma, steps, generator, S_churn, S_tmin, S_tmax, S_noise)
        d, denoised = _d(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, denoised)
        x = x + (sigma_next - sigma) * d
    return x


@register("heun", calls_per_step=2)
def sample_heun(denoiser, x, sigmas, *, generator=None, callback=None, cond=None,
                S_churn=0.0, S_tmin=0.0, S_tmax=float("inf"), S_noise=1.0):
    """Heun's second-order method (EDM alg. 1, or alg. 2 with S_churn > 0).

    Each step averages the slope at both ends; the last step, to sigma 0, is a plain Euler step
    (the slope at sigma 0 is undefined). Cost: 2 * steps - 1 denoiser calls. Second order.
    """
    cond = cond or {}
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x, sigma = _churn(x, sigma, steps, generator, S_churn, S_tmin, S_tmax, S_noise)
        d, denoised = _d(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, denoised)
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next, _ = _d(denoiser, x_next, sigma_next, cond)
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
    return x
