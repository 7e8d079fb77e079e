"""Sigma schedules optimised for a trained run (`diffusely optimize-schedule`, and the end of training)."""

from __future__ import annotations

from typing import Optional

import torch

from .._util import generators, randn
from ..checkpoint import LoadedRun, load_run, write_schedule
from ..samplers import nfe
from ..samplers.defaults import SEARCH_SAMPLES, SEARCHED_BUDGETS, optimize_plans, search_runs
from ..samplers.optimize import OptimizedSchedule, ode_reference, optimize_sigmas, sampler_error
from ..schedules import get_sigmas
from .conditioning import conditioning
from .generate import sample_shape, sampling_plan


def search_noise(run: LoadedRun, n: int, seed: int):
    """(denoiser, noise): the run's denoiser with the null conditions a plain `sample` draws with (no class, the
    null caption or layout), bound for n samples, and their standard-normal noise from seeds seed .. seed + n - 1."""
    device = next(run.denoiser.parameters()).device
    denoiser, cond = conditioning(run).batch(range(n), device)
    noise = randn((n, *sample_shape(run)), generators(range(seed, seed + n)), device)
    return (lambda x, sigma: denoiser(x, sigma, **cond)), noise


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
    (denoiser, search), (_, held_out) = search_noise(run, n, seed), search_noise(run, n, seed + n)
    kw = dict(sigma_min=d.sigma_min, sigma_max=d.sigma_max)
    with torch.inference_mode():
        result = optimize_sigmas(denoiser, search, steps, sampler, **kw, **options)
        reference = ode_reference(denoiser, held_out, **kw)
        karras = get_sigmas(steps, d.sigma_min, d.sigma_max, "karras")
        before = sampler_error(denoiser, held_out, karras, sampler, reference, **options)
        after = sampler_error(denoiser, held_out, result.sigmas, sampler, reference, **options)
    return result, before, after


def default_schedules(run: LoadedRun, forwards: float, *, n: int = SEARCH_SAMPLES, seed: int = 1_000_000) -> list[dict]:
    """Optimise, and store in RUN_DIR/schedules.json, the schedule a plain `sample --nfe K` uses at each budget K of
    samplers.defaults.SEARCHED_BUDGETS where it picks the sampler (`sampling_plan`), with the sampler runs that
    `forwards` per-sample denoiser evaluations pay for (n samples, seeds from `seed`). Returns [{"sampler", "steps",
    "nfe", "error", "error_karras"}] (RMS errors against the ODE on those samples); [] where there is nothing to
    search (a run that keeps its sampler, or too few evaluations)."""
    plans = [sampling_plan(run, None, None, k) for k in SEARCHED_BUDGETS]
    plans = [(sampler, steps) for sampler, steps in plans if sampler.fallback]
    runs = search_runs(forwards, [nfe(sampler, steps) for sampler, steps in plans], n)
    if not plans or not runs:
        return []
    d = run.config.diffusion
    denoiser, noise = search_noise(run, n, seed)
    with torch.inference_mode():
        found = optimize_plans(denoiser, noise, plans, sigma_min=d.sigma_min, sigma_max=d.sigma_max, runs=runs)
    for (sampler, steps), result in zip(plans, found):
        write_schedule(run.run_dir, sampler, steps, result.sigmas)
    return [{"sampler": str(sampler), "steps": steps, "nfe": nfe(sampler, steps), "error": r.error,
             "error_karras": r.error_karras} for (sampler, steps), r in zip(plans, found)]


def schedules_after_training(run_dir, device, images: int, share: float) -> list[dict]:
    """The end of `train`: `default_schedules` for the finished run in run_dir with `share` of the training's
    compute (`images` seen, each a forward and a backward pass: three evaluations). [] where that pays for no
    search (a run of a few steps, or share 0)."""
    forwards = share * 3 * images
    return default_schedules(load_run(run_dir, device), forwards) if search_runs(forwards, SEARCHED_BUDGETS) else []
