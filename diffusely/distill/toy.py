"""Distillation on 2-D points, where the teacher is exact: the Gaussian mixtures of diffusely.toy.

The teacher is a mixture's closed-form denoiser, so its ODE endpoints are known to 1e-7 (GaussianMixture.ode_endpoint)
and a student's error is the distillation's alone. The student is a small MLP (PointNet) trained from scratch.
Used by tests/test_distill.py and benchmarks/distill_toy.py.
"""

from __future__ import annotations

import torch
from torch import nn

from ..samplers.consistency import sample_consistency
from ..toy import GaussianMixture
from ..train.ema import make_ema, update_ema
from .consistency import ConsistencyDenoiser, consistency_loss, distill_grid, student_sigmas

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SIGMA_DATA = 1.5  # the ring's spread per coordinate, about 1.5


class PointNet(nn.Module):
    """F(c_in x, c_noise) for 2-D points: an MLP on the point and sines of the noise label. x (B, 2) -> (B, 2)."""

    def __init__(self, width: int = 128, freqs: int = 8):
        super().__init__()
        self.register_buffer("freqs", torch.arange(freqs, dtype=torch.float32))
        self.net = nn.Sequential(nn.Linear(2 + 2 * freqs, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        angle = c_noise[:, None] * self.freqs
        return self.net(torch.cat([x, angle.sin(), angle.cos()], 1))


def point_student(seed: int = 0) -> ConsistencyDenoiser:
    """An untrained consistency student for 2-D points (its weights from torch's global generator seeded `seed`)."""
    torch.manual_seed(seed)
    return ConsistencyDenoiser(PointNet(), sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN)


def exact_teacher(mixture: GaussianMixture):
    """The mixture's denoiser on float32 batches, computed in float64."""
    return lambda x, sigma, **cond: mixture(x.double(), sigma.double()).to(x.dtype)


def distill_mixture(mixture: GaussianMixture, steps: int, *, batch: int = 256, grid_steps: int = 18, lr: float = 2e-3,
                    target_decay: float = 0.9, seed: int = 0) -> ConsistencyDenoiser:
    """Consistency distillation of the mixture's exact denoiser into a point_student, from scratch, `steps` Adam
    steps of `batch` exact samples; returns the student in eval mode."""
    student = point_student(seed)
    target, g = make_ema(student), torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    grid, teacher = distill_grid(grid_steps, SIGMA_MIN, SIGMA_MAX), exact_teacher(mixture)
    for _ in range(steps):
        x0, n = mixture.sample(batch, g).float(), torch.randint(grid_steps, (batch,), generator=g)
        loss = consistency_loss(student, target, teacher, x0, torch.randn(batch, 2, generator=g), n, grid).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        update_ema(target, student, target_decay)
    return student.eval()


def endpoint_errors(student, mixture: GaussianMixture, nfe: int, n: int = 512) -> list[float]:
    """Mean distance between each of the student's nfe evaluations (the consistency sampler at student_sigmas) and the
    teacher's ODE endpoint from the point that evaluation was given: noise at sigma_max first, then the renoised
    estimates. n samples, noise from seed 5 and renoising from seed 6."""
    errors = []

    def check(info):
        x, sigma = info["x"].double(), info["sigma"]
        errors.append((info["denoised"].double() - mixture.ode_endpoint(x, sigma)).norm(dim=1).mean().item())

    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(5))
    sigmas = torch.tensor(student_sigmas(nfe, SIGMA_MIN, SIGMA_MAX), dtype=torch.float64)
    with torch.no_grad():
        sample_consistency(student, noise * SIGMA_MAX, sigmas, generator=torch.Generator().manual_seed(6),
                           callback=check)
    return errors
