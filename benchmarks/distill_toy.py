"""Consistency distillation against progressive distillation where the teacher is exact: the 2-D ring mixture.

Both distil the ring's closed-form denoiser (diffusely.toy.GaussianMixture.ring()) into the same MLP (diffusely.
distill.toy.PointNet, from scratch) with the same number of Adam steps of 256 exact samples:
  consistency   diffusely's method (diffusely.distill): one run, the teacher's Heun step between adjacent levels of
                an 18-level Karras grid, EMA target network (decay 0.9); sampled at 1, 2 and 4 NFE from the same
                weights (the consistency sampler at student_sigmas).
  progressive   Salimans & Ho 2022, alg. 2, in sigma space: round 1 learns one Euler (DDIM) step of a 16-step
                grid from two Heun steps of the exact denoiser on a 32-step Karras grid; each later round learns
                one step from two of the previous student's, halving the steps (16, 8, 4, 2, 1: five rounds, the
                steps split evenly), each round initialised from the last. The 4-, 2- and 1-step students are
                three of its rounds. EDM's preconditioning and loss weighting for the x0 target.
Measured against the exact teacher: the mean distance from each deterministic sample to the ODE endpoint of its
noise (1 NFE for both; 2 and 4 NFE for progressive, whose samplers are deterministic), and, for every sampler, the
sliced Wasserstein-1 distance (64 directions) of 4096 samples to 4096 exact samples of the ring (the floor: two
exact sample sets, 0.038).

    python benchmarks/distill_toy.py                 # about a minute on one core
    python benchmarks/distill_toy.py --steps 3000    # both with twice the steps
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from diffusely.denoisers import Denoiser
from diffusely.distill.consistency import heun_step, student_sigmas
from diffusely.distill.toy import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, PointNet, distill_mixture, exact_teacher
from diffusely.samplers.consistency import sample_consistency
from diffusely.samplers.ode import sample_euler
from diffusely.schedules import karras_sigmas
from diffusely.toy import GaussianMixture

BASE_STEPS = 32  # the first teacher's Heun grid; each progressive round's grid is every 2^r-th of its levels


def euler_step(denoiser, x, sigma, sigma_next):
    """One Euler (DDIM) step of the ODE from per-sample sigma (B,) to sigma_next (B,), sigma_next may be 0."""
    s, s_next = sigma[:, None], sigma_next[:, None]
    return x + (s_next - s) * (x - denoiser(x, sigma)) / s


def exact_step(exact, x, sigma, sigma_next):
    """The first teacher's step: Heun's, but Euler's where sigma_next is 0 (Heun's last step, EDM alg. 1)."""
    last = sigma_next == 0
    heun = heun_step(exact, x, sigma, sigma_next.clamp(min=SIGMA_MIN), {})
    return torch.where(last[:, None], euler_step(exact, x, sigma, sigma_next), heun)


def progressive_round(student, teacher_step, grid: torch.Tensor, mixture, steps: int, g, batch: int = 256,
                      lr: float = 2e-3) -> None:
    """Train `student` so one Euler step across each interval of grid[::2] equals teacher_step's two (Salimans & Ho
    alg. 2): the x0 target that makes the student's step land where the teacher's two do."""
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    coarse = grid[::2].float()
    for _ in range(steps):
        x0 = mixture.sample(batch, g).float()
        i = torch.randint(len(coarse) - 1, (batch,), generator=g)
        s, s_mid, s_next = coarse[i], grid[2 * i + 1].float(), coarse[i + 1]
        x = x0 + s[:, None] * torch.randn(batch, 2, generator=g)
        with torch.no_grad():
            x_next = teacher_step(teacher_step(x, s, s_mid), s_mid, s_next)
            # x + (s_next - s)(x - D)/s = x_next  <=>  D = x - s (x_next - x) / (s_next - s)
            target = x - s[:, None] * (x_next - x) / (s_next - s)[:, None]
        weight = (s**2 + SIGMA_DATA**2) / (s * SIGMA_DATA) ** 2  # EDM's lambda(sigma)
        loss = (weight[:, None] * (student(x, s) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def progressive(mixture, total_steps: int) -> dict[int, Denoiser]:
    """The 4-, 2- and 1-step students of five rounds, total_steps split evenly among them."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    base, exact = karras_sigmas(BASE_STEPS, SIGMA_MIN, SIGMA_MAX), exact_teacher(mixture)
    teacher_step = lambda x, s, s_next: exact_step(exact, x, s, s_next)  # noqa: E731
    student, students, steps = Denoiser(PointNet(), "edm", sigma_data=SIGMA_DATA), {}, BASE_STEPS
    while steps > 1:
        grid = base[::BASE_STEPS // steps]
        progressive_round(student, teacher_step, grid, mixture, total_steps // 5, g)
        steps //= 2
        frozen = _frozen(student)
        students[steps] = frozen
        teacher_step = lambda x, s, s_next, frozen=frozen: euler_step(frozen, x, s, s_next)  # noqa: E731
    return {k: v for k, v in students.items() if k in (1, 2, 4)}


def _frozen(student: Denoiser) -> Denoiser:
    return copy.deepcopy(student).eval().requires_grad_(False)


def sliced_w1(a: torch.Tensor, b: torch.Tensor, directions: int = 64) -> float:
    """Sliced Wasserstein-1 between two equal-size point sets (N, 2): mean over directions of the 1-D W1."""
    angle = torch.arange(directions, dtype=torch.float64) * torch.pi / directions
    u = torch.stack([angle.cos(), angle.sin()], 1)
    pa, pb = (a.double() @ u.T).sort(0).values, (b.double() @ u.T).sort(0).values
    return (pa - pb).abs().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="Adam steps of each method")
    args = p.parse_args()
    torch.set_num_threads(1)
    ring = GaussianMixture.ring()
    noise = torch.randn(4096, 2, generator=torch.Generator().manual_seed(5))
    truth = ring.sample(4096, torch.Generator().manual_seed(7))
    endpoint = ring.ode_endpoint(noise[:512].double() * SIGMA_MAX, SIGMA_MAX)
    floor = sliced_w1(ring.sample(4096, torch.Generator().manual_seed(8)), truth)
    print(f"floor: sliced W1 between two exact sample sets {floor:.3f}")
    started = time.perf_counter()
    cd = distill_mixture(ring, args.steps)
    print(f"consistency: {args.steps} steps, {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    pd = progressive(ring, args.steps)
    print(f"progressive: {args.steps} steps in 5 rounds, {time.perf_counter() - started:.0f} s")
    print(f"{'method':<12} {'NFE':>4} {'endpoint error':>15} {'sliced W1':>10}")
    with torch.no_grad():
        for nfe in (1, 2, 4):
            sigmas = torch.tensor(student_sigmas(nfe, SIGMA_MIN, SIGMA_MAX), dtype=torch.float64)
            x = sample_consistency(cd, noise * SIGMA_MAX, sigmas, generator=torch.Generator().manual_seed(6))
            error = (x[:512].double() - endpoint).norm(dim=1).mean().item() if nfe == 1 else float("nan")
            print(f"{'consistency':<12} {nfe:>4} {error:>15.3f} {sliced_w1(x, truth):>10.3f}")
        for nfe, student in sorted(pd.items()):
            grid = karras_sigmas(BASE_STEPS, SIGMA_MIN, SIGMA_MAX)[::BASE_STEPS // nfe]
            x = sample_euler(student, noise * SIGMA_MAX, grid)
            error = (x[:512].double() - endpoint).norm(dim=1).mean().item()
            print(f"{'progressive':<12} {nfe:>4} {error:>15.3f} {sliced_w1(x, truth):>10.3f}")


if __name__ == "__main__":
    main()
