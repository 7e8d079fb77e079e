"""Stochastic DPM-Solver++ (2M and 3M SDE): the multistep solvers on the reverse SDE.

The data-prediction exponential integrator of DPM-Solver++ (Lu et al. 2022b) applied to the reverse
SDE, as k-diffusion's dpmpp_2m_sde and diffusers' "sde-dpmsolver++" do. From lambda to
lambda_next = lambda + h (eta = 1: the reverse SDE; eta = 0: the ODE) the step is

    x_next = e^-(1 + eta) h x + (1 - e^-(1 + eta) h) D + (higher-order terms) + sigma_next sqrt(1 - e^(-2 eta h)) z,

the multistep update of multistep.py with its integrating factor raised by eta, then fresh noise.
Per-sample generators make each sample depend on its own seed only.
"""

from __future__ import annotations

from .multistep import dpmpp_multistep
from .registry import register


@register("dpmpp_2m_sde", calls_per_step=1)
def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2M) SDE: the 2M step on the reverse SDE (eta = 1) with fresh noise after every step.

    Second order in the drift; the first step is first order (and the one before the last, below 15
    steps), the last (to sigma 0) a plain denoise, with no noise after it. Needs more steps than the ODE solvers for the same error, but forgets
    early errors. Cost: `steps` denoiser calls.
    """
    return dpmpp_multistep(denoiser, x, sigmas, order=2, eta=eta, s_noise=s_noise, generator=generator,
                           callback=callback, cond=cond)


@register("dpmpp_3m_sde", calls_per_step=1)
def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE: the 3M step on the reverse SDE (eta = 1) with fresh noise after every step.

    Warm-up at orders 1 and 2; below 15 steps the last step before sigma 0 is first order; the
    last step, to sigma 0, is a plain denoise. Its second differences amplify the injected noise
    at few steps (Gaussian data of std 0.7: std 1.2-1.5 at 10 steps, 0.6-0.7 from 20): below 20
    steps prefer dpmpp_2m_sde. Cost: `steps` denoiser calls.
    """
    return dpmpp_multistep(denoiser, x, sigmas, order=3, eta=eta, s_noise=s_noise, generator=generator,
                           callback=callback, cond=cond)
