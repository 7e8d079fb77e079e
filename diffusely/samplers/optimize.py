"""Sigma schedules optimised for one denoiser, sampler and step count (in the spirit of Align Your Steps).

Sabour et al. 2024 ("Align Your Steps") show that the best place for a few steps depends on the model
and the solver. Here the criterion is direct: the distance between what the sampler makes from a
small batch of noise and what the probability-flow ODE makes from the same noise (a tight-tolerance
adaptive solve). The interior sigmas are searched in log space by coordinate search, starting from
Karras's spacing; sigma_max, sigma_min and the final 0 stay where they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..schedules import get_sigmas
from . import sample  # this module is not imported by the package: no cycle
from .registry import check_options, get_sampler


@dataclass
class OptimizedSchedule:
    sigmas: torch.Tensor  # (steps + 1,) float64, decreasing, ending in 0
    error: float  # RMS distance to the reference with these sigmas
    error_karras: float  # the same with Karras's (rho = 7), where the search started
    evaluations: int  # sampler runs the search made


def _sigmas_from_logits(logits: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Decreasing sigmas from sigma_max to sigma_min, then 0: log-sigma gaps proportional to softmax(logits)."""
    gaps = logits.softmax(0) * math.log(sigma_max / sigma_min)
    sigmas = (math.log(sigma_max) - torch.cat([gaps.new_zeros(1), gaps.cumsum(0)])).exp()
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exactly, not to rounding
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _logits_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The inverse of _sigmas_from_logits (up to a constant): the log of the log-sigma gaps."""
    return (sigmas[:-2].log() - sigmas[1:-1].log()).log()


def sampler_error(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, method: str, reference: torch.Tensor,
                  **options) -> float:
    """RMS distance between `method` run over `sigmas` from standard-normal `noise` and `reference`."""
    with torch.no_grad():
        out = get_sampler(method)(denoiser, noise * float(sigmas[0]), sigmas, **options)
    return float((out - reference).pow(2).mean().sqrt())


def ode_reference(denoiser, noise: torch.Tensor, *, sigma_min: float, sigma_max: float, rtol: float = 1e-5) -> torch.Tensor:
    """The probability-flow ODE's endpoints for `noise`: an adaptive solve at tolerance rtol (= atol)."""
    with torch.no_grad():
        return sample(denoiser, noise, method="adaptive", sigma_min=sigma_min, sigma_max=sigma_max, rtol=rtol, atol=rtol)


def optimize_sigmas(denoiser, noise: torch.Tensor, steps: int, method: str, *, sigma_min: float, sigma_max: float,
                    reference: Optional[torch.Tensor] = None, reference_rtol: float = 1e-5, step_size: float = 0.5,
                    min_step_size: float = 0.02, max_evaluations: int = 400, **options) -> OptimizedSchedule:
    """Search the sigmas for `steps` steps of `method` that bring its output closest to the ODE's.

    noise: (B, ...) standard normal, a small batch (the search makes up to max_evaluations sampler
    runs on it). reference: the exact endpoints for that noise, if known; else an adaptive solve at
    reference_rtol. The search moves one log-sigma gap at a time by +-step_size (in the softmax
    logits of the gaps, which keeps the sigmas decreasing), keeps a move that lowers the RMS error,
    and halves the step when a sweep finds none, down to min_step_size. Deterministic methods only
    make sense here (the error of a stochastic one is mostly its noise). `options` go to the sampler.
    """
    check_options(method, options)  # before the reference solve, which is the costly part
    if reference is None:
        reference = ode_reference(denoiser, noise, sigma_min=sigma_min, sigma_max=sigma_max, rtol=reference_rtol)
    evaluations = 0

    def error(sigmas):
        nonlocal evaluations
        evaluations += 1
        return sampler_error(denoiser, noise, sigmas, method, reference, **options)

    karras = get_sigmas(steps, sigma_min, sigma_max, "karras")
    best = error_karras = error(karras)
    if steps < 3:  # [sigma_max, sigma_min, 0] or [sigma_max, 0]: nothing to move
        return OptimizedSchedule(karras, best, error_karras, evaluations)
    logits = _logits_from_sigmas(karras)
    while step_size >= min_step_size and evaluations < max_evaluations:
        improved = False
        for j in range(len(logits)):
            if evaluations >= max_evaluations:
                break
            for move in (step_size, -step_size):
                trial = logits.clone()
                trial[j] += move
                e = error(_sigmas_from_logits(trial, sigma_min, sigma_max))
                if e < best:
                    logits, best, improved = trial, e, True
                    break
        if not improved:
            step_size /= 2
    return OptimizedSchedule(_sigmas_from_logits(logits, sigma_min, sigma_max), best, error_karras, evaluations)
