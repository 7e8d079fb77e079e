"""Sigma schedules optimised for a trained run (`diffusely optimize-schedule`)."""

from __future__ import annotations

from typing import Optional

import torch

from .._util import generators, randn
from ..checkpoint import LoadedRun
from ..samplers.optimize import OptimizedSchedule, ode_reference, optimize_sigmas, sampler_error
from ..schedules import get_sigmas
from .generate import sample_shape


def optimize_schedule(run: LoadedRun, steps: int, *, sampler: Optional[str] = None, n: int = 16,
                      seed: int = 1_000_000, **options) -> tuple[OptimizedSchedule, float, float]:
    """Search the sigmas for `steps` steps of `sampler` (default: the run's) on n samples of this run.

    The noise comes from seeds seed .. seed + n - 1, away from `generate`'s usual seeds; a second
    batch of n from the seeds after it measures the result on noise the search never saw. Returns
    (the search's result, held-out RMS error with Karras's spacing, held-out RMS error with the
    optimised one). Costs an adaptive reference solve per batch plus up to 400 sampler runs.
    """
    d = run.config.diffusion
    sampler = sampler or d.sampler
    device = next(run.denoiser.parameters()).device
    search, held_out = (randn((n, *sample_shape(run)), generators(range(s, s + n)), device) for s in (seed, seed + n))
    kw = dict(sigma_min=d.sigma_min, sigma_max=d.sigma_max)
    with torch.inference_mode():
        result = optimize_sigmas(run.denoiser, search, steps, sampler, **kw, **options)
        reference = ode_reference(run.denoiser, held_out, **kw)
        karras = get_sigmas(steps, d.sigma_min, d.sigma_max, "karras")
        before = sampler_error(run.denoiser, held_out, karras, sampler, reference, **options)
        after = sampler_error(run.denoiser, held_out, result.sigmas, sampler, reference, **options)
    return result, before, after
