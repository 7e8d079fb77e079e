"""Every sampler against the exact answer for Gaussian data N(mu, s^2 I).

For that data the ideal denoiser is E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu), and the
probability-flow ODE has the closed-form solution x(sigma) - mu ∝ sqrt(s^2 + sigma^2).
"""

import inspect
import math
import re
from pathlib import Path

import pytest
import torch
from scipy.integrate import solve_ivp

import diffusely
from diffusely import SAMPLERS, nfe, sample
from diffusely.samplers import OPTION_RANGES, ancestral_step, register, sampler_options, steps_for_nfe
from diffusely.samplers.adaptive import sample_adaptive
from diffusely.samplers.ancestral import sample_ddpm, sample_euler_ancestral
from diffusely.samplers.registry import PASSED_THROUGH
from diffusely.samplers.multistep import dpmpp_update
from helpers import time_limit

MU, S = 0.3, 0.7
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# (method, options) -> order of convergence: UniPC-p with its corrector is of order p + 1
DETERMINISTIC = {
    ("euler", ()): 1, ("heun", ()): 2, ("ddim", ()): 1, ("dpmpp_2m", ()): 2, ("dpmpp_3m", ()): 3, ("dpmpp_2s", ()): 2,
    ("unipc", (("order", 1),)): 2, ("unipc", (("order", 2),)): 3, ("unipc", (("order", 3),)): 4,
    ("deis", (("order", 2),)): 2, ("deis", (("order", 3),)): 3, ("lms", ()): 4,
}
FIXED_COST = [m for m in SAMPLERS if nfe(m, 1) is not None]  # all but adaptive
V0_RUN = Path(__file__).parent / "fixtures" / "v0" / "uncond"  # a tiny trained run


class Gaussian:
    """The exact denoiser for N(MU, S^2 I) data; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma):
        self.calls += 1
        assert sigma.shape == (x.shape[0],)
        s2 = sigma.view(-1, *[1] * (x.ndim - 1)) ** 2
        return MU + S**2 / (S**2 + s2) * (x - MU)


def exact_solution(noise):
    """The ODE solved exactly from sigma_max to sigma_min, then the final plain denoise every sampler ends with."""
    x_min = MU + (noise * SIGMA_MAX - MU) * math.sqrt(S**2 + SIGMA_MIN**2) / math.sqrt(S**2 + SIGMA_MAX**2)
    return MU + S**2 / (S**2 + SIGMA_MIN**2) * (x_min - MU)


@pytest.mark.parametrize("method, options, order", [(m, dict(o), order) for (m, o), order in DETERMINISTIC.items()],
                         ids=[m + "".join(f"-{k}{v}" for k, v in o) for m, o in DETERMINISTIC])
def test_deterministic_samplers_converge_at_their_order(method, options, order):
    # Karras spacing over [0.002, 80]: the final denoise is exact for Gaussian data, so the error is
    # the ODE solve's down to sigma_min; from 32 steps on, each method is in its asymptotic regime
    noise = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = exact_solution(noise)
    errors = []
    for steps in (32, 64, 128, 256):
        out = sample(Gaussian(), noise, method=method, steps=steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **options)
        errors.append((out - ref).abs().max().item())
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    # halving the step size cuts the error by 2^order
    assert all(abs(r - order) < 0.25 for r in rates[1:]), (errors, rates)
    assert errors[-1] < (0.05 if order == 1 else 0.001)


def test_dpmpp_update_integrates_a_quadratic_exactly():
    """The 3M step is the exact integral of the quadratic through the last three denoiser outputs."""
    poly = lambda lam: 1 + 0.3 * lam - 0.2 * lam**2
    lams, lam_next = [0.0, 0.4, 1.0], 1.7
    ds = [torch.tensor(poly(lam), dtype=torch.float64) for lam in lams]
    got = dpmpp_update(torch.tensor(0.0, dtype=torch.float64), lams, ds, lam_next, 3)
    # int_1^1.7 e^(l - 1.7) poly(l) dl in closed form: e^(l - 1.7) (poly(l) - poly'(l) + poly''(l)) between the ends
    antiderivative = lambda lam: math.exp(lam - lam_next) * (poly(lam) - (0.3 - 0.4 * lam) - 0.4)
    assert got.item() == pytest.approx(antiderivative(lam_next) - antiderivative(lams[-1]), rel=1e-12)


@pytest.mark.parametrize("tol", [1e-4, 1e-5, 1e-6])
def test_adaptive_solver_meets_its_tolerance_and_reports_its_cost(tol):
    noise = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D, info = Gaussian(), {}
    out = sample(D, noise, method="adaptive", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rtol=tol, atol=tol, info=info)
    # local error control: the global error lands within a small multiple of the tolerance
    assert (out - exact_solution(noise)).abs().max().item() < 5 * tol
    assert info["nfe"] == D.calls == 1 + 3 * info["accepted"] + 2 * info["rejected"]
    assert nfe("adaptive", 10) is None  # variable


def test_adaptive_solver_spends_more_for_tighter_tolerances():
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spent = []
    for tol in (1e-2, 1e-4, 1e-6):
        info = {}
        sample(Gaussian(), noise, method="adaptive", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rtol=tol, atol=tol, info=info)
        spent.append(info["nfe"])
    assert spent == sorted(spent) and spent[0] < spent[-1] / 4


def denoise_gain(sigma):
    """The exact denoiser's slope s^2 / (s^2 + sigma^2): D(x) - MU = gain (x - MU)."""
    return S**2 / (S**2 + sigma**2)


