"""The samplers and `sample`, the library's front door for generation.

Every sampler is `sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None, cond=None,
**options) -> x0` over a decreasing sigma sequence that ends in 0, with `x` at noise level sigmas[0],
registered under its name with its cost by `@register` (registry.py). SAMPLERS maps the names to the
functions, in the order of the modules imported below.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..schedules import Spacing, _check_range, get_sigmas
# each module registers its samplers as it is imported, and SAMPLERS lists them in this order (not alphabetical)
from . import ode, ancestral, multistep, sde, adaptive, consistency  # noqa: F401, I001
from .aliases import ALIASES, resolve_sampler, resolve_spacing
from .ancestral import ancestral_step
from .registry import (OPTION_RANGES, SAMPLERS, check_options, get_sampler, nfe, register, resolve_steps,
                       sampler_options, steps_for_nfe)


def sample(denoiser, noise: torch.Tensor, *, method: str, steps: Optional[int] = None, nfe: Optional[int] = None,
           sigma_min: float, sigma_max: float, spacing: Spacing = None, generator=None, callback=None,
           **options) -> torch.Tensor:
    """Draw clean samples: scale standard-normal `noise` to sigma_max and integrate down to 0.

    steps, or nfe: a budget of denoiser evaluations, for which the method takes as many steps as fit
    (exactly one of the two; `adaptive` takes neither, its rtol/atol options set its cost).
    spacing: a name in diffusely.schedules.SPACINGS, a callable (steps, sigma_min, sigma_max) -> sigmas
    (checked: finite, decreasing from sigma_max to sigma_min, then 0), or None for Karras rho = 7.
    `options` go to the method (e.g. eta, S_churn, order; cond={...} for conditioning); an option it does
    not take, or a value outside the option's range (registry.OPTION_RANGES), is a ValueError.
    method is a name in SAMPLERS or one people know from A1111, ComfyUI, k-diffusion or diffusers (aliases.py),
    which brings its spacing and options unless given here.
    """
    method, alias_spacing, alias_options = resolve_sampler(method)
    spacing = alias_spacing if spacing is None else resolve_spacing(spacing) if isinstance(spacing, str) else spacing
    options = {**alias_options, **options}
    fn = get_sampler(method)
    check_options(method, options)
    steps = resolve_steps(method, steps, nfe)
    if steps is None:
        if spacing is not None:
            raise ValueError(f"{method!r} chooses its own steps and takes no spacing")
        _check_range(sigma_min, sigma_max)
        sigmas = torch.tensor([sigma_max, sigma_min, 0.0], dtype=torch.float64)
    else:
        sigmas = get_sigmas(steps, sigma_min, sigma_max, spacing)
    x = noise * float(sigmas[0])
    return fn(denoiser, x, sigmas, generator=generator, callback=callback, **options)


__all__ = ["SAMPLERS", "sample", "nfe", "steps_for_nfe", "resolve_steps", "get_sampler", "register", "check_options",
           "sampler_options", "OPTION_RANGES", "ancestral_step", "ALIASES", "resolve_sampler", "resolve_spacing"]
