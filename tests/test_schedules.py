import math

import pytest
import torch

from diffusely.schedules import (DiscreteSchedule, EDMSchedule, add_noise, add_noise_vp, alpha_bar_to_sigma,
                                 cosine_alphas_cumprod, get_sigmas, karras_sigmas, linear_alphas_cumprod,
                                 log_snr_sigmas, sigma_to_alpha_bar, sigmoid_alphas_cumprod, uniform_t_sigmas,
                                 ve_to_vp, vp_to_ve)


def test_linear_schedule_matches_ddpm_values():
    ab = linear_alphas_cumprod()
    assert ab.dtype == torch.float64 and ab.shape == (1000,)
    assert ab[-1].item() == pytest.approx(4.0358e-05, rel=1e-4)
    s = DiscreteSchedule(ab)
    assert s.sigma_max == pytest.approx(157.4, abs=0.05)
    assert s.sigma_min == pytest.approx(0.0100005, rel=1e-6)
    # textbook: abar_t = prod_{i<=t} (1 - beta_i)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    assert ab[499].item() == pytest.approx(math.prod(1 - b for b in betas[:500]), rel=1e-12)


def test_cosine_schedule_follows_its_formula():
    ab = cosine_alphas_cumprod()
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in [0, 10, 500, 900]:
        # before any clipping, abar_t = f(t + 1) / f(0) (the table is 0-based: entry t is after t+1 betas)
        assert ab[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    betas = 1 - ab[1:] / ab[:-1]
    assert betas.max().item() == pytest.approx(0.999, abs=1e-9)  # clipped at the end
    assert (ab.diff() < 0).all()


def test_sigmoid_schedule_is_monotone_and_bounded():
    ab = sigmoid_alphas_cumprod()
    assert (ab.diff() < 0).all() and 0 < ab[-1] < ab[0] < 1


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_conversions_round_trip(name):
    s = DiscreteSchedule.named(name)
    ab = s.alphas_cumprod
    assert torch.allclose(sigma_to_alpha_bar(alpha_bar_to_sigma(ab)), ab, rtol=1e-14, atol=0)
    t = torch.tensor([0.0, 0.5, 17.25, 998.9, 999.0], dtype=torch.float64)
    assert torch.allclose(s.sigma_to_t(s.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    # integer timesteps map to their own table entries exactly
    assert torch.equal(s.sigma_to_t(s.sigmas[[0, 7, 999]]), torch.tensor([0.0, 7.0, 999.0], dtype=torch.float64))
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    sig = torch.tensor([0.1, 1.0, 100.0], dtype=torch.float64)
    assert torch.allclose(ve_to_vp(vp_to_ve(x0, sig), sig), x0, rtol=1e-14, atol=1e-14)


def test_sigma_outside_discrete_range_raises():
    s = DiscreteSchedule.named("linear")
    with pytest.raises(ValueError, match=r"range \[0\.01.*157\.4"):
        s.sigma_to_t(torch.tensor([200.0]))
    with pytest.raises(ValueError, match="unknown schedule 'cosin'.*linear, cosine, sigmoid"):
        DiscreteSchedule.named("cosin")


def test_karras_spacing_matches_eq5():
    sig = karras_sigmas(18, 0.002, 80)
    assert sig.shape == (19,) and sig[-1] == 0
    assert sig[0].item() == pytest.approx(80) and sig[-2].item() == pytest.approx(0.002)
    i = 5
    expect = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert sig[i].item() == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("fn", [karras_sigmas, log_snr_sigmas, uniform_t_sigmas])
@pytest.mark.parametrize("steps", [1, 2, 10])
def test_spacings_decrease_and_end_in_zero(fn, steps):
    sig = fn(steps, 0.01, 50.0)
    assert sig.shape == (steps + 1,) and sig[-1] == 0
    assert (sig.diff() < 0).all()
    assert sig[0].item() == pytest.approx(50.0)
    if steps > 1:
        assert sig[-2].item() == pytest.approx(0.01)


def test_log_snr_spacing_is_uniform_in_log_sigma():
    sig = log_snr_sigmas(6, 0.01, 100.0)[:-1]
    assert torch.allclose(sig.log().diff(), torch.full((5,), math.log(1e-4) / 5, dtype=torch.float64))


def test_timestep_spacings_match_diffusers():
    s = DiscreteSchedule.named("linear")
    assert s.timesteps(10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert s.timesteps(10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert s.timesteps(10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    for steps in range(1, 1001):  # every step count: distinct, decreasing, inside the table
        for mode in ("leading", "trailing", "linspace"):
            ts = s.timesteps(steps, mode)
            assert len(ts) == steps and ts.min() >= 0 and ts.max() <= 999 and (ts.diff() < 0).all(), (steps, mode)
    assert s.timesteps(61, "trailing")[-1] == 15
    sig = s.timestep_sigmas(10, "trailing")
    assert sig.shape == (11,) and sig[-1] == 0 and sig[0].item() == pytest.approx(s.sigma_max)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0, sigma_min=0.1, sigma_max=1), "steps must be an integer >= 1"),
    (dict(steps=5, sigma_min=2.0, sigma_max=1), "sigma_min must be < sigma_max"),
    (dict(steps=5, sigma_min=0.0, sigma_max=1), "sigma_min must be > 0"),
    (dict(steps=5, sigma_min=0.1, sigma_max=1, spacing="karas"), "unknown spacing 'karas'.*karras, log-snr, uniform-t"),
])
def test_bad_spacing_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_sigmas(**kwargs)


def test_forward_process_exact():
    x0 = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    n = torch.randn_like(x0)
    sigma = torch.tensor([0.0, 0.5, 2.0, 80.0], dtype=torch.float64)
    x = add_noise(x0, sigma, n)
    for i in range(4):
        assert torch.equal(x[i], x0[i] + sigma[i] * n[i])
    # the VP form at integer t is the VE form rescaled by sqrt(abar_t) (to float64 precision)
    s = DiscreteSchedule.named("cosine")
    t = torch.tensor([0, 10, 500, 999])
    x_vp = add_noise_vp(x0, t, s, n)
    ab = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.equal(x_vp, ab.sqrt() * x0 + (1 - ab).sqrt() * n)
    assert torch.allclose(vp_to_ve(x_vp, s.sigmas[t]), add_noise(x0, s.sigmas[t], n), rtol=1e-12, atol=1e-12)


def test_forward_process_generator_reproducible():
    x0 = torch.zeros(2, 3, 4, 4)
    a = add_noise(x0, 1.0, generator=torch.Generator().manual_seed(3))
    b = add_noise(x0, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # per-sample generators: a sample depends on its own seed only
    g = lambda s: torch.Generator().manual_seed(s)
    c = add_noise(x0, 1.0, generator=[g(1), g(2)])
    d = add_noise(x0[:1], 1.0, generator=[g(2)])
    assert torch.equal(c[1], d[0])


def test_edm_schedule_defaults():
    e = EDMSchedule()
    assert (e.sigma_min, e.sigma_max, e.sigma_data) == (0.002, 80.0, 0.5)