def sde_moments(beta, noise=1.0):
    """(c, v) with x0 - MU = c (x_T - MU) + a Gaussian of variance v, for the reverse-time process that pulls
    x towards D at rate 1 + beta in lambda = -log(sigma) and adds noise of variance 2 beta noise^2 sigma^2 per
    unit lambda, then denoises at SIGMA_MIN. beta = 1: the reverse SDE, whose x0 given x_T is the exact
    posterior; beta = 0: the probability-flow ODE. It is the limit of many small steps of DPM-Solver++ SDE
    with eta = beta and s_noise = noise, and of ancestral steps with eta^2 = beta (sigma_up^2 = 2 eta^2
    sigma^2 h, and the ODE carried down to sigma_down, (1 + eta^2) h below sigma)."""
    def rates(lam, y):
        sigma = math.exp(-lam)
        pull = (1 + beta) * (1 - denoise_gain(sigma))
        return [-pull * y[0], -2 * pull * y[1] + 2 * beta * noise**2 * sigma**2]
    span = (-math.log(SIGMA_MAX), -math.log(SIGMA_MIN))
    c, v = solve_ivp(rates, span, [1.0, 0.0], method="DOP853", rtol=1e-10, atol=1e-12).y[:, -1]
    return c * denoise_gain(SIGMA_MIN), v * denoise_gain(SIGMA_MIN) ** 2


