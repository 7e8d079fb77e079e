"""An adaptive-step solver: give it a tolerance, it chooses the steps and reports what they cost."""

from __future__ import annotations

import math

from ._common import denoise, report
from .multistep import _lambda, dpmpp_update
from .registry import register


def _dpm_solver_23(evaluate, x, lam, h, denoised):
    """One step from lambda to lambda + h at orders 2 and 3, sharing evaluations (DPM-Solver-2 and -3 with
    r1 = 1/3, r2 = 2/3; Lu et al. 2022a, algs. 1-2; here in data prediction, as DPM-Solver++).

    Each update is dpmpp_update over the line through D at lambda and at one inner point.
    Two denoiser evaluations. Returns (x_low, x_high).
    """
    lam_1, lam_2, lam_next = lam + h / 3, lam + 2 * h / 3, lam + h
    u1 = dpmpp_update(x, [lam], [denoised], lam_1, 1)
    d1 = evaluate(u1, lam_1)
    u2 = dpmpp_update(x, [lam_1, lam], [d1, denoised], lam_2, 2)
    d2 = evaluate(u2, lam_2)
    x_low = dpmpp_update(x, [lam_1, lam], [d1, denoised], lam_next, 2)
    x_high = dpmpp_update(x, [lam_2, lam], [d2, denoised], lam_next, 2)
    return x_low, x_high


def _error_ratio(error, x, x_next, rtol, atol) -> float:
    """The largest per-sample RMS of error / (atol + rtol |x|): <= 1 means every sample meets the tolerance."""
    scale = atol + rtol * x.abs().maximum(x_next.abs())
    return float((error / scale).pow(2).flatten(1).mean(1).sqrt().max())


@register("adaptive", calls_per_step=None)
def sample_adaptive(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, rtol=1e-3, atol=1e-3,
                    h_init=0.5, max_nfe=10_000, info=None):
    """Adaptive-step DPM-Solver-23 on the probability-flow ODE: the step size follows the tolerance.

    Steps in lambda = -log(sigma) with an embedded pair of exponential integrators (orders 2 and 3
    from the same evaluations, so their difference estimates the local error), in the spirit of
    Lu et al. 2022a's adaptive DPM-Solver. An exponential integrator rather than Bogacki-Shampine or
    RK45: those must resolve the ODE's linear part (x itself, dominant at high sigma) numerically,
    which the exponential integrator solves exactly. A step is accepted when the largest per-sample
    RMS of error / (atol + rtol |x|) is at most 1, and continued from the third-order result; the
    next step is scaled by 0.9 ratio^(-1/3) (within 0.2x to 4x). The step size is shared by the
    batch, so a sample can change with its batch by up to the tolerance.

    The solver lands on every nonzero sigma in `sigmas` (usually just sigma_max and sigma_min) and
    returns the denoiser's output at the last one, already evaluated to start the next step: the
    final denoise to sigma 0 is free. Cost: variable, 1 + 3 per accepted step + 2 per rejected one, never
    more than max_nfe: a step that could pass it is not taken, and a ValueError says where the solve stopped
    (rtol 1e-7 costs 1,300 evaluations on the toy mixtures, so the default bounds a hang, not a solve).
    Pass `info={}` to get {"nfe", "accepted", "rejected"} back. The callback sees every accepted point.
    """
    cond = cond or {}
    calls = 0

    def evaluate(x, lam):
        nonlocal calls
        calls += 1
        return denoise(denoiser, x, math.exp(-lam), cond)

    lam = _lambda(float(sigmas[0]))
    denoised = evaluate(x, lam)
    h, accepted, rejected = h_init, 0, 0
    report(callback, 0, x, float(sigmas[0]), denoised)
    for lam_end in [_lambda(float(s)) for s in sigmas[1:] if s > 0]:
        while lam < lam_end:
            if calls + 3 > max_nfe:
                raise ValueError(f"the adaptive solver reached max_nfe={max_nfe:g} evaluations at sigma "
                                 f"{math.exp(-lam):.3g}, before sigma {math.exp(-lam_end):.3g}: loosen rtol={rtol}, "
                                 f"atol={atol}, or raise max_nfe")
            last = h >= lam_end - lam
            h = min(h, lam_end - lam)
            x_low, x_high = _dpm_solver_23(evaluate, x, lam, h, denoised)
            ratio = _error_ratio(x_high - x_low, x, x_high, rtol, atol)
            if ratio <= 1:
                lam, x = lam_end if last else lam + h, x_high
                denoised = evaluate(x, lam)
                accepted += 1
                report(callback, accepted, x, math.exp(-lam), denoised)
            else:
                rejected += 1
            h *= min(4.0, max(0.2, 0.9 * ratio ** (-1 / 3))) if ratio > 0 else 4.0
    if info is not None:
        info.update(nfe=calls, accepted=accepted, rejected=rejected)
    return denoised
