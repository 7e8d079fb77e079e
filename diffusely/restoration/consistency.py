"""Data consistency: sampling a trained prior so that its samples agree with a measurement y = A x.

Zero-shot restoration needs no retraining: the prior's denoiser is wrapped so that its x0 estimate
agrees with y, and any sampler in diffusely.SAMPLERS runs unchanged on the wrapped denoiser
(DESIGN.md, "A measurement"), as it does with classifier-free guidance.

- Projected (DDNM, Wang et al. 2023, eq. 7; PiGDM's noiseless limit): x0 <- x0 + A^+ (y - A x0). Exact
  consistency for any operator with A A^+ A = A: each sampler's last step returns the denoiser's
  estimate, so the sample satisfies A x = y up to rounding, which restore() removes with one last
  projection (no network call). 1 network evaluation per denoiser call.
- DPS (Chung et al. 2022): a likelihood-gradient correction of the x0 estimate, through the
  denoiser's Jacobian; soft, so it tolerates noisy y and operators without an exact pseudo-inverse.
  Needs autograd through the network: about 3x a plain call's time and the activations' memory.
- repaint (Lugmayr et al. 2022): resampling, which a denoiser wrapper cannot express (it re-noises x
  between steps), so it is a function that drives a sampler one step at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._util import randn_like
from ..samplers import check_options, get_sampler, sample
from ..schedules import get_sigmas
from .operators import MeasurementError, Operator


@dataclass
class Projected:
    """The denoiser with its x0 estimate projected onto {x : A x = y} (DDNM's range-space correction).

    y: the measurement, batched as A(x) is (B, ...). Same cost as the wrapped denoiser."""

    denoiser: Callable[..., torch.Tensor]
    operator: Operator
    y: torch.Tensor

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        return self.operator.project(self.denoiser(x, sigma, **cond), self.y)


@dataclass
class DPS:
    """The denoiser's x0 estimate corrected by the gradient of the measurement's misfit (Chung et al. 2022):

        x0' = x0(x) - scale * grad_x 1/2 || A^+ (y - A x0(x)) ||^2  =  x0 + scale * J^T A^+ (y - A x0)

    with J = d x0 / d x the denoiser's Jacobian (taken by autograd: call it with gradients allowed, not
    under torch.inference_mode). DPS measures the misfit in y's units, ||y - A x0||, which makes its step
    depend on the operator's gain (a 4x average pool shrinks it 16x); the misfit taken through A^+ is in
    image units, so scale 1 is a whole step for every operator: where x0 barely depends on x (J ~ I, low
    noise) it is the projection above, while at high noise J is small and so is the correction.
    """

    denoiser: Callable[..., torch.Tensor]
    operator: Operator
    y: torch.Tensor
    scale: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise MeasurementError(f"the DPS scale must be a finite number >= 0 (1 is a whole step), got {self.scale}")

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("DPS takes gradients through the denoiser: sample outside torch.inference_mode()")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            x0 = self.denoiser(x, sigma, **cond)
            misfit = self.operator.pinv(self.y - self.operator(x0))
            # a sum over the batch: each sample's gradient depends on its own misfit only
            (grad,) = torch.autograd.grad(0.5 * misfit.pow(2).sum(), x)
        return (x0 - self.scale * grad).detach()


# consistency methods by name: each wraps (denoiser, operator, y) into a denoiser
CONSISTENCY = {"project": Projected, "dps": DPS}


def consistent(denoiser, operator: Operator, y: torch.Tensor, how: str = "project", scale: float = 1.0):
    """The denoiser wrapped by the consistency method `how` (see CONSISTENCY); `scale` is DPS's step."""
    if how not in CONSISTENCY:
        raise MeasurementError(f"unknown consistency method {how!r}; choose one of: {', '.join(CONSISTENCY)}")
    if how == "dps":
        return DPS(denoiser, operator, y, scale)
    if scale != 1.0:
        raise MeasurementError("scale sets the DPS step; the projection takes none")
    return Projected(denoiser, operator, y)


def restore(denoiser, operator: Operator, y: torch.Tensor, noise: torch.Tensor, *, method: str, how: str = "project",
            scale: float = 1.0, **sampling) -> torch.Tensor:
    """Sample x given y = A x: diffusely.sample on the wrapped denoiser, from standard-normal `noise`
    shaped like the images (B, C, *spatial).

    `sampling` goes to diffusely.sample (steps or nfe, sigma_min, sigma_max, spacing, generator,
    callback, cond={...}, the method's options); the cost is the method's, times ~3 in time for DPS.
    With how="project" the result is projected once more (no network call), so A x = y holds to
    rounding for every sampler.
    """
    x = sample(consistent(denoiser, operator, y, how, scale), noise, method=method, **sampling)
    return operator.project(x, y) if how == "project" else x


def repaint(denoiser, operator: Operator, y: torch.Tensor, noise: torch.Tensor, *, method: str, steps: int,
            sigma_min: float, sigma_max: float, resample: int = 10, spacing=None, generator=None,
            cond: dict | None = None, **options) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, alg. 1, jump length 1) for any operator with an exact pseudo-inverse.

    At each step from sigma to sigma_next: a step of `method` on the whole image; then the range-space part
    (the known pixels, for a mask) replaced by y noised to sigma_next, y + sigma_next A n, the forward
    process seen through A; then, `resample` - 1 times, noise added back up to sigma and the step redone,
    so the generated part harmonises with the known part. The last step, to 0, leaves A x = y exactly.
    Each step is a fresh call to the sampler on (sigma, sigma_next): multistep methods run at first order.
    Cost: resample * (steps - 1) + 1 one-step runs of the method, each at its calls per step.
    """
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise MeasurementError(f"resample must be a whole number >= 1 (1: no resampling), got {resample!r}")
    step = get_sampler(method)
    check_options(method, options)
    sigmas = get_sigmas(steps, sigma_min, sigma_max, spacing)
    x = noise * float(sigmas[0])
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        repeats = resample if sigma_next > 0 else 1  # the step to 0 ends clean: nothing to resample
        for u in range(repeats):
            x = step(denoiser, x, sigmas[i: i + 2], generator=generator, cond=cond, **options)
            known = y + sigma_next * operator(randn_like(x, generator)) if sigma_next > 0 else y
            x = operator.project(x, known)
            if u < repeats - 1:
                x = x + math.sqrt(sigma**2 - sigma_next**2) * randn_like(x, generator)
    return x
