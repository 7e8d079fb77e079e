"""Which sampler spends a budget of denoiser evaluations when none is named (`diffusely sample RUN --nfe K`), and
the search, at the end of training, of the sigma schedules it then uses at the usual budgets.

The table is measured (docs/samplers.md, "Which sampler at which budget"): the RMS distance to the probability-flow
ODE's endpoint from the same noise, on two Gaussian mixtures with an exact denoiser and on a small trained shapes
run. At 5 NFE UniPC leads with a schedule optimised for the run (0.027 on that run, where Heun's 3 steps make 1.57)
and without one on log-SNR spacing (0.090, Karras 0.205); from 10 NFE DEIS does (10 NFE: optimised 0.0033 against
UniPC's 0.022; Karras 0.0105). From 35 NFE, the cost of the run's default 18 Heun steps, the run's own sampler is as
good, and a budget keeps it.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch

from .optimize import OptimizedSchedule, ode_reference, optimize_sigmas
from .registry import SAMPLERS

# (largest budget in NFE, sampler, its spacing where the run stores no schedule for it), by rising budget
BUDGET_DEFAULTS = ((7, "unipc", "log-snr"), (34, "deis", "karras"))
# a latent text run's sampler and steps (train.latents), 35 evaluations as Heun's 18: on two 60-minute runs of the
# default, two draws each, it drew more of what the prompts ask than Heun 18 on three sets of held-out prompts (count
# 0.93-0.95 against 0.91-0.93, all right 0.87-0.91 against 0.86-0.88; docs/text.md), fresh noise each step redrawing
# objects a deterministic path merges or leaves out. With the stock Heun it is a default a budget may replace.
TEXT_SAMPLER = ("euler_ancestral", 35)
# the options by which a sampler adds fresh noise each step, where above 0; and those that always add it
NOISE_OPTIONS, ALWAYS_NOISY = ("eta", "S_churn"), ("ddpm", "consistency")
SEARCHED_BUDGETS = (5, 10, 20)  # the budgets whose schedules training optimises when it ends
SEARCH_SAMPLES = 8  # noise the end-of-training search runs on (16 and 8 give the same held-out error)
MAX_SEARCH = 150  # sampler runs per budget at most (at 5 NFE: 20 runs find 1.5x the best error, 80 runs 1.05x)
MIN_SEARCH = 20  # fewer runs than this per budget are not worth a search


def added_noise(name: str, options: dict) -> Optional[str]:
    """Whether sampler `name` with `options` adds fresh noise each step, and by what: "eta 1" (euler_ancestral and the
    SDE ones by default, ddim when given one), "S_churn 40" (euler, heun), "" (ddpm, and consistency past its first
    step); None for a deterministic one. No schedule is fitted to those: their distance from the ODE's endpoint is
    mostly that noise."""
    if name in ALWAYS_NOISY:
        return ""
    params = inspect.signature(SAMPLERS[name]).parameters
    for key in NOISE_OPTIONS:
        value = options.get(key, params[key].default) if key in params else 0
        if value > 0:
            return f"{key} {value:g}"
    return None


def budget_default(nfe: int) -> Optional[tuple[str, str]]:
    """(sampler, spacing where the run has no optimised schedule) that spends `nfe` evaluations best, or None from
    35 NFE on, where the run's own sampler does as well."""
    for top, sampler, spacing in BUDGET_DEFAULTS:
        if nfe <= top:
            return sampler, spacing
    return None


def search_runs(forwards: float, costs: Sequence[int], n: int = SEARCH_SAMPLES) -> int:
    """The sampler runs per search that `forwards` per-sample denoiser evaluations pay for, for searches of samplers
    costing `costs` evaluations a run, on n samples (after an adaptive reference solve of about 200 evaluations),
    at most MAX_SEARCH; 0 below MIN_SEARCH."""
    runs = int((forwards / n - 200) // max(1, sum(costs)))
    return min(runs, MAX_SEARCH) if runs >= MIN_SEARCH else 0


def optimize_plans(denoiser, noise: torch.Tensor, plans: list[tuple[str, int]], *, sigma_min: float,
                   sigma_max: float, runs: int) -> list[OptimizedSchedule]:
    """For each plan (sampler, steps), the sigmas that bring it closest to the ODE's endpoints from `noise` (B, ...),
    standard normal: one reference solve for all, then at most `runs` sampler runs each (optimize_sigmas)."""
    reference = ode_reference(denoiser, noise, sigma_min=sigma_min, sigma_max=sigma_max)
    return [optimize_sigmas(denoiser, noise, steps, sampler, sigma_min=sigma_min, sigma_max=sigma_max,
                            reference=reference, max_evaluations=runs) for sampler, steps in plans]
