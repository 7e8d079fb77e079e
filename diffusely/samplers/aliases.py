"""The names people already type for samplers and schedules -> (sampler, spacing, options) here.

AUTOMATIC1111 / ComfyUI names ("DPM++ 2M Karras", "Euler a", "uni_pc"), k-diffusion's function names
(`sample_dpmpp_2m`) and diffusers' scheduler classes with their flags
(`DPMSolverMultistepScheduler(use_karras_sigmas=True, algorithm_type="sde-dpmsolver++")`). Where nothing
here is the same method, an alias names the closest one and its note says what differs; the table in
docs/samplers-aliases.md lists them all. Names are matched without regard to case or repeated spaces.

Spacings: A1111's and diffusers' default visits the model's own timesteps evenly; for a run on discrete
timesteps the exact equivalent is `run.denoiser.schedule.spacing("linspace")`, and the named one closest to
it, for any run, is "uniform-t" (even in the continuous VP-linear time). Karras is "karras"; "exponential"
sigmas (even in log sigma) and Lu's lambdas (even in log-SNR) are both "log-snr".
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Optional

from .registry import SAMPLERS

SAME_NOISE = "same method; its noise is drawn from per-sample generators, not a Brownian tree, so samples differ"
# k-diffusion's multistep solvers keep their order to the end; ours take the step before the last at first order
# below 15 steps unless told not to (diffusers does as ours: see multistep._order)
KEEP_ORDER = {"lower_order_final": False}
SDE_END = "; below 15 steps ours takes the step before the last at first order, k-diffusion does not"
LMS_NOTE = ("closest: the same linear multistep in sigma, but ours ends with a plain denoise where "
            "k-diffusion takes a last multistep step to 0")


@dataclass(frozen=True)
class Alias:
    """What an outside name means here: a sampler, a spacing (None: the caller's, or Karras), options, and a
    note saying what differs where the mapping is not exact ("" where it is)."""

    sampler: str
    spacing: Optional[str] = None
    options: dict = field(default_factory=dict)
    note: str = ""


def _a1111(sampler: str, default: str, note: str = "", **options) -> dict[str, Alias]:
    """An A1111 sampler name with its schedule-type suffixes: bare (A1111 1.9+'s default schedule for it),
    ' Karras' and ' Exponential'."""
    return {"": Alias(sampler, default, options, note), " Karras": Alias(sampler, "karras", options, note),
            " Exponential": Alias(sampler, "log-snr", options, note)}


_UNIFORM = "uniform-t"
_A1111 = {
    "Euler": _a1111("euler", _UNIFORM),
    "Euler a": _a1111("euler_ancestral", _UNIFORM, SAME_NOISE),
    "Heun": _a1111("heun", _UNIFORM),
    "LMS": _a1111("lms", _UNIFORM, LMS_NOTE, **KEEP_ORDER),
    "DPM++ 2M": _a1111("dpmpp_2m", "karras", **KEEP_ORDER),
    "DPM++ 2M SDE": _a1111("dpmpp_2m_sde", "log-snr", SAME_NOISE + SDE_END),
    "DPM++ 2M SDE Heun": _a1111("dpmpp_2m_sde", "log-snr", "closest: ours extrapolates D to the step's middle "
                                "(k-diffusion's midpoint form); the Heun form weighs the difference by phi_2"
                                + SDE_END),
    "DPM++ 3M SDE": _a1111("dpmpp_3m_sde", "log-snr", "closest: ours integrates the quadratic exactly, k-diffusion "
                           "takes half the second difference; A1111 also drops the next-to-last sigma" + SDE_END),
    "DPM++ SDE": _a1111("dpmpp_2m_sde", "karras", "closest: k-diffusion's dpmpp_sde is a singlestep 2S SDE "
                        "(2 calls a step); this is the multistep 2M SDE (1 call)"),
    "DPM++ 2S a": _a1111("dpmpp_2s", "karras", "closest: the same 2S step without the ancestral noise"),
    "DPM2": _a1111("heun", "karras", "closest: DPM2 evaluates at the step's geometric middle, Heun at its end; "
                   "both second order, 2 calls a step"),
    "DPM2 a": _a1111("euler_ancestral", "karras", "closest: first-order ancestral (DPM2 a is second order)"),
    "DPM adaptive": {"": Alias("adaptive", None, {}, "closest: an adaptive DPM-Solver-2/3 pair, as k-diffusion's "
                                                      "dpm_adaptive; tolerances are ours")},
    "DDIM": {"": Alias("ddim", _UNIFORM)},
    "PLMS": {"": Alias("lms", _UNIFORM, {"order": 4}, "closest: PLMS is 4th-order linear multistep on eps in "
                                                        "timesteps; ours in sigma")},
    "UniPC": _a1111("unipc", _UNIFORM, "closest: A1111's UniPC defaults to variant bh1, order 3; ours is bh2",
                    order=3),
}
_COMFY = {  # ComfyUI's sampler names (its scheduler is chosen apart: see SPACING_ALIASES)
    "dpm_2": Alias("heun", None, {}, _A1111["DPM2"][""].note),
    "dpm_2_ancestral": Alias("euler_ancestral", None, {}, _A1111["DPM2 a"][""].note),
    "dpm_adaptive": _A1111["DPM adaptive"][""],
    "dpmpp_2s_ancestral": Alias("dpmpp_2s", None, {}, _A1111["DPM++ 2S a"][""].note),
    "dpmpp_sde": Alias("dpmpp_2m_sde", None, {}, _A1111["DPM++ SDE"][""].note),
    "dpmpp_sde_gpu": Alias("dpmpp_2m_sde", None, {}, _A1111["DPM++ SDE"][""].note),
    "dpmpp_2m_sde_gpu": Alias("dpmpp_2m_sde", None, {}, SAME_NOISE + SDE_END),
    "dpmpp_3m_sde_gpu": Alias("dpmpp_3m_sde", None, {}, _A1111["DPM++ 3M SDE"][""].note),
    "uni_pc": Alias("unipc", None, {}, "closest: ComfyUI's uni_pc is variant bh1; ours is bh2"),
    "uni_pc_bh2": Alias("unipc", None, {}),
    "ipndm": Alias("lms", None, {"order": 4, **KEEP_ORDER},
                   "closest: iPNDM is 4th-order Adams-Bashforth on eps, as our lms"),
}
_KDIFFUSION = {  # k-diffusion's functions take the caller's sigmas: no spacing of their own
    "sample_euler": Alias("euler"), "sample_euler_ancestral": Alias("euler_ancestral", None, {}, SAME_NOISE),
    "sample_heun": Alias("heun"), "sample_lms": Alias("lms", None, KEEP_ORDER, LMS_NOTE),
    "sample_dpmpp_2m": Alias("dpmpp_2m", None, KEEP_ORDER), "sample_dpmpp_2m_sde": _COMFY["dpmpp_2m_sde_gpu"],
    "sample_dpmpp_3m_sde": _COMFY["dpmpp_3m_sde_gpu"], "sample_dpmpp_sde": _COMFY["dpmpp_sde"],
    "sample_dpmpp_2s_ancestral": _COMFY["dpmpp_2s_ancestral"], "sample_dpm_2": _COMFY["dpm_2"],
    "sample_dpm_2_ancestral": _COMFY["dpm_2_ancestral"], "sample_dpm_adaptive": _COMFY["dpm_adaptive"],
}
# diffusers' scheduler classes without flags: their default timestep spacing visits the training timesteps evenly
DIFFUSERS = {
    "DPMSolverMultistepScheduler": Alias("dpmpp_2m", _UNIFORM),
    "DPMSolverSinglestepScheduler": Alias("dpmpp_2s", _UNIFORM, {}, "closest: diffusers' singlestep solver "
                                          "mixes orders within a step group; ours is 2S throughout"),
    "DPMSolverSDEScheduler": Alias("dpmpp_2m_sde", _UNIFORM, {}, _A1111["DPM++ SDE"][""].note),
    "EulerDiscreteScheduler": Alias("euler", _UNIFORM),
    "EulerAncestralDiscreteScheduler": Alias("euler_ancestral", _UNIFORM, {}, SAME_NOISE),
    "HeunDiscreteScheduler": Alias("heun", _UNIFORM),
    "KDPM2DiscreteScheduler": Alias("heun", _UNIFORM, {}, _A1111["DPM2"][""].note),
    "KDPM2AncestralDiscreteScheduler": Alias("euler_ancestral", _UNIFORM, {}, _A1111["DPM2 a"][""].note),
    "LMSDiscreteScheduler": Alias("lms", _UNIFORM),
    "DDIMScheduler": Alias("ddim", _UNIFORM),
    "DDPMScheduler": Alias("ddpm", _UNIFORM),
    "PNDMScheduler": Alias("lms", _UNIFORM, {"order": 4}, _A1111["PLMS"][""].note),
    "UniPCMultistepScheduler": Alias("unipc", _UNIFORM, {"order": 2}),
    "DEISMultistepScheduler": Alias("deis", _UNIFORM, {"order": 2}),
    "EDMEulerScheduler": Alias("euler", "karras"),
    "EDMDPMSolverMultistepScheduler": Alias("dpmpp_2m", "karras"),
}

ALIASES: dict[str, Alias] = {
    **{name + suffix: alias for name, variants in _A1111.items() for suffix, alias in variants.items()},
    **_COMFY, **_KDIFFUSION, **DIFFUSERS,
}

# schedule names: ComfyUI's schedulers, A1111's schedule types, diffusers' flags
SPACING_ALIASES: dict[str, str] = {
    "karras": "karras", "exponential": "log-snr", "normal": _UNIFORM, "simple": _UNIFORM, "sgm_uniform": _UNIFORM,
    "ddim_uniform": _UNIFORM, "uniform": _UNIFORM, "automatic": _UNIFORM, "use_karras_sigmas": "karras",
    "use_exponential_sigmas": "log-snr", "use_lu_lambdas": "log-snr",
}


def _key(name: str) -> str:
    return " ".join(name.casefold().split())


_BY_KEY = {_key(name): alias for name, alias in ALIASES.items()}
_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.S)
# DPMSolverMultistepScheduler's (algorithm_type, solver_order) -> sampler and what differs
_DPMSOLVER = {
    ("dpmsolver++", 1): ("ddim", ""), ("dpmsolver++", 2): ("dpmpp_2m", ""),
    ("dpmsolver++", 3): ("dpmpp_3m", "closest: ours integrates the quadratic exactly, diffusers' 3M takes half "
                                     "the second difference"),
    ("sde-dpmsolver++", 2): ("dpmpp_2m_sde", SAME_NOISE),
    ("sde-dpmsolver++", 3): ("dpmpp_3m_sde", _A1111["DPM++ 3M SDE"][""].note),
    ("dpmsolver", 2): ("dpmpp_2m", "closest: the noise-prediction DPM-Solver; ours is the data-prediction ++ form"),
    ("sde-dpmsolver", 2): ("dpmpp_2m_sde", "closest: the noise-prediction SDE solver; ours is the ++ form"),
}


def _flags(text: str, name: str) -> dict:
    """'a=1, b="x"' -> {'a': 1, 'b': 'x'} (Python literals only)."""
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if call.args:
            raise ValueError("positional")
        return {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError):
        raise ValueError(f"cannot read the flags of {name!r}: write them as Python keywords, e.g. "
                         f"DPMSolverMultistepScheduler(use_karras_sigmas=True)") from None


def diffusers_alias(cls: str, **flags) -> Alias:
    """A diffusers scheduler class and its flags (use_karras_sigmas, use_exponential_sigmas, use_lu_lambdas,
    solver_order, algorithm_type) as an Alias; a ValueError names a flag or a value without an equivalent."""
    if cls not in DIFFUSERS:
        raise ValueError(f"unknown diffusers scheduler {cls!r}; known: {', '.join(DIFFUSERS)}")
    base = DIFFUSERS[cls]
    sampler, spacing, options, note = base.sampler, base.spacing, dict(base.options), base.note
    for flag, value in flags.items():
        if flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas"):
            spacing = SPACING_ALIASES[flag] if value else spacing
        elif flag == "solver_order" and "order" in options:
            options["order"] = value
        elif flag not in ("solver_order", "algorithm_type") or cls != "DPMSolverMultistepScheduler":
            raise ValueError(f"{cls} flag {flag}={value!r} has no equivalent here; the flags taken: "
                             f"use_karras_sigmas, use_exponential_sigmas, use_lu_lambdas, solver_order, algorithm_type")
    if cls == "DPMSolverMultistepScheduler":
        key = (flags.get("algorithm_type", "dpmsolver++"), flags.get("solver_order", 2))
        if key not in _DPMSOLVER:
            raise ValueError(f"{cls} with algorithm_type={key[0]!r}, solver_order={key[1]!r} has no equivalent "
                             f"here; taken: {', '.join(f'{a} order {o}' for a, o in _DPMSOLVER)}")
        sampler, note = _DPMSOLVER[key]
    return Alias(sampler, spacing, options, note)


def lookup(name: str) -> Alias:
    """The Alias of a sampler name: one of ours (itself), an alias in ALIASES, or a diffusers class with flags
    'Class(flag=value, ...)'. A ValueError lists what is accepted."""
    if name in SAMPLERS:
        return Alias(name)
    call = _CALL.match(name)
    if call:
        return diffusers_alias(call.group(1), **_flags(call.group(2), name))
    if _key(name) in _BY_KEY:
        return _BY_KEY[_key(name)]
    raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}, or a name A1111, ComfyUI, "
                     f"k-diffusion or diffusers use (e.g. 'DPM++ 2M Karras', 'Euler a', 'sample_dpmpp_2m', "
                     f"'DPMSolverMultistepScheduler(use_karras_sigmas=True)'; docs/samplers-aliases.md)")


def resolve_sampler(name: str) -> tuple[str, Optional[str], dict]:
    """(sampler in SAMPLERS, spacing name or None, options) for any name `lookup` takes."""
    alias = lookup(name)
    return alias.sampler, alias.spacing, dict(alias.options)


def resolve_spacing(name: str) -> str:
    """A spacing name of ours, or ComfyUI's / A1111's / diffusers' name for one (SPACING_ALIASES), -> ours."""
    from ..schedules import SPACINGS
    if name in SPACINGS:
        return name
    if _key(name) in SPACING_ALIASES:
        return SPACING_ALIASES[_key(name)]
    raise ValueError(f"unknown spacing {name!r}; choose one of: {', '.join(SPACINGS)}, or "
                     f"{', '.join(SPACING_ALIASES)}")
