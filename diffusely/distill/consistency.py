"""Consistency distillation (Song et al. 2023, "Consistency Models", alg. 2) in EDM's sigma frame.

A consistency function f(x, sigma) maps any point of a probability-flow ODE trajectory to the trajectory's
end at sigma_min, so one evaluation at sigma_max turns noise into a sample. It is a denoiser in shape
(x, sigma) -> x0_hat, parameterised as EDM's with the boundary condition f(x, sigma_min) = x built in:

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))                  (CM eq. 5)
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),  c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2)  (CM app. C)

Training pulls f at adjacent noise levels of a Karras grid together: x at sigma_{n+1}, one Heun step of the
teacher's ODE gives x_hat at sigma_n, and the loss is |f_theta(x, sigma_{n+1}) - f_target(x_hat, sigma_n)|^2,
f_target an exponential moving average of f_theta with no gradient (CM eq. 7). Math only: torch, no files.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._util import append_dims
from ..denoisers import Coefficients, Denoiser
from ..schedules import DiscreteSchedule, karras_sigmas


def consistency_coefficients(sigma: torch.Tensor, sigma_data: float, sigma_min: float) -> Coefficients:
    """c_skip, c_out, c_in of a consistency model (CM app. C; EDM table 1's c_in): c_skip(sigma_min) = 1 and
    c_out(sigma_min) = 0, so f(x, sigma_min) = x whatever the network."""
    sd2 = sigma_data**2
    c_skip = sd2 / ((sigma - sigma_min) ** 2 + sd2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sd2).sqrt()
    c_in = 1 / (sigma**2 + sd2).sqrt()
    return c_skip, c_out, c_in


class ConsistencyDenoiser(Denoiser):
    """f(x, sigma, **cond) -> x0_hat from a raw network F(input, noise_label, **cond), the boundary condition at
    sigma_min built in. Noise labels as the teacher's (EDM's ln(sigma)/4, or a discrete schedule's timestep), so
    a student initialised from an EDM teacher's network starts close to the teacher's denoiser (student_config
    refuses other teachers: an eps or v network read through these coefficients starts far from its teacher)."""

    def __init__(self, net: torch.nn.Module, *, sigma_data: float, sigma_min: float,
                 schedule: Optional[DiscreteSchedule] = None, residual: Optional[str] = None):
        super().__init__(net, "edm", sigma_data=sigma_data, schedule=schedule, residual=residual)
        self.parameterization, self.sigma_min = "consistency", sigma_min

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return consistency_coefficients(sigma, self.sigma_data, self.sigma_min)


def distill_grid(grid_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The N + 1 noise levels the student is trained between, sigma_min = grid[0] < ... < grid[N] = sigma_max
    (EDM's Karras spacing, rho 7, increasing: CM sec. 6 uses N = 18), float64."""
    return karras_sigmas(grid_steps + 1, sigma_min, sigma_max)[:-1].flip(0)


def heun_step(teacher, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, cond: dict) -> torch.Tensor:
    """One step of Heun's method on the teacher's probability-flow ODE (EDM alg. 1, lines 4-8), from x at
    per-sample noise levels sigma (B,) to sigma_next (B,), both > 0. Two teacher evaluations."""
    s, s_next = append_dims(sigma, x.ndim).to(x.dtype), append_dims(sigma_next, x.ndim).to(x.dtype)
    d = (x - teacher(x, sigma, **cond)) / s
    x_euler = x + (s_next - s) * d
    d_next = (x_euler - teacher(x_euler, sigma_next, **cond)) / s_next
    return x + (s_next - s) * (d + d_next) / 2


def consistency_loss(student, target, teacher, x0: torch.Tensor, noise: torch.Tensor, n: torch.Tensor,
                     grid: torch.Tensor, cond: Optional[dict] = None) -> torch.Tensor:
    """Per-sample consistency distillation loss (B,) (CM eq. 7, squared L2 as a mean over elements, lambda = 1).

    x0, noise: (B, ...); n: (B,) grid indices in [0, N - 1]; grid: distill_grid's (N + 1,) sigmas. The point
    x0 + grid[n + 1] noise is on the forward process; the teacher carries it to grid[n] and the target network
    maps that to its end, the regression target for the student at grid[n + 1]. Two teacher evaluations, one of
    the target, one of the student (with gradient)."""
    cond = cond or {}
    grid = grid.to(x0.device)
    sigma_hi, sigma_lo = grid[n + 1].to(x0.dtype), grid[n].to(x0.dtype)
    x_hi = x0 + append_dims(sigma_hi, x0.ndim) * noise
    with torch.no_grad():
        x_lo = heun_step(teacher, x_hi, sigma_hi, sigma_lo, cond)
        y = target(x_lo, sigma_lo, **cond)
    return (student(x_hi, sigma_hi, **cond) - y).pow(2).flatten(1).mean(1)


def student_sigmas(nfe: int, sigma_min: float, sigma_max: float) -> list[float]:
    """The noise levels a student's few-step sampler evaluates at, then 0: sigma_max first, then the first nfe - 1
    interior points of a Karras grid of nfe + 1 levels down to sigma_min (nfe 2: 80, 2.51, 0 in EDM's range).
    The last level, sigma_min itself, is left out: f(x, sigma_min) = x, an evaluation that changes nothing."""
    return [float(s) for s in karras_sigmas(nfe + 1, sigma_min, sigma_max)[:nfe]] + [0.0]
