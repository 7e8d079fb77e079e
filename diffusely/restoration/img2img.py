"""SDEdit (Meng et al. 2022): transform an image by noising it part way and sampling back down.

The strength s in [0, 1] picks how far: the image is noised to sigma(s), the point a fraction s of the
way from sigma_min to sigma_max on EDM's rho-spaced scale (Karras et al. 2022, eq. 5),

    sigma(s) = (sigma_min^(1/rho) + s (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,   rho = 7,

so s = 1 starts from (almost) pure noise, s -> 0 keeps the image, and ceil(s * steps) steps are taken,
as diffusers' img2img spends the last s of its schedule. With sigma_min 0.002 and sigma_max 80:
s = 0.3 -> sigma 0.32, s = 0.5 -> 2.5, s = 0.6 -> 5.8, s = 0.8 -> 24.
Class or prompt guidance composes as everywhere: pass a ClassifierFreeGuidance denoiser and cond.
"""

from __future__ import annotations

import math

import torch

from .._util import randn_like
from ..samplers import sample
from .operators import MeasurementError

RHO = 7.0


def strength_to_sigma(strength: float, sigma_min: float, sigma_max: float, rho: float = RHO) -> float:
    """The noise level an SDEdit of `strength` starts from (see the module's docstring)."""
    if not (math.isfinite(strength) and 0 <= strength <= 1):
        raise MeasurementError(f"strength must be in [0, 1] (0 keeps the image, 1 redraws it), got {strength}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + strength * (hi - lo)) ** rho


def img2img(denoiser, image: torch.Tensor, *, strength: float, method: str, steps: int, sigma_min: float,
            sigma_max: float, generator=None, **sampling) -> torch.Tensor:
    """SDEdit: image (B, C, *spatial) in the model's data range -> a sample that keeps its layout.

    steps: what a strength-1 run would take; ceil(strength * steps) are taken, from sigma(strength) down
    (cost: the method's calls for that many steps). `sampling` goes to diffusely.sample (spacing, callback,
    cond, the method's options). Strength 0 returns the image unchanged, at no cost.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MeasurementError(f"steps must be a whole number >= 1, got {steps!r}")
    sigma = strength_to_sigma(strength, sigma_min, sigma_max)
    taken = math.ceil(strength * steps)
    if taken == 0 or sigma <= sigma_min:
        return image.clone()
    noise = randn_like(image, generator)
    # sample() starts from noise * sigma: handing it image / sigma + n starts it from image + sigma n
    return sample(denoiser, image / sigma + noise, method=method, steps=taken, sigma_min=sigma_min,
                  sigma_max=sigma, generator=generator, **sampling)
