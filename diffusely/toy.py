"""Gaussian mixtures: data whose ideal denoiser is known in closed form, for testing and benchmarking samplers.

For x0 ~ sum_k w_k N(mu_k, diag(s_k^2)) and x = x0 + sigma n, the noisy data is the mixture
sum_k w_k N(mu_k, diag(s_k^2 + sigma^2)), and the ideal denoiser is the posterior mean

    E[x0 | x] = sum_k p(k | x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),

p(k | x) proportional to w_k N(x; mu_k, s_k^2 + sigma^2). Any sampler run on it has no network error:
what is left is the sampler's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._util import append_dims, as_sigma, randn


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of K Gaussians with diagonal covariances in d dimensions.

    means, stds: (K, d); weights: (K,), summing to 1. Data batches are (B, d); the denoiser also
    takes (B, *shape) with prod(shape) = d.
    """

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def ring(cls, components: int = 8, radius: float = 2.0, std: float = 0.15) -> "GaussianMixture":
        """The 2-D benchmark: equal-weight Gaussians on a circle, stds (std, 3 std) and (3 std, std) in turn."""
        angle = torch.arange(components, dtype=torch.float64) * 2 * math.pi / components
        means = radius * torch.stack([angle.cos(), angle.sin()], 1)
        stds = torch.tensor([[std, 3 * std], [3 * std, std]], dtype=torch.float64).repeat(components // 2 + 1, 1)
        return cls(means, stds[:components], torch.full((components,), 1 / components, dtype=torch.float64))

    @classmethod
    def anisotropic(cls, dim: int = 64, components: int = 4, std_range: tuple[float, float] = (0.1, 1.0),
                    seed: int = 0) -> "GaussianMixture":
        """The high-dimensional benchmark: unequal components whose per-dimension stds span std_range log-uniformly."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64)
        lo, hi = math.log(std_range[0]), math.log(std_range[1])
        stds = (lo + (hi - lo) * torch.rand(components, dim, generator=g, dtype=torch.float64)).exp()
        weights = torch.rand(components, generator=g, dtype=torch.float64) + 0.5
        return cls(means, stds, weights / weights.sum())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples (n, d), float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.stds[k] * randn((n, self.dim), generator, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The exact denoiser E[x0 | x, sigma]: x (B, *shape), sigma float or (B,)."""
        shape, x = x.shape, x.reshape(len(x), 1, -1)
        means, stds, weights = (t.to(x.device, x.dtype) for t in (self.means, self.stds, self.weights))
        var = stds**2 + append_dims(as_sigma(sigma, x), 3) ** 2  # (B, K, d)
        log_p = weights.log() - 0.5 * ((x - means) ** 2 / var + var.log()).sum(-1)  # log w_k N(x; mu_k, var) + const
        posterior = log_p.softmax(-1).unsqueeze(-1)  # p(k | x), (B, K, 1)
        return (posterior * (means + stds**2 / var * (x - means))).sum(1).reshape(shape)

    def ode_endpoint(self, x: torch.Tensor, sigma: float, rtol: float = 1e-7) -> torch.Tensor:
        """The probability-flow ODE's solution at sigma 0 from x at noise level sigma, to about rtol.

        An adaptive solve down to sigma_end = 1e-3 min(stds), then the exact denoiser there: the
        denoise misses x(0) by O((sigma_end / std)^2) = 1e-6 relative.
        """
        from .samplers.adaptive import sample_adaptive

        sigma_end = 1e-3 * float(self.stds.min())
        sigmas = torch.tensor([sigma, sigma_end, 0.0], dtype=torch.float64)
        return sample_adaptive(self, x, sigmas, rtol=rtol, atol=rtol)
