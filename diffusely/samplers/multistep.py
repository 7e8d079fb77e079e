"""Few-step ODE solvers that exploit the ODE's structure: DPM-Solver++ (2S, 2M, 3M), UniPC, DEIS, LMS.

All but LMS are exponential integrators in the half-log-SNR time lambda = -log(sigma). With alpha = 1
(our VE frame) the probability-flow ODE has the exact solution (DPM-Solver++, Lu et al. 2022b, sec. 4.1)

    x(lambda_next) = e^-h x(lambda) + int_lambda^lambda_next e^(l - lambda_next) D(x(l), l) dl,   h = lambda_next - lambda,

so the linear part is integrated exactly and only the denoiser's output D needs approximating over a
step. The multistep methods extrapolate it from the outputs they have already paid for: one
evaluation per step. A step to sigma 0 is a plain denoise (it ignores x: e^-h = 0), so each method
here spends `steps` evaluations, 2S spends 2 * steps - 1.

Multistep history lives in local lists (newest last): `lams` (lambda of each past point) and `ds`
(D there, or eps for DEIS and LMS); the first steps use the order the history allows.
"""

from __future__ import annotations

import math

import numpy as np

from .._util import randn_like
from ._common import denoise, report
from .registry import register


def _lambda(sigma: float) -> float:
    return -math.log(sigma)


def _order(order: int, i: int, steps: int, lower_order_final: bool) -> int:
    """Order of step i of `steps` (the last a plain denoise): what the history allows (i + 1 outputs);
    with lower_order_final and fewer than 15 steps, first order on the last ODE step (to sigma_min).

    That step is the longest in lambda (Karras spacing; any spacing at few steps) and ends where D
    changes fastest, next to the data: a polynomial extrapolated from earlier outputs over it
    overshoots, while the first-order step only trusts D where it was evaluated. Measured on the
    Gaussian mixtures of benchmarks/samplers.py at 5-10 evaluations it cuts the error 1.3-4x. Past
    15 steps the step is short and the method keeps its order (diffusers' DPM-Solver draws the
    same line for its own last step, to 0).
    """
    if lower_order_final and steps < 15 and i == steps - 2:
        return 1
    return min(int(order), i + 1)


# ---------------------------------------------------------------------------------------------
# DPM-Solver++


def dpmpp_update(x, lams, ds, lam_next, order, eta=0.0):
    """One DPM-Solver++ step from the newest history point (lams[-1], ds[-1]) to lam_next.

    The exponential integral above taken over the Lagrange interpolant of the last `order` outputs of
    D in lambda (order 1: DDIM; 3: the 3M step); the phi-function weights are the exact integrals of
    that polynomial. The points may lie on either side of lams[-1] (the adaptive solver's do).
    eta > 0 gives the drift of the data-prediction SDE step, whose integrating factor is
    e^-(1 + eta) h (DPM-Solver++ SDE; the caller adds the noise).
    """
    h_eta = (lam_next - lams[-1]) * (1 + eta)
    x = math.exp(-h_eta) * x - math.expm1(-h_eta) * ds[-1]  # first order (DDIM)
    if order < 2:
        return x
    h = lam_next - lams[-1]
    phi_2 = math.expm1(-h_eta) / h_eta + 1
    r0 = (lams[-1] - lams[-2]) / h
    d1 = (ds[-1] - ds[-2]) / r0  # h * dD/dlambda, backward difference
    if order == 2:
        return x + phi_2 * d1
    # DPM-Solver++(3M): the quadratic through the last three outputs, D(l) = D + d1 t + d2 t^2 / 2
    # with t = (l - lambda) / h, integrates to phi_2 d1 - phi_3 d2. k-diffusion's and diffusers' 3M
    # take half this d2: not exact for a quadratic, and second order (diffusers 0.42 on Gaussian data:
    # errors fall 2^1.6-2^1.9 per halving of the step; ours 2^3, tests/test_samplers.py)
    r1 = (lams[-2] - lams[-3]) / h
    d1_1 = (ds[-2] - ds[-3]) / r1
    d2 = 2 * (d1 - d1_1) / (r0 + r1)
    d1 = d1 + d2 * r0 / 2
    phi_3 = phi_2 / h_eta - 0.5
    return x + phi_2 * d1 - phi_3 * d2


def _dpmpp_step(x, lams, ds, lam_next, order, eta):
    """The step 2M and 3M take. Order 2 is DPM-Solver++(2M) as published (alg. 2): the first-order
    step with D extrapolated linearly to the middle of the step, D + (D - D_prev) h / (2 h_prev). On
    the mixtures of benchmarks/samplers.py it beats the exact integral of the line (dpmpp_update's
    order 2) at 10-50 evaluations, and it keeps the SDE's variance closer to the data's (its weight
    on the noisy difference is smaller). Order 3: the exact integral of the quadratic."""
    if order != 2:
        return dpmpp_update(x, lams, ds, lam_next, order, eta)
    h, h_prev = lam_next - lams[-1], lams[-1] - lams[-2]
    return dpmpp_update(x, lams, [ds[-1] + (ds[-1] - ds[-2]) * h / (2 * h_prev)], lam_next, 1, eta)


