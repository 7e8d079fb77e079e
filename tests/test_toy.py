"""The Gaussian-mixture toy against independent exact answers: Tweedie's formula and the one-Gaussian ODE."""

import math

import pytest
import torch

from diffusely.toy import GaussianMixture


def log_density(mixture, x, sigma):
    """log p_sigma(x) of the noisy mixture, written out independently of the denoiser."""
    var = mixture.stds**2 + sigma**2
    log_n = -0.5 * (((x[:, None] - mixture.means) ** 2 / var) + (2 * math.pi * var).log()).sum(-1)
    return torch.logsumexp(mixture.weights.log() + log_n, -1)


@pytest.mark.parametrize("mixture", [GaussianMixture.ring(), GaussianMixture.anisotropic(dim=8, components=3)],
                         ids=["ring", "anisotropic"])
@pytest.mark.parametrize("sigma", [0.05, 0.7, 20.0])
def test_denoiser_is_tweedies_posterior_mean(mixture, sigma):
    # Tweedie: E[x0 | x] = x + sigma^2 grad log p_sigma(x)
    x = (mixture.sample(16, torch.Generator().manual_seed(0)) + sigma * torch.randn(16, mixture.dim, dtype=torch.float64))
    x.requires_grad_(True)
    score, = torch.autograd.grad(log_density(mixture, x, sigma).sum(), x)
    assert torch.allclose(mixture(x.detach(), sigma), x.detach() + sigma**2 * score, rtol=1e-9, atol=1e-9)


def test_samples_have_the_mixture_moments():
    m = GaussianMixture.anisotropic(dim=4, components=3)
    x = m.sample(200_000, torch.Generator().manual_seed(1))
    mean = (m.weights[:, None] * m.means).sum(0)
    var = (m.weights[:, None] * (m.stds**2 + m.means**2)).sum(0) - mean**2
    assert torch.allclose(x.mean(0), mean, atol=4 * (var / 200_000).sqrt().max().item())
    assert torch.allclose(x.var(0), var, rtol=0.02)


def test_ode_endpoint_of_one_gaussian_is_exact():
    # one component: x(sigma) - mu is proportional to sqrt(s^2 + sigma^2), so x(0) = mu + (x - mu) s / sqrt(s^2 + sigma^2)
    mu, s = torch.tensor([[0.3, -1.0]], dtype=torch.float64), torch.tensor([[0.7, 0.2]], dtype=torch.float64)
    m = GaussianMixture(mu, s, torch.ones(1, dtype=torch.float64))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
    exact = mu + (x - mu) * s / (s**2 + 80**2).sqrt()
    assert torch.allclose(m.ode_endpoint(x, 80.0), exact, atol=1e-5)
