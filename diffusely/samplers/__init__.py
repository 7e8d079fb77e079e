"""The sampler registry and `sample`, the library's front door for generation.

Every sampler is `sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None, cond=None,
**options) -> x0` over a decreasing sigma sequence that ends in 0, with `x` at noise level sigmas[0].
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch

from ..schedules import Spacing, _check_range, get_sigmas
from .adaptive import sample_adaptive
from .ancestral import ancestral_step, sample_ddim, sample_ddpm, sample_euler_ancestral
from .multistep import sample_deis, sample_dpmpp_2m, sample_dpmpp_2s, sample_dpmpp_3m, sample_lms, sample_unipc
from .ode import sample_euler, sample_heun
from .sde import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "euler_ancestral": sample_euler_ancestral,
    "ddpm": sample_ddpm,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_2s": sample_dpmpp_2s,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "deis": sample_deis,
    "lms": sample_lms,
    "adaptive": sample_adaptive,
}

# denoiser calls a method spends for a given number of steps; None: variable (set by a tolerance)
_one_per_step, _two_per_step = (lambda steps: steps), (lambda steps: 2 * steps - 1)
_NFE: dict[str, Optional[Callable[[int], int]]] = {
    "euler": _one_per_step,
    "heun": _two_per_step,
    "ddim": _one_per_step,
    "euler_ancestral": _one_per_step,
    "ddpm": _one_per_step,
    "dpmpp_2m": _one_per_step,
    "dpmpp_3m": _one_per_step,
    "dpmpp_2s": _two_per_step,
    "dpmpp_2m_sde": _one_per_step,
    "dpmpp_3m_sde": _one_per_step,
    "unipc": _one_per_step,
    "deis": _one_per_step,
    "lms": _one_per_step,
    "adaptive": None,
}


def get_sampler(method: str) -> Callable[..., torch.Tensor]:
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[method]


def nfe(method: str, steps: int) -> Optional[int]:
    """Number of denoiser evaluations `method` spends for `steps` steps; None where it is variable
    (adaptive: set by its tolerance, reported through its `info` option)."""
    get_sampler(method)
    return _NFE[method](steps) if _NFE[method] else None


def steps_for_nfe(method: str, nfe: int) -> int:
    """The most steps `method` can take for at most `nfe` denoiser evaluations (heun, 10 -> 5 steps, 9 calls)."""
    get_sampler(method)
    cost = _NFE[method]
    if cost is None:
        raise ValueError(f"{method!r} spends a variable number of evaluations; give it rtol/atol, not a budget")
    if int(nfe) != nfe or cost(1) > nfe:
        raise ValueError(f"{method!r} needs a budget of at least {cost(1)} evaluations, got nfe={nfe!r}")
    steps = 1
    while cost(steps + 1) <= nfe:
        steps += 1
    return steps


def resolve_steps(method: str, steps: Optional[int] = None, nfe: Optional[int] = None) -> Optional[int]:
    """The step count from exactly one of `steps` and `nfe` (a budget); None for a variable-cost method,
    which takes neither."""
    get_sampler(method)
    if _NFE[method] is None:
        if steps is not None or nfe is not None:
            raise ValueError(f"{method!r} chooses its own steps: give it rtol/atol (options), not steps or nfe")
        return None
    if (steps is None) == (nfe is None):
        raise ValueError(f"give exactly one of steps and nfe (a budget of denoiser evaluations), "
                         f"got steps={steps!r}, nfe={nfe!r}")
    return steps if nfe is None else steps_for_nfe(method, nfe)


def sample(denoiser, noise: torch.Tensor, *, method: str, steps: Optional[int] = None, nfe: Optional[int] = None,
           sigma_min: float, sigma_max: float, spacing: Spacing = None, generator=None, callback=None,
           **options) -> torch.Tensor:
    """Draw clean samples: scale standard-normal `noise` to sigma_max and integrate down to 0.

    steps, or nfe: a budget of denoiser evaluations, for which the method takes as many steps as fit
    (exactly one of the two; `adaptive` takes neither, its rtol/atol options set its cost).
    spacing: a name in diffusely.schedules.SPACINGS, a callable (steps, sigma_min, sigma_max) -> sigmas,
    or None for Karras rho = 7. `options` go to the method (e.g. eta, S_churn, order; cond={...} for
    conditioning).
    """
    fn = get_sampler(method)
    allowed = {n for n, p in inspect.signature(fn).parameters.items() if p.kind == p.KEYWORD_ONLY} - {"generator", "callback"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"sampler {method!r} takes no option {', '.join(sorted(unknown))}; its options: {', '.join(sorted(allowed))}")
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


__all__ = ["SAMPLERS", "sample", "nfe", "steps_for_nfe", "resolve_steps", "get_sampler", "ancestral_step",
           "sample_euler", "sample_heun", "sample_ddim", "sample_euler_ancestral", "sample_ddpm", "sample_dpmpp_2m",
           "sample_dpmpp_3m", "sample_dpmpp_2s", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_unipc",
           "sample_deis", "sample_lms", "sample_adaptive"]