def churn_moments(steps, S_churn, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0):
    """(c, v) as sde_moments for EDM's alg. 2 on the Karras sigmas: noise raises each sigma to
    sigma (1 + gamma), gamma = min(S_churn / steps, sqrt(2) - 1) inside [S_tmin, S_tmax], then the ODE is
    solved exactly to the next sigma ((x - MU) scales by sqrt(s^2 + sigma^2)); the last step is a denoise."""
    sigmas = diffusely.get_sigmas(steps, SIGMA_MIN, SIGMA_MAX).tolist()
    c, v = 1.0, 0.0
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        gamma = min(S_churn / steps, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        v += S_noise**2 * (sigma_hat**2 - sigma**2)
        f = math.sqrt((S**2 + sigma_next**2) / (S**2 + sigma_hat**2)) if sigma_next else denoise_gain(sigma_hat)
        c, v = c * f, v * f**2
    return c, v


def test_the_reverse_sde_gives_the_exact_posterior():
    # x_min given x_T (x_sigma = x0 + sigma n): mean MU + (s^2 + SIGMA_MIN^2) / (s^2 + SIGMA_MAX^2) (x_T - MU), variance
    # (s^2 + SIGMA_MIN^2) - (s^2 + SIGMA_MIN^2)^2 / (s^2 + SIGMA_MAX^2); the denoise scales both by its gain
    c, v = sde_moments(1.0)
    assert c == pytest.approx(denoise_gain(SIGMA_MAX), rel=1e-7)
    assert v == pytest.approx(S**4 / (S**2 + SIGMA_MIN**2) - S**4 / (S**2 + SIGMA_MAX**2), rel=1e-7)
    # the ODE: x - MU scales by sqrt(s^2 + sigma^2), with no spread
    c, v = sde_moments(0.0)
    assert c == pytest.approx(S**2 / math.hypot(S, SIGMA_MIN) / math.hypot(S, SIGMA_MAX), rel=1e-7) and v == 0


STEPS = 1000
CONDITIONAL = [  # (method, options, (c, v)); the options the sampler's noise depends on, each at a second value
    ("ddpm", {}, sde_moments(1.0)),
    ("euler_ancestral", {}, sde_moments(1.0)),
    ("euler_ancestral", {"eta": 0.5}, sde_moments(0.25)),
    ("ddim", {"eta": 1.0}, sde_moments(1.0)),
    ("ddim", {}, sde_moments(0.0)),
    ("dpmpp_2m_sde", {}, sde_moments(1.0)),
    ("dpmpp_2m_sde", {"eta": 0.5}, sde_moments(0.5)),
    ("dpmpp_2m_sde", {"s_noise": 0.5}, sde_moments(1.0, noise=0.5)),
    ("dpmpp_2m_sde", {"eta": 0.0}, sde_moments(0.0)),
    ("dpmpp_3m_sde", {}, sde_moments(1.0)),
    ("dpmpp_3m_sde", {"eta": 0.3, "s_noise": 0.7}, sde_moments(0.3, noise=0.7)),
    ("euler", {"S_churn": 40.0}, churn_moments(STEPS, 40.0)),
    ("heun", {"S_churn": 40.0}, churn_moments(STEPS, 40.0)),
    ("heun", {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 1.0}, churn_moments(STEPS, 40.0, 0.05, 1.0)),
    ("heun", {"S_churn": 40.0, "S_noise": 0.5}, churn_moments(STEPS, 40.0, S_noise=0.5)),
    ("heun", {}, churn_moments(STEPS, 0.0)),
]


@pytest.mark.parametrize("method, options, moments", CONDITIONAL,
                         ids=[m + "".join(f"-{k}{v}" for k, v in o.items()) for m, o, _ in CONDITIONAL])
def test_samples_given_their_starting_noise_have_the_exact_spread(method, options, moments):
    """8 starting points x_T, 2,500 samples from each: their mean and spread given x_T against the exact values.

    The probability-flow ODE already maps Gaussian noise to the data's distribution, so only the spread given
    the starting noise tells a sampler that injects noise from one that does not (the ODE's is 0)."""
    c, v = moments
    groups, per_group = 8, 2500
    z = torch.randn(groups, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample(Gaussian(), z.repeat_interleave(per_group, 0), method=method, steps=STEPS, sigma_min=SIGMA_MIN,
                 sigma_max=SIGMA_MAX, generator=torch.Generator().manual_seed(2), **options).view(groups, per_group)
    # the variance to 4% (sampling error 1%, Euler's discretisation up to 3%); the means to 5 standard errors
    # (plus 0.005: Euler's error on the ODE at 1000 steps is 0.003)
    assert out.var(1).mean().item() == pytest.approx(v, rel=0.04, abs=1e-12)
    want = MU + c * (SIGMA_MAX * z.view(-1) - MU)
    assert (out.mean(1) - want).abs().max().item() < 5 * math.sqrt(v / per_group) + 0.005


def test_ddpm_on_its_own_timesteps_is_exact_in_distribution():
    sched = diffusely.DiscreteSchedule.named("linear")
    noise = torch.randn(40_000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample(Gaussian(), noise, method="ddpm", steps=1000, sigma_min=sched.sigma_min, sigma_max=sched.sigma_max,
                 spacing=sched.spacing("trailing"), generator=torch.Generator().manual_seed(4))
    assert out.std().item() == pytest.approx(S, rel=0.01)
    assert abs(out.mean().item() - MU) < 4 * S / math.sqrt(40_000)


def test_ddpm_posterior_equals_euler_ancestral_eta_1():
    x = torch.randn(8, 2, dtype=torch.float64) * 80
    sigmas = diffusely.get_sigmas(20, SIGMA_MIN, SIGMA_MAX)
    a = sample_ddpm(Gaussian(), x, sigmas, generator=torch.Generator().manual_seed(0))
    b = sample_euler_ancestral(Gaussian(), x, sigmas, generator=torch.Generator().manual_seed(0), eta=1.0)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_ancestral_step_variances():
    down, up = ancestral_step(2.0, 1.0, eta=1.0)
    assert up**2 == pytest.approx(1.0 * (4 - 1) / 4)  # DDPM posterior: sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2
    assert down**2 + up**2 == pytest.approx(1.0)
    assert ancestral_step(2.0, 1.0, eta=0.0) == (1.0, 0.0)
    assert ancestral_step(2.0, 0.0) == (0.0, 0.0)


def test_ddim_eta0_equals_euler():
    noise = torch.randn(4, 3, dtype=torch.float64)
    kw = dict(steps=12, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    a = sample(Gaussian(), noise, method="ddim", **kw)
    b = sample(Gaussian(), noise, method="euler", **kw)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", FIXED_COST)
@pytest.mark.parametrize("steps", [1, 2, 7, 16])
def test_nfe_matches_docstring(method, steps):
    D = Gaussian()
    sample(D, torch.randn(2, 3), method=method, steps=steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    assert D.calls == nfe(method, steps)
    assert "Cost:" in SAMPLERS[method].__doc__


@pytest.mark.parametrize("method", FIXED_COST)
def test_a_budget_is_never_exceeded(method):
    for budget in range(1, 13):
        D = Gaussian()
        sample(D, torch.randn(2, 3), method=method, nfe=budget, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
        assert D.calls <= budget
        assert D.calls > budget - (2 if nfe(method, 2) == 3 else 1)  # the most steps that fit: 2-call steps may leave one


def test_steps_for_a_budget():
    assert steps_for_nfe("heun", 10) == 5 and nfe("heun", 5) == 9
    assert steps_for_nfe("dpmpp_2s", 10) == 5 and steps_for_nfe("unipc", 10) == 10
    with pytest.raises(ValueError, match="'heun' needs a budget of at least 1 evaluations, got nfe=0"):
        steps_for_nfe("heun", 0)
    with pytest.raises(ValueError, match="'adaptive' spends a variable number of evaluations"):
        steps_for_nfe("adaptive", 10)


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_same_seed_same_samples(method):
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    opts = {"S_churn": 10.0} if method in ("euler", "heun") else {}
    budget = {} if method == "adaptive" else {"steps": 6}
    run = lambda: sample(Gaussian(), noise, method=method, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                         generator=torch.Generator().manual_seed(11), **budget, **opts)
    assert torch.equal(run(), run())


@pytest.mark.parametrize("method, options", [(m, {}) for m in FIXED_COST] + [
    ("ddim", {"eta": 0.5}), ("euler_ancestral", {"eta": 0.0}), ("heun", {"S_churn": 10.0}),
    ("euler", {"S_churn": 10.0}), ("dpmpp_2m_sde", {"eta": 0.0})])
def test_added_noise_says_which_samplers_draw_fresh_noise(method, options):
    """samplers.defaults.added_noise, which optimize-schedule refuses on, against what each sampler does: the same
    starting noise with two generators ends in the same samples exactly where it says None."""
    from diffusely.samplers.defaults import added_noise

    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    run = lambda seed: sample(Gaussian(), noise, method=method, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, steps=6,
                              generator=torch.Generator().manual_seed(seed), **options)
    assert (added_noise(method, options) is None) == torch.equal(run(1), run(2))


@pytest.mark.parametrize("method", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_samplers_use_per_sample_generators(method):
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(method=method, steps=5, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    assert torch.equal(sample(Gaussian(), noise, generator=gens([5, 6, 7]), **kw)[2],
                       sample(Gaussian(), noise[2:], generator=gens([7]), **kw)[0])


def test_per_sample_generators_make_samples_batch_independent():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(method="euler_ancestral", steps=5, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    batch = sample(Gaussian(), noise, generator=gens([5, 6, 7]), **kw)
    alone = sample(Gaussian(), noise[2:], generator=gens([7]), **kw)
    assert torch.equal(batch[2], alone[0])


def test_callback_sees_every_step():
    seen = []
    sample(Gaussian(), torch.randn(2, 3), method="heun", steps=4, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
           callback=seen.append)
    assert [s["i"] for s in seen] == [0, 1, 2, 3]
    assert seen[0]["sigma"] == pytest.approx(SIGMA_MAX) and seen[0]["denoised"].shape == (2, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="dpm++"), "unknown sampler 'dpm\\+\\+'; choose one of: euler, heun, euler_ancestral, ddim, ddpm, "
                           "dpmpp_2m, dpmpp_3m, dpmpp_2s, unipc, deis, lms, dpmpp_2m_sde, dpmpp_3m_sde, adaptive"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(nfe=10), "give exactly one of steps and nfe"),
    (dict(steps=None), "give exactly one of steps and nfe"),
    (dict(method="adaptive"), "'adaptive' chooses its own steps: give it rtol/atol"),
    (dict(method="adaptive", steps=None, spacing="karras"), "'adaptive' chooses its own steps and takes no spacing"),
    (dict(method="unipc", order=4), "unipc takes order 1, 2 or 3"),
    (dict(sigma_min=80.0), "sigma_min must be < sigma_max"),
    (dict(sigma_min=-1.0), "sigma_min must be > 0"),
    (dict(eta=0.5), "sampler 'heun' takes no option eta; its options: S_churn, S_noise, S_tmax, S_tmin, cond"),
])
def test_bad_arguments(kwargs, match):
    args = dict(method="heun", steps=5, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX) | kwargs
    with pytest.raises(ValueError, match=match):
        sample(Gaussian(), torch.randn(2, 3), **args)


def test_conditioning_reaches_the_denoiser():
    def D(x, sigma, class_labels):
        return x * 0 + class_labels.view(-1, 1).to(x.dtype)
    out = sample(D, torch.randn(2, 3), method="euler", steps=3, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                 cond={"class_labels": torch.tensor([1, 2])})
    assert torch.allclose(out, torch.tensor([[1.0] * 3, [2.0] * 3]))


# ---------------------------------------------------------------------------------------------
# options: each one changes what a sampler makes, and a value outside its range is refused

# option -> (options it needs to act, its value in the test given the sampler's default)
OPTION_CHANGES = {
    "S_churn": ({}, lambda default: 10.0),
    "S_tmin": ({"S_churn": 10.0}, lambda default: 1.0),
    "S_tmax": ({"S_churn": 10.0}, lambda default: 1.0),
    "S_noise": ({"S_churn": 10.0}, lambda default: 0.5),
    "eta": ({}, lambda default: 0.5),  # ddim's default is 0, the others' 1
    "s_noise": ({}, lambda default: 0.5),
    "order": ({}, lambda default: default - 1),
    "lower_order_final": ({}, lambda default: not default),
    "rtol": ({}, lambda default: default * 10),
    "atol": ({}, lambda default: default * 10),
    "h_init": ({}, lambda default: default / 10),
}
# options that do not change the samples by design, each with its own test: conditioning
# (test_conditioning_reaches_the_denoiser), the adaptive solver's report (test_adaptive_solver_meets_its_tolerance_...)
# and its bound (test_the_adaptive_solver_stops_at_max_nfe)
NOT_CHANGING = {"cond", "info", "max_nfe"}
OPTION_CASES = [(m, o) for m in SAMPLERS for o in sorted(sampler_options(m) - NOT_CHANGING)]


@pytest.mark.parametrize("method, option", OPTION_CASES, ids=[f"{m}-{o}" for m, o in OPTION_CASES])
def test_every_sampler_option_changes_the_samples(method, option):
    needs, value = OPTION_CHANGES[option]  # a KeyError: a new option needs its line in OPTION_CHANGES
    value = value(inspect.signature(SAMPLERS[method]).parameters[option].default)
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # 8 steps: below 15, where lower_order_final acts
    run = lambda **options: sample(Gaussian(), noise, method=method, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                                   generator=torch.Generator().manual_seed(1), **options,
                                   **({} if method == "adaptive" else {"steps": 8}))
    assert (run(**needs, **{option: value}) - run(**needs)).abs().max().item() > 1e-6


def test_every_sampler_option_has_a_range():
    options = {o for m in SAMPLERS for o in sampler_options(m)}
    assert options - set(OPTION_RANGES) == PASSED_THROUGH
    # and every default lies in its range
    for method in SAMPLERS:
        for name, p in inspect.signature(SAMPLERS[method]).parameters.items():
            if name in OPTION_RANGES:
                assert OPTION_RANGES[name][1](p.default), (method, name, p.default)


@pytest.mark.parametrize("method, option, value", [
    ("euler", "S_churn", math.nan), ("heun", "S_churn", -1.0), ("heun", "S_noise", math.inf), ("euler", "S_tmin", -0.1),
    ("heun", "S_tmax", math.nan), ("ddim", "eta", -1.0), ("euler_ancestral", "eta", math.nan),
    ("dpmpp_2m_sde", "eta", math.inf), ("dpmpp_3m_sde", "s_noise", math.nan), ("deis", "order", 0),
    ("lms", "order", 2.5), ("dpmpp_2m", "lower_order_final", 0.5), ("adaptive", "rtol", 0.0),
    ("adaptive", "rtol", math.nan), ("adaptive", "atol", -1e-3), ("adaptive", "atol", math.inf),
    ("adaptive", "h_init", 0.0), ("adaptive", "max_nfe", 3), ("adaptive", "max_nfe", 100.5),
])
def test_an_option_outside_its_range_is_refused(method, option, value):
    budget = {} if method == "adaptive" else {"steps": 4}
    D = Gaussian()
    with pytest.raises(ValueError, match=f"sampler option {option} must be {re.escape(OPTION_RANGES[option][0])}, "
                                         f"got {re.escape(repr(value))}"):
        sample(D, torch.randn(2, 3), method=method, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **budget, **{option: value})
    assert D.calls == 0  # refused before any work


def test_options_at_the_edges_of_their_ranges_are_taken():
    kw = dict(steps=4, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    noise = torch.randn(2, 3)
    sample(Gaussian(), noise, method="heun", S_churn=0.0, S_tmax=math.inf, S_noise=0.0, **kw)
    sample(Gaussian(), noise, method="lms", order=2.0, lower_order_final=0.0, **kw)  # as the CLI's -o gives them
    sample(Gaussian(), noise, method="dpmpp_2m_sde", eta=0.0, s_noise=0.0, **kw)
    sample(Gaussian(), noise.double(), method="adaptive", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rtol=1e-10,
           atol=1e-2)


def test_zero_nan_and_impossible_tolerances_are_refused_at_once():
    # 1e-300 (both) once ran ~48 s on a tiny model, to max_nfe, before its error
    for tol in (dict(rtol=0.0, atol=0.0), dict(rtol=math.nan), dict(atol=0.0), dict(rtol=1e-300, atol=1e-300),
                dict(rtol=1e-300), dict(atol=9e-11)):
        with time_limit(1.0), pytest.raises(ValueError, match="sampler option [ra]tol must be a finite number >= 1e-10"):
            sample(Gaussian(), torch.randn(2, 3), method="adaptive", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **tol)


@pytest.mark.parametrize("tol", [0.0, math.nan, 1e-300])
def test_the_adaptive_solver_stops_at_max_nfe(tol):
    # called directly, past sample()'s checks: a tolerance no step can meet ends at the bound, not in a hang
    D, sigmas = Gaussian(), torch.tensor([SIGMA_MAX, SIGMA_MIN, 0.0], dtype=torch.float64)
    with time_limit(1.0), pytest.raises(ValueError, match=r"reached max_nfe=200 evaluations at sigma [\d.]+, before "
                                                          r"sigma 0.002: loosen rtol"):
        sample_adaptive(D, torch.randn(2, 3, dtype=torch.float64) * SIGMA_MAX, sigmas, rtol=tol, atol=tol, max_nfe=200)
    assert 190 < D.calls <= 200
    # a tolerance that is met spends what it needs below the bound, and is refused with a bound below that
    info, noise = {}, torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    kw = dict(method="adaptive", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    sample(Gaussian(), noise, **kw, info=info, max_nfe=100)
    with pytest.raises(ValueError, match=f"reached max_nfe={info['nfe'] - 1} evaluations"):
        sample(Gaussian(), noise, **kw, max_nfe=info["nfe"] - 1)
    with pytest.raises(ValueError, match=f"reached max_nfe={info['nfe'] - 1} evaluations"):  # as -o gives it: a float
        sample(Gaussian(), noise, **kw, max_nfe=float(info["nfe"] - 1))


def test_the_cli_refuses_a_zero_tolerance_within_a_second(tmp_path):
    from click.testing import CliRunner

    from diffusely.cli import main

    args = ["sample", str(V0_RUN), "-n", "1", "--sampler", "adaptive", "-o", "rtol=0", "-o", "atol=0",
            "--out", str(tmp_path / "out"), "--quiet"]
    with time_limit(1.0):
        r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "sampler option rtol must be a finite number >= 1e-10, got 0.0" in r.output, r.output


@pytest.mark.parametrize("sigmas, match", [
    ([80.0, 10.0, math.nan, 0.0], "sigmas must be finite and strictly decreasing, ending in 0"),
    ([math.inf, 10.0, 1.0, 0.0], "sigmas must be finite and strictly decreasing, ending in 0"),
    ([80.0, 1.0, 10.0, 0.0], "sigmas must be finite and strictly decreasing, ending in 0"),
    ([80.0, 10.0, 1.0, 0.5], "sigmas must be finite and strictly decreasing, ending in 0"),
    ([80.0, 10.0, 1e-300, 0.0], r"sigmas must lie in \[sigma_min, sigma_max\] = \[0.002, 80\] before the final 0, "
                                r"got \[80.0, 10.0, 0.0, 0.0\]"),
    ([90.0, 10.0, 1.0, 0.0], r"sigmas must lie in \[sigma_min, sigma_max\]"),
    ([80.0, 1.0, 0.0], r"a sigma sequence for 3 steps holds 4 sigmas \(the last 0\), got \[80.0, 1.0, 0.0\]"),
])
def test_explicit_sigmas_are_checked(sigmas, match):
    D = Gaussian()
    with pytest.raises(ValueError, match=match):
        sample(D, torch.randn(2, 3), method="euler", steps=3, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
               spacing=lambda *_: torch.tensor(sigmas, dtype=torch.float64))
    assert D.calls == 0


def test_a_sampler_is_added_by_one_registration():
    @register("test_denoise_once", calls_per_step=1)
    def sample_denoise_once(denoiser, x, sigmas, *, generator=None, callback=None, cond=None, S_noise=1.0):
        """Jump to sigma 0 in one denoise, whatever the steps. Cost: `steps` denoiser calls (it lies)."""
        return denoiser(x, x.new_full((x.shape[0],), float(sigmas[0])), **(cond or {}))

    try:
        assert SAMPLERS["test_denoise_once"] is sample_denoise_once and nfe("test_denoise_once", 5) == 5
        assert steps_for_nfe("test_denoise_once", 7) == 7
        out = sample(Gaussian(), torch.zeros(2, 3), method="test_denoise_once", steps=2, sigma_min=SIGMA_MIN,
                     sigma_max=SIGMA_MAX)
        assert torch.allclose(out, torch.full((2, 3), MU * (1 - S**2 / (S**2 + SIGMA_MAX**2))))
        with pytest.raises(ValueError, match="sampler option S_noise must be a finite number >= 0"):
            sample(Gaussian(), torch.zeros(2, 3), method="test_denoise_once", steps=2, sigma_min=SIGMA_MIN,
                   sigma_max=SIGMA_MAX, S_noise=-1.0)
        with pytest.raises(ValueError, match="a sampler named 'euler' is already registered"):
            register("euler", calls_per_step=1)(sample_denoise_once)
    finally:
        del SAMPLERS["test_denoise_once"]


def test_consistency_sampling_stopped_short_of_zero_ends_at_that_noise_level():
    """RePaint steps a sampler one interval at a time: asked for [sigma, sigma_next > 0] the consistency sampler must
    return x at sigma_next, its estimate noised to that level, not the clean estimate."""
    from diffusely.samplers.consistency import sample_consistency

    x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    out = sample_consistency(lambda x, sigma, **_: torch.zeros_like(x), x, torch.tensor([80.0, 2.0]),
                             generator=torch.Generator().manual_seed(1))
    assert out.std().item() == pytest.approx(2.0, rel=0.03)
    assert torch.equal(sample_consistency(lambda x, sigma, **_: torch.zeros_like(x), x, torch.tensor([80.0, 0.0])),
                       torch.zeros_like(x))