def dpmpp_multistep(denoiser, x, sigmas, *, order, eta=0.0, s_noise=1.0, generator=None, callback=None, cond=None,
                    lower_order_final=True):
    """The DPM-Solver++ multistep loop for 2M, 3M and their SDE forms (eta > 0, see sde.py)."""
    cond = cond or {}
    steps = len(sigmas) - 1
    lams, ds = [], []
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            return denoised
        lams, ds = (lams + [_lambda(sigma)])[-3:], (ds + [denoised])[-3:]
        k = _order(order, i, steps, lower_order_final)
        x = _dpmpp_step(x, lams, ds, _lambda(sigma_next), k, eta)
        if eta > 0:
            # the SDE step's noise: std sigma_next sqrt(1 - e^(-2 eta h))
            h = _lambda(sigma_next) - lams[-1]
            x = x + randn_like(x, generator) * (sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise)
    return x


@register("dpmpp_2m", calls_per_step=1)
def sample_dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, lower_order_final=True):
    """DPM-Solver++(2M) (Lu et al. 2022b, alg. 2): second order, one evaluation per step.

    Each step is the first-order exponential step with D extrapolated from the last two outputs to
    the middle of the step. The first step is first order, and so is the last ODE step below 15
    steps (lower_order_final, see _order); the last step, to sigma 0, is a plain denoise.
    Cost: `steps` denoiser calls.
    """
    return dpmpp_multistep(denoiser, x, sigmas, order=2, generator=generator, callback=callback, cond=cond,
                           lower_order_final=lower_order_final)


@register("dpmpp_3m", calls_per_step=1)
def sample_dpmpp_3m(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, lower_order_final=True):
    """DPM-Solver++(3M): third order from the last three denoiser outputs, one evaluation per step.

    Warm-up: orders 1 and 2 on the first two steps. lower_order_final: below 15 steps the last ODE
    step (to sigma_min) is first order; then a plain denoise to 0. Cost: `steps` denoiser calls.
    """
    return dpmpp_multistep(denoiser, x, sigmas, order=3, generator=generator, callback=callback, cond=cond,
                           lower_order_final=lower_order_final)


@register("dpmpp_2s", calls_per_step=2)
def sample_dpmpp_2s(denoiser, x, sigmas, *, generator=None, callback=None, cond=None):
    """DPM-Solver++(2S) (Lu et al. 2022b, alg. 1, r = 1/2): single-step second order.

    A first-order step to the midpoint in lambda (sigma_mid = sqrt(sigma sigma_next)), then the whole
    step with the denoiser's output there. No history, so nothing to warm up. The last step, to
    sigma 0, is a plain denoise. Cost: 2 * steps - 1 denoiser calls.
    """
    cond = cond or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            return denoised
        sigma_mid = math.sqrt(sigma * sigma_next)
        x_mid = dpmpp_update(x, [_lambda(sigma)], [denoised], _lambda(sigma_mid), 1)
        denoised_mid = denoise(denoiser, x_mid, sigma_mid, cond)
        x = dpmpp_update(x, [_lambda(sigma)], [denoised_mid], _lambda(sigma_next), 1)
    return x


# ---------------------------------------------------------------------------------------------
# UniPC


def _unipc_rhos(rks: list[float], h: float) -> np.ndarray:
    """UniPC's weights for the divided differences (Zhao et al. 2023, the order conditions of UniC/UniP):
    solve R rho = b, R[i, j] = rks[j]^i, b[i] = (i + 1)! phi_(i+2)(-h) / B(h) with B(h) = e^-h - 1 ("bh2")."""
    n = len(rks)
    if n == 1:
        return np.array([0.5])  # UniPC: a_1 = 1/2 satisfies the single order condition for any B(h) = O(h)
    hh = -h
    phi_k = math.expm1(hh) / hh - 1  # h phi_2(h), then the recurrence phi_(k+1) = (phi_k - 1/k!) / h
    b, factorial = [], 1
    for i in range(1, n + 1):
        b.append(phi_k * factorial / math.expm1(hh))
        factorial *= i + 1
        phi_k = phi_k / hh - 1 / factorial
    R = np.vander(np.array(rks), n, increasing=True).T
    return np.linalg.solve(R, np.array(b))


def unipc_update(x, lams, ds, lam_next, order, d_next=None):
    """UniP (d_next None) or UniC (d_next = D at the predicted point) from the newest history point to lam_next.

    Data-prediction UniPC with B(h) = e^-h - 1 (Zhao et al. 2023, alg. 2 and sec. 3): the first-order
    step plus B(h) times a weighted sum of the divided differences (D_k - D_0) / r_k. UniC uses the
    output at the new point as one more difference and gains an order; UniP of `order` p uses the
    last p outputs.
    """
    h = lam_next - lams[-1]
    rks = [(lams[-1 - k] - lams[-1]) / h for k in range(1, order)]
    d1s = [(ds[-1 - k] - ds[-1]) / r for k, r in zip(range(1, order), rks)]
    if d_next is not None:
        rks, d1s = rks + [1.0], d1s + [d_next - ds[-1]]
    x = math.exp(-h) * x - math.expm1(-h) * ds[-1]
    for rho, d1 in zip(_unipc_rhos(rks, h) if rks else [], d1s):
        x = x - math.expm1(-h) * float(rho) * d1
    return x


