"""The sampler registry and `sample`, the library's front door for generation.

Every sampler is `sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None, cond=None,
**options) -> x0` over a decreasing sigma sequence that ends in 0, with `x` at noise level sigmas[0].
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..schedules import Spacing, get_sigmas
from .ancestral import ancestral_step, sample_ddim, sample_ddpm, sample_euler_ancestral
from .ode import sample_euler, sample_heun

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "euler_ancestral": sample_euler_ancestral,
    "ddpm": sample_ddpm,
}

# denoiser calls a method spends for a given number of steps
_NFE: dict[str, Callable[[int], int]] = {
    "euler": lambda steps: steps,
    "heun": lambda steps: 2 * steps - 1,
    "ddim": lambda steps: steps,
    "euler_ancestral": lambda steps: steps,
    "ddpm": lambda steps: steps,
}


def get_sampler(method: str) -> Callable[..., torch.Tensor]:
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[method]


def nfe(method: str, steps: int) -> int:
    """Number of denoiser evaluations `method` spends for `steps` steps."""
    get_sampler(method)
    return _NFE[method](steps)


def sample(denoiser, noise: torch.Tensor, *, method: str, steps: int, sigma_min: float, sigma_max: float,
           spacing: Spacing = None, generator=None, callback=None, **options) -> torch.Tensor:
    """Draw clean samples: scale standard-normal `noise` to sigma_max and integrate down to 0.

    spacing: a name in diffusely.schedules.SPACINGS, a callable (steps, sigma_min, sigma_max) -> sigmas,
    or None for Karras rho = 7. `options` go to the method (e.g. eta, S_churn; cond={...} for conditioning).
    """
    fn = get_sampler(method)
    allowed = {n for n, p in inspect.signature(fn).parameters.items() if p.kind == p.KEYWORD_ONLY} - {"generator", "callback"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"sampler {method!r} takes no option {', '.join(sorted(unknown))}; its options: {', '.join(sorted(allowed))}")
    sigmas = get_sigmas(steps, sigma_min, sigma_max, spacing)
    x = noise * float(sigmas[0])
    return fn(denoiser, x, sigmas, generator=generator, callback=callback, **options)


__all__ = ["SAMPLERS", "sample", "nfe", "get_sampler", "ancestral_step", "sample_euler", "sample_heun",
           "sample_ddim", "sample_euler_ancestral", "sample_ddpm"]
