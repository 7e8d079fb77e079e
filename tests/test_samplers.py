"""Every sampler against the exact answer for Gaussian data N(mu, s^2 I).

For that data the ideal denoiser is E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu), and the
probability-flow ODE has the closed-form solution x(sigma) - mu ∝ sqrt(s^2 + sigma^2).
"""

import math

import pytest
import torch

import diffusely
from diffusely import SAMPLERS, nfe, sample
from diffusely.samplers import ancestral_step, steps_for_nfe
from diffusely.samplers.ancestral import sample_ddpm, sample_euler_ancestral
from diffusely.samplers.multistep import dpmpp_update

MU, S = 0.3, 0.7
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# (method, options) -> order of convergence: UniPC-p with its corrector is of order p + 1
DETERMINISTIC = {
    ("euler", ()): 1, ("heun", ()): 2, ("ddim", ()): 1, ("dpmpp_2m", ()): 2, ("dpmpp_3m", ()): 3, ("dpmpp_2s", ()): 2,
    ("unipc", (("order", 1),)): 2, ("unipc", (("order", 2),)): 3, ("unipc", (("order", 3),)): 4,
    ("deis", (("order", 2),)): 2, ("deis", (("order", 3),)): 3, ("lms", ()): 4,
}
STOCHASTIC = {"ddpm": {}, "euler_ancestral": {}, "ddim": {"eta": 1.0}, "heun": {"S_churn": 40.0}, "euler": {"S_churn": 40.0},
              "dpmpp_2m_sde": {}, "dpmpp_3m_sde": {}}
FIXED_COST = [m for m in SAMPLERS if nfe(m, 1) is not None]  # all but adaptive


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


@pytest.mark.parametrize("method, options", STOCHASTIC.items())
def test_stochastic_samplers_reproduce_the_distribution(method, options):
    n = 20_000
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample(Gaussian(), noise, method=method, steps=1000, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                 generator=torch.Generator().manual_seed(2), **options)
    # the mean within 4 standard errors; the std within 2% (sampling error ~0.35% plus discretisation)
    assert abs(out.mean().item() - MU) < 4 * S / math.sqrt(n)
    assert out.std().item() == pytest.approx(S, rel=0.02)


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