@register("unipc", calls_per_step=1)
def sample_unipc(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, order=2, lower_order_final=True):
    """UniPC (Zhao et al. 2023): UniP-`order` predictor with the UniC corrector, orders 1 to 3.

    After each step the corrector (UniC) reuses the evaluation the next step makes anyway at the
    predicted point to refine that point, so it costs nothing and raises the order to order + 1.
    It is skipped at the last sigma, where the plain denoise to 0 ignores x. lower_order_final: below
    15 steps the last ODE step's predictor is first order. Cost: `steps` denoiser calls.
    """
    cond = cond or {}
    if not 1 <= order <= 3:
        raise ValueError(f"unipc takes order 1, 2 or 3, got {order}")
    steps = len(sigmas) - 1
    lams, ds, x_prev, k = [], [], None, 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(denoiser, x, sigma, cond)
        if x_prev is not None and sigma_next > 0:
            x = unipc_update(x_prev, lams, ds, _lambda(sigma), k, d_next=denoised)  # UniC
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            return denoised
        lams, ds = (lams + [_lambda(sigma)])[-3:], (ds + [denoised])[-3:]
        k = _order(order, i, steps, lower_order_final)
        x_prev, x = x, unipc_update(x, lams, ds, _lambda(sigma_next), k)  # UniP
    return x


# ---------------------------------------------------------------------------------------------
# Adams-Bashforth on eps: DEIS and LMS

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(16)


def _lagrange_integrals(nodes: list[float], a: float, b: float, weight=None) -> list[float]:
    """int_a^b weight(u) l_j(u) du for each Lagrange basis polynomial l_j through `nodes`.

    Gauss-Legendre with 16 points: exact for the polynomials themselves (degree < 32) and, for the
    smooth weight e^u over a step, accurate to rounding.
    """
    u = (b - a) / 2 * _GAUSS_NODES + (a + b) / 2
    w = (b - a) / 2 * _GAUSS_WEIGHTS * (weight(u) if weight else 1.0)
    return [float(np.sum(w * np.prod([(u - m) / (n - m) for m in nodes if m != n], axis=0))) for n in nodes]


def _adams_bashforth(denoiser, x, sigmas, order, to_time, weight, lower_order_final, callback, cond):
    """x += int eps(sigma) dsigma over each step with eps = (x - D) / sigma extrapolated by the Lagrange
    polynomial (in the time u = to_time(sigma)) through the last `order` values; dsigma = weight(u) du."""
    cond = cond or {}
    steps = len(sigmas) - 1
    ts, eps = [], []
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(denoiser, x, sigma, cond)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            return denoised
        ts, eps = (ts + [to_time(sigma)])[-int(order):], (eps + [(x - denoised) / sigma])[-int(order):]
        k = _order(order, i, steps, lower_order_final)
        coeffs = _lagrange_integrals(ts[-k:], ts[-1], to_time(sigma_next), weight)
        x = x + sum(c * e for c, e in zip(coeffs, eps[-k:]))
    return x


@register("deis", calls_per_step=1)
def sample_deis(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, order=3, lower_order_final=True):
    """DEIS (Zhang & Chen 2023, tAB-DEIS) with time log(sigma), as diffusers' "logrho" variant.

    The exponential integrator for noise prediction: in the VE frame it integrates eps over sigma,
    with eps extrapolated as a polynomial in u = log(sigma) through its last `order` values (1 to 3;
    order 1 is DDIM) and the weights int e^u l_j(u) du computed by quadrature. The first steps use
    the order the history allows; lower_order_final: below 15 steps the last ODE step is first
    order. The last step, to sigma 0, is a plain denoise. Cost: `steps` denoiser calls.
    """
    return _adams_bashforth(denoiser, x, sigmas, order, math.log, np.exp, lower_order_final, callback, cond)


@register("lms", calls_per_step=1)
def sample_lms(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, order=4, lower_order_final=True):
    """Linear multistep (Adams-Bashforth) on dx/dsigma = eps, as in k-diffusion's LMS (order 4).

    eps is extrapolated as a polynomial in sigma itself through its last `order` values; the weights
    are the integrals of the Lagrange basis over the step. Good at many steps, weak at few (a
    polynomial in sigma over Karras's long high-sigma steps). lower_order_final: below 15 steps the
    last ODE step is first order. The last step, to sigma 0, is a plain denoise.
    Cost: `steps` denoiser calls.
    """
    return _adams_bashforth(denoiser, x, sigmas, order, float, None, lower_order_final, callback, cond)
