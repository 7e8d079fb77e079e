"""Samplers at 5 to 50 network evaluations: against the exact answer, and against diffusers' schedulers.

Data whose ideal denoiser is known in closed form (diffusely.toy.GaussianMixture: a 2-D ring of 8
Gaussians, and a 64-D mixture of 4 with per-dimension stds from 0.1 to 1) leaves each sampler only
its own error. Two figures per sampler and budget:
  error   RMS over samples of |x - x_ode|, against the probability-flow ODE's exact endpoint from the
          same noise (a tight adaptive solve); deterministic samplers only
  SW      sliced Wasserstein-2 distance between the samples and exact draws from the mixture; its
          floor (two exact sample sets of the same size) is printed with the table
Every sampler starts at DDPM's sigma_max (157.4, linear schedule, 1000 steps, betas 1e-4..0.02) and
ends at its sigma_min (0.01). diffusers' schedulers, when installed (pip install -e .[bench]), run the
same noise through an epsilon-prediction model on that schedule (the exact denoiser behind
x_t, t -> sigma(t), x = x_t / sqrt(abar)) in the standard set_timesteps / scale_model_input / step
loop. "+opt" rows use a schedule from diffusely.samplers.optimize, searched on a separate batch of
noise (never the one measured).

With --run RUN_DIR, also the Fréchet distance of a trained run's samples against NFE (features of
a shapes classifier, as in benchmarks/quality.py).

    python benchmarks/samplers.py                        # about 4 minutes on 2 CPU cores
    python benchmarks/samplers.py --run runs/demo        # + sample quality of the demo run, about 40 more
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
import warnings

import torch

from diffusely import SAMPLERS, nfe as nfe_of, sample
from diffusely.samplers import steps_for_nfe
from diffusely.samplers.optimize import optimize_sigmas
from diffusely.schedules import DiscreteSchedule
from diffusely.toy import GaussianMixture

NFES = (5, 10, 15, 20, 50)
SCHEDULE = DiscreteSchedule.named("linear")
SIGMA_MAX, SIGMA_MIN = SCHEDULE.sigma_max, SCHEDULE.sigma_min
STOCHASTIC = ("euler_ancestral", "ddpm", "dpmpp_2m_sde", "dpmpp_3m_sde")
OPTIMISED = ("unipc", "deis", "dpmpp_3m", "dpmpp_2m")  # methods that also get "+opt" rows, at budgets up to 20
LOG_SNR = ("unipc", "deis", "dpmpp_3m")  # and "log-snr" spacing rows
ADAPTIVE_TOLERANCES = (1e-2, 3e-3, 1e-3)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """sqrt(mean over random directions of W2^2 between the 1-D projections) of two equal-size sets (N, d)."""
    directions = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
    directions /= directions.norm(dim=0)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return float((pa - pb).pow(2).mean().sqrt())


class Case:
    """One mixture with its measured noise, search noise, exact endpoints and exact samples."""

    def __init__(self, name: str, mixture: GaussianMixture, n: int, n_search: int):
        self.name, self.mixture = name, mixture
        g = torch.Generator().manual_seed(0)
        self.noise = torch.randn(n, mixture.dim, generator=g, dtype=torch.float64)
        self.search_noise = torch.randn(n_search, mixture.dim, generator=g, dtype=torch.float64)
        self.reference = mixture.ode_endpoint(self.noise * SIGMA_MAX, SIGMA_MAX)
        self.search_reference = mixture.ode_endpoint(self.search_noise * SIGMA_MAX, SIGMA_MAX)
        self.exact = mixture.sample(n, g)
        # the exact endpoints are exact samples too: what a perfect sampler would score
        self.floor = sliced_wasserstein(self.reference, self.exact)

    def score(self, out: torch.Tensor, stochastic: bool = False) -> tuple[float, float]:
        error = math.nan if stochastic else float((out - self.reference).pow(2).sum(1).mean().sqrt())
        return error, sliced_wasserstein(out, self.exact)


def run_ours(case: Case, method: str, nfe: int, **kw) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1) if method in STOCHASTIC else None
    return sample(case.mixture, case.noise, method=method, nfe=nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                  generator=generator, **kw)


def ours(case: Case) -> dict[str, dict[int, tuple[float, float]]]:
    rows = {}
    for method in SAMPLERS:
        if nfe_of(method, 1) is not None:
            rows[method] = {n: case.score(run_ours(case, method, n), method in STOCHASTIC) for n in NFES}
    for method in LOG_SNR:
        rows[f"{method} log-snr"] = {n: case.score(run_ours(case, method, n, spacing="log-snr")) for n in NFES}
    for method in OPTIMISED:
        row = rows[f"{method} +opt"] = {}
        for n in [n for n in NFES if n <= 20]:
            found = optimize_sigmas(case.mixture, case.search_noise, steps_for_nfe(method, n), method,
                                    sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, reference=case.search_reference)
            row[n] = case.score(run_ours(case, method, n, spacing=lambda *_: found.sigmas))
    return rows


def adaptive(case: Case) -> list[tuple[float, int, float, float]]:
    out = []
    for rtol in ADAPTIVE_TOLERANCES:
        info = {}
        x = sample(case.mixture, case.noise, method="adaptive", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                   rtol=rtol, atol=rtol, info=info)
        out.append((rtol, info["nfe"], *case.score(x)))
    return out


# ---------------------------------------------------------------------------------------------
# diffusers

def diffusers_configs():
    import diffusers as d

    karras = {"use_karras_sigmas": True}
    return {
        "DPMSolverMultistep": (d.DPMSolverMultistepScheduler, {}),
        "DPMSolverMultistep karras": (d.DPMSolverMultistepScheduler, karras),
        "DPMSolverMultistep 3 karras": (d.DPMSolverMultistepScheduler, {"solver_order": 3, **karras}),
        "UniPCMultistep": (d.UniPCMultistepScheduler, {}),
        "UniPCMultistep karras": (d.UniPCMultistepScheduler, karras),
        "UniPCMultistep 3": (d.UniPCMultistepScheduler, {"solver_order": 3}),
        "DEISMultistep": (d.DEISMultistepScheduler, {}),
        "DEISMultistep karras": (d.DEISMultistepScheduler, karras),
        "EulerDiscrete": (d.EulerDiscreteScheduler, {}),
        "EulerDiscrete karras": (d.EulerDiscreteScheduler, karras),
        "HeunDiscrete": (d.HeunDiscreteScheduler, {}),
        "HeunDiscrete karras": (d.HeunDiscreteScheduler, karras),
        "DDIM trailing": (d.DDIMScheduler, {"timestep_spacing": "trailing", "clip_sample": False}),
    }


def run_diffusers(case: Case, cls, options: dict, nfe: int) -> torch.Tensor:
    """The standard diffusers loop with an exact epsilon-prediction model on DDPM's linear schedule."""
    import diffusers

    scheduler = cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                    prediction_type="epsilon", **options)
    scheduler.set_timesteps((nfe + 1) // 2 if cls is diffusers.HeunDiscreteScheduler else nfe)
    # the same start as ours: x = noise * sigma_max, in the scheduler's frame (VE-like for Euler and Heun)
    ve = float(scheduler.init_noise_sigma) > 1
    latents = case.noise * (SIGMA_MAX if ve else SIGMA_MAX / math.sqrt(SIGMA_MAX**2 + 1))
    calls = 0
    for t in scheduler.timesteps:
        x_t = scheduler.scale_model_input(latents, t)  # VP: sqrt(abar) x0 + sqrt(1 - abar) eps
        sigma = float(SCHEDULE.t_to_sigma(torch.as_tensor(t, dtype=torch.float64)))
        x = x_t * math.sqrt(1 + sigma**2)
        eps = (x - case.mixture(x, sigma)) / sigma
        calls += 1
        latents = scheduler.step(eps, t, latents).prev_sample
    assert calls <= nfe, (cls.__name__, calls, nfe)
    return latents


def theirs(case: Case) -> dict[str, dict[int, tuple[float, float]]]:
    return {name: {n: case.score(run_diffusers(case, cls, options, n).double()) for n in NFES}
            for name, (cls, options) in diffusers_configs().items()}


# ---------------------------------------------------------------------------------------------
# printing

def print_table(title: str, rows: dict, floor: float):
    print(f"\n{title}: RMS endpoint error / sliced Wasserstein (SW floor {floor:.4f}; '-': stochastic, no endpoint)")
    print(f"{'':32}" + "".join(f"{f'NFE {n}':>18}" for n in NFES))
    cell = lambda e, sw: ("-" if math.isnan(e) else f"{e:.4f}") + f" / {sw:.4f}"
    for name, row in rows.items():
        print(f"{name:32}" + "".join(f"{cell(*row[n]) if n in row else '':>18}" for n in NFES))


def best(rows: dict, n: int) -> tuple[str, float]:
    name, row = min(((k, r) for k, r in rows.items() if n in r and not math.isnan(r[n][0])), key=lambda kr: kr[1][n][0])
    return name, row[n][0]


def mixture_section(case: Case, with_diffusers: bool):
    t = time.perf_counter()
    mine = ours(case)
    print_table(f"{case.name}, diffusely", mine, case.floor)
    print("adaptive (DPM-Solver-23):  " + "   ".join(f"rtol {r:g}: {n} NFE, {e:.4f} / {sw:.4f}"
                                                    for r, n, e, sw in adaptive(case)))
    if not with_diffusers:
        print(f"({time.perf_counter() - t:.0f} s; diffusers is not installed: pip install -e .[bench])")
        return
    other = theirs(case)
    print_table(f"{case.name}, diffusers", other, case.floor)
    print(f"\n{case.name}: best of ours / best of diffusers, endpoint error")
    for n in NFES:
        (a, ea), (b, eb) = best(mine, n), best(other, n)
        plain = {k: r for k, r in mine.items() if "+opt" not in k}
        (c, ec) = best(plain, n)
        print(f"  NFE {n:>2}: {ea:.4f} ({a}) / {eb:.4f} ({b}) = {ea / eb:.2f}x;   "
              f"without optimised schedules {ec:.4f} ({c}) = {ec / eb:.2f}x")
    print(f"({time.perf_counter() - t:.0f} s)")


# ---------------------------------------------------------------------------------------------
# a trained run

def quality_section(run_dir: str, samples: int, methods: list[str], nfes: list[int]):
    """Fréchet distance of a shapes classifier's features (the run must be trained on shapes) against NFE."""
    from diffusely.checkpoint import load_run
    from diffusely.data import load_dataset
    from diffusely.metrics import feature_statistics, fit_domain_features, frechet_distance
    from diffusely.pipelines import generate, optimize_schedule

    t = time.perf_counter()
    run = load_run(run_dir)
    data = load_dataset("shapes", run.config.data.image_size)
    # the classifier learns on the first 8000 images; the last 2000 are the reference
    features = fit_domain_features(data.images[:8000], data.labels[:8000], len(data.class_names))
    reference = feature_statistics(features(data.images[-2000:]))
    floor = frechet_distance(*feature_statistics(features(data.images[:samples])), *reference)
    print(f"\n{run_dir} (step {run.step}): FD of {samples} samples (shapes-classifier features; "
          f"{samples} real images: {floor:.2f})")
    print(f"{'':24}" + "".join(f"{f'NFE {n}':>10}" for n in nfes))

    def fd(method, n, **kw):
        x = torch.cat(list(generate(run, samples, nfe=n, sampler=method, seed=10_000, batch_size=250,
                                    progress=False, **kw)))
        return frechet_distance(*feature_statistics(features(x)), *reference)

    for method in methods:
        print(f"{method:24}" + "".join(f"{fd(method, n):>10.2f}" for n in nfes), flush=True)
    method = methods[-1]
    opt = {}
    for n in nfes:
        found, _, _ = optimize_schedule(run, steps_for_nfe(method, n), sampler=method, n=16)
        opt[n] = fd(method, n, spacing=lambda *_: found.sigmas)
    print(f"{method + ' +opt':24}" + "".join(f"{opt[n]:>10.2f}" for n in nfes))
    print(f"({time.perf_counter() - t:.0f} s)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2000, help="Noise samples measured per mixture.")
    p.add_argument("--search-samples", type=int, default=256, help="Noise samples the schedule search runs on.")
    p.add_argument("--run", help="Also measure sample quality of this run (trained on shapes) against NFE.")
    p.add_argument("--run-samples", type=int, default=500)
    p.add_argument("--run-samplers", default="heun,dpmpp_2m,deis,unipc")
    p.add_argument("--run-nfe", default="5,10,20")
    p.add_argument("--skip-mixtures", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    with_diffusers = importlib.util.find_spec("diffusers") is not None
    torch.manual_seed(0)
    if not args.skip_mixtures:
        print(f"sigma {SIGMA_MAX:.1f} -> {SIGMA_MIN:.4f} (DDPM linear), {args.samples} samples, Karras spacing "
              f"(rho 7) unless named")
        for name, mixture in [("2-D ring of 8", GaussianMixture.ring()), ("64-D, 4 components", GaussianMixture.anisotropic())]:
            mixture_section(Case(name, mixture, args.samples, args.search_samples), with_diffusers)
    if args.run:
        quality_section(args.run, args.run_samples, args.run_samplers.split(","), [int(n) for n in args.run_nfe.split(",")])


if __name__ == "__main__":
    main()
