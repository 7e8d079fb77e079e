"""The sampler registry: a sampler is added by one decorator beside its function, which records its name and
its cost; SAMPLERS, the cost of a step count, the steps a budget buys and the option checks all read from here.

    @register("heun", calls_per_step=2)
    def sample_heun(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, S_churn=0.0, ...):

An option means the same thing in every sampler that takes it, so its allowed values are written once, by
name, in OPTION_RANGES; a new option goes there too (tests/test_samplers.py checks that every option has one).
"""

from __future__ import annotations

import inspect
import math
from numbers import Real
from typing import Callable, Optional

import torch

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {}
_CALLS_PER_STEP: dict[str, Optional[int]] = {}


def register(name: str, calls_per_step: Optional[int]):
    """Register the decorated sampler under `name`.

    calls_per_step: denoiser evaluations per step; the last step, a plain denoise to sigma 0, costs one, so
    `steps` steps cost calls_per_step * (steps - 1) + 1. None: a variable cost (set by a tolerance).
    """
    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in SAMPLERS:
            raise ValueError(f"a sampler named {name!r} is already registered ({SAMPLERS[name].__qualname__})")
        SAMPLERS[name], _CALLS_PER_STEP[name] = fn, calls_per_step
        return fn
    return add


def get_sampler(method: str) -> Callable[..., torch.Tensor]:
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[method]


def nfe(method: str, steps: int) -> Optional[int]:
    """Number of denoiser evaluations `method` spends for `steps` steps; None where it is variable
    (adaptive: set by its tolerance, reported through its `info` option)."""
    get_sampler(method)
    k = _CALLS_PER_STEP[method]
    return None if k is None else k * (steps - 1) + 1


def steps_for_nfe(method: str, nfe: int) -> int:
    """The most steps `method` can take for at most `nfe` denoiser evaluations (heun, 10 -> 5 steps, 9 calls)."""
    get_sampler(method)
    k = _CALLS_PER_STEP[method]
    if k is None:
        raise ValueError(f"{method!r} spends a variable number of evaluations; give it rtol/atol, not a budget")
    if int(nfe) != nfe or nfe < 1:
        raise ValueError(f"{method!r} needs a budget of at least 1 evaluations, got nfe={nfe!r}")
    return (int(nfe) - 1) // k + 1


def resolve_steps(method: str, steps: Optional[int] = None, nfe: Optional[int] = None) -> Optional[int]:
    """The step count from exactly one of `steps` and `nfe` (a budget); None for a variable-cost method,
    which takes neither."""
    get_sampler(method)
    if _CALLS_PER_STEP[method] is None:
        if steps is not None or nfe is not None:
            raise ValueError(f"{method!r} chooses its own steps: give it rtol/atol (options), not steps or nfe")
        return None
    if (steps is None) == (nfe is None):
        raise ValueError(f"give exactly one of steps and nfe (a budget of denoiser evaluations), "
                         f"got steps={steps!r}, nfe={nfe!r}")
    return steps if nfe is None else steps_for_nfe(method, nfe)


# ---------------------------------------------------------------------------------------------
# options


def _number(low: float, *, above: bool = False, finite: bool = True, integer: bool = False) -> Callable[[object], bool]:
    """A check for a real number >= low (> low if `above`), finite unless told, integral if `integer`."""
    def ok(v) -> bool:
        if not isinstance(v, Real) or math.isnan(v) or (finite and math.isinf(v)):
            return False
        return (v > low if above else v >= low) and (not integer or float(v).is_integer())
    return ok


# option -> (what it allows, in words; the check). Options from the CLI arrive as floats (order=2.0, lower_order_final=0.0)
OPTION_RANGES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "S_churn": ("a finite number >= 0", _number(0)),
    "S_tmin": ("a finite number >= 0", _number(0)),
    "S_tmax": ("a number >= 0 (inf: no upper bound)", _number(0, finite=False)),
    "S_noise": ("a finite number >= 0", _number(0)),
    "eta": ("a finite number >= 0 (0: no fresh noise)", _number(0)),
    "s_noise": ("a finite number >= 0", _number(0)),
    "order": ("an integer >= 1", _number(1, integer=True)),
    "lower_order_final": ("true or false (1 or 0)", lambda v: isinstance(v, Real) and v in (0, 1)),
    # tolerances floored at 1e-10: no sample is solved tighter (float64 rounds at ~1e-16 of |x|, and over thousands of
    # steps; float32 samples cannot resolve under ~1e-7), so a smaller one (1e-300) is refused at once instead of
    # spending max_nfe evaluations before its error
    "rtol": ("a finite number >= 1e-10", _number(1e-10)),
    "atol": ("a finite number >= 1e-10", _number(1e-10)),
    "h_init": ("a finite number > 0", _number(0, above=True)),
    "max_nfe": ("an integer >= 4 (one evaluation to start, three a step)", _number(4, integer=True)),
}
PASSED_THROUGH = {"cond", "info"}  # conditioning for the denoiser; a dict the sampler fills


def sampler_options(method: str) -> set[str]:
    """The options `method` takes: its keyword-only parameters but the generator and the callback."""
    params = inspect.signature(get_sampler(method)).parameters.items()
    return {n for n, p in params if p.kind == p.KEYWORD_ONLY} - {"generator", "callback"}


def check_options(method: str, options: dict) -> None:
    """Refuse an option `method` does not take, or a value outside the option's range (a nan, an inf, a
    negative noise scale, a zero tolerance): a ValueError naming the option and what it allows."""
    allowed = sampler_options(method)
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"sampler {method!r} takes no option {', '.join(sorted(unknown))}; "
                         f"its options: {', '.join(sorted(allowed))}")
    for name, value in options.items():
        if name in OPTION_RANGES and not OPTION_RANGES[name][1](value):
            raise ValueError(f"sampler option {name} must be {OPTION_RANGES[name][0]}, got {value!r}")
