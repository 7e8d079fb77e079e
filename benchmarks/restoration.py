"""Restoration on the built-in phantoms (grayscale MRI-like slices): super-resolution x4 and Cartesian MRI at 4x and
8x acceleration, diffusely against the classic baselines (issue 20). Not run by CI.

Trains on the 4000 built-in phantoms (slices 0..3999) and scores held-out slices (from 100000 on):
  three networks of one U-Net shape for the same steps and batch: an unconditional diffusion model (the prior of
  zero-shot restoration), a conditional SR model (`--task upscale --scale 4`, SR3) and a regression U-Net trained
  with L1 on the same input as SR3 (A^+ y and a "given" channel; it predicts a residual over A^+ y), SR3's and
  LDM's baseline.
Rows:
  SR x4      bicubic (of the 4x average-pooled image), regression U-Net, SR3 one sample and the mean of K samples,
             SR3 with each estimate projected onto the measurement (`upscale --consistent`), SR3 with Heun, zero-shot
             projection (DDNM) and DPS with the unconditional model
  SR x4 FD   FD and FD-c over fd_images other held-out slices (1000): the truths, bicubic, the regression U-Net and
             single SR3 samples (the 64 test slices are too few for an FD to tell these apart)
  MRI 4x/8x  zero-filled inverse FFT (A^+ y), total-variation compressed sensing (isotropic TV, Chambolle-Pock's
             primal-dual algorithm 1 (2011), --tv-iterations iterations, lambda picked from a grid on 4 training
             slices), zero-shot projection one sample / mean of K / with Heun, DPS
Every diffusion row spends 35 NFE a sample, with the commands' default samplers (`upscale`: Euler ancestral,
`restore`: DPM++ 2M SDE, 35 steps each), and the "Heun" rows with the stock sampler's 18 steps.
Columns: PSNR (dB) and SSIM of [-1, 1] images (torchmetrics), consistency error (RMS of A x - y in [-1, 1]
units), NFE (network evaluations per sample; DPS also backpropagates each), seconds per image (each method's
wall time over the test set, divided by the images), calibration (K-sample rows: correlation of the std map with
the mean's absolute error), FD (Fréchet distance of the outputs' features to held-out real slices', in a lesion
classifier trained on the training slices: diffusely.metrics.fit_domain_features) and FD-c (the same in a SimCLR
encoder of the training slices, no labels); both biased upwards at the test set's size, so the title gives the
FDs of the test truths themselves, what a perfect method scores.
Pictures under --out: sr.png, mri4.png, mri8.png (input, baselines, a sample, the posterior mean, the std map,
the truth, the mean's error map x4) and results.json.

    python benchmarks/restoration.py --out benchmarks/results/restoration --runs /tmp/restoration-runs
                                        # ~1.7 hours on 2 free CPU cores; --runs keeps the trained networks,
                                        # so a second invocation re-scores without training again
    python benchmarks/restoration.py --out /tmp/restoration-quick --quick   # ~1 minute: shows it runs, not results
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from diffusely import nfe as nfe_of
from diffusely._files import atomic_write_text
from diffusely._util import generators, randn
from diffusely.checkpoint import load_run
from diffusely.conditions import LowRes
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.data import load_dataset, to_tensor
from diffusely.data.phantoms import render_phantoms
from diffusely.metrics import FeatureStats, fit_domain_features, frechet_distance
from diffusely.metrics.restoration import calibration, consistency_error, psnr, ssim
from diffusely.nets import UNet, UNetConfig
from diffusely.options import checkpoint_step
from diffusely.pipelines.restore import RESTORE_SAMPLER, UPSCALE_SAMPLER, in_range
from diffusely.restoration import Downsample, KSpace, Projected, restore
from diffusely.samplers import sample, steps_for_nfe
from diffusely.train import train
from diffusely.train.common import lr_at
from diffusely.train.ema import ema_beta, make_ema, update_ema
from diffusely.viz import save_strip

FULL = dict(size=64, channels=(32, 64, 64), attention=(2,), steps=2000, batch=16, test=64, k=8, nfe=35,
            tv_iterations=300, fd_steps=600, fd_reference=2000, fd_images=1000)
QUICK = dict(size=32, channels=(16, 32), attention=(), steps=60, batch=8, test=4, k=2, nfe=7,
             tv_iterations=60, fd_steps=20, fd_reference=64, fd_images=8)
# the commands' own defaults (diffusely.pipelines.restore), at --nfe steps (one evaluation each; 35: under the
# issue's 50), and Heun's ODE at the same NFE, the stock sampler, for comparison
SAMPLERS = {"upscale": UPSCALE_SAMPLER[0], "restore": RESTORE_SAMPLER[0]}
SEED = 1234


def network(s: dict, lowres: bool) -> UNetConfig:
    return UNetConfig(in_channels=1, out_channels=1, channels=s["channels"], blocks_per_level=1,
                      attention_levels=s["attention"], groups=8, lowres_channels=2 if lowres else 0)


def run_config(s: dict, task: str) -> RunConfig:
    return RunConfig(model=network(s, False), data=DataConfig(source="phantoms", image_size=s["size"], channels=1,
                                                              task=task, scale=4, flip=True),
                     train=TrainConfig(steps=s["steps"], batch_size=s["batch"], checkpoint_every=s["steps"],
                                       sample_every=s["steps"], warmup_steps=min(200, s["steps"] // 4)))


def train_diffusion(s: dict, task: str, root: Path):
    """A diffusely run (generate or upscale) trained on the phantoms, loaded for sampling, and its training time;
    a run already trained to the steps in `root` (a --runs folder) is loaded as it is."""
    started = time.perf_counter()
    if checkpoint_step(root / task) < s["steps"]:
        train(run_config(s, task), root / task, resume=(root / task / "config.json").is_file(), progress=False)
    return load_run(root / task), time.perf_counter() - started


def regression_baseline(s: dict, images: torch.Tensor, root: Path) -> tuple[UNet, float]:
    """The regression U-Net, trained, or loaded from `root` where an earlier run of the same settings left it."""
    path = root / "regression.safetensors"
    if path.is_file():
        net = UNet(network(s, lowres=True))
        net.load_state_dict(load_file(path))
        return net.eval(), 0.0
    net, seconds = train_regression(s, images)
    save_file(net.state_dict(), path)
    return net, seconds


def regress(net: UNet, A, lowres: LowRes, y: torch.Tensor) -> torch.Tensor:
    """The regression U-Net's estimate from y: A^+ y plus the residual it predicts (SR3's input, no noise)."""
    u = A.pinv(y)
    return u + net(u, torch.zeros(len(y)), lowres=lowres.render(y))


def train_regression(s: dict, images: torch.Tensor) -> tuple[UNet, float]:
    """The regression baseline: the same U-Net as SR3's, its input A^+ y (and SR3's low-res channels), trained with
    L1 towards x - A^+ y (a residual, as EDM's c_skip gives the diffusion model), diffusely's AdamW schedule and EMA."""
    torch.manual_seed(0)
    config, tc = run_config(s, "upscale"), run_config(s, "upscale").train
    config.model.lowres_channels = 2
    net, A, lowres = UNet(config.model), Downsample(4), LowRes(config)
    ema, optimizer = make_ema(net), torch.optim.AdamW(net.parameters(), lr=tc.lr, betas=tc.betas)
    g, started = torch.Generator().manual_seed(0), time.perf_counter()
    for step in range(tc.steps):
        rows = torch.randint(len(images), (tc.batch_size,), generator=g)
        x0 = images[rows]
        flip = torch.rand(len(rows), generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y = A(x0)
        loss = (regress(net, A, lowres, y) - x0).abs().mean()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        optimizer.step()
        update_ema(ema, net, ema_beta(tc.batch_size, (step + 1) * tc.batch_size, tc.ema_halflife_images, tc.ema_rampup))
    return ema.eval(), time.perf_counter() - started


def gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences (B, 2, C, H, W), zero across the last row/column (Neumann boundary)."""
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return torch.stack([dy, dx], dim=1)


def divergence(p: torch.Tensor) -> torch.Tensor:
    """-gradient^T: div p, so <gradient x, p> = -<x, div p>."""
    py, px = p[:, 0], p[:, 1]
    dy = torch.cat([py[..., :1, :], py[..., 1:-1, :] - py[..., :-2, :], -py[..., -2:-1, :]], dim=-2)
    dx = torch.cat([px[..., :1], px[..., 1:-1] - px[..., :-2], -px[..., -2:-1]], dim=-1)
    return dy + dx


def tv_reconstruction(A, y: torch.Tensor, lam: float, iterations: int) -> torch.Tensor:
    """argmin_x 1/2 ||A x - y||^2 + lam TV(x), isotropic TV, by Chambolle & Pock's primal-dual algorithm 1 with
    K = gradient (||K||^2 <= 8, tau = sigma = 1/sqrt(8)); the data term's prox is exact in Fourier space, since
    A^T A on real images is the multiplier w of the mask and its mirror (measured here by A^T A on a delta)."""
    shape = A.pinv(y).shape
    delta = torch.zeros(shape[-2:])
    delta[0, 0] = 1
    w = torch.fft.fft2(A.adjoint(A(delta[None, None]))).real[0, 0]
    tau = sigma = 1 / math.sqrt(8)
    aty, x = A.adjoint(y), A.pinv(y)
    x_bar, p = x.clone(), torch.zeros(shape[0], 2, *shape[1:])
    for _ in range(iterations):
        p = p + sigma * gradient(x_bar)
        p = p / (p.norm(dim=1, keepdim=True) / lam).clamp_min(1)  # projection onto {|p| <= lam} per pixel
        v = x + tau * divergence(p) + tau * aty
        x_new = torch.fft.ifft2(torch.fft.fft2(v) / (1 + tau * w)).real
        x_bar, x = 2 * x_new - x, x_new
    return x


def pick_lambda(A, truth: torch.Tensor, iterations: int) -> float:
    """The TV weight with the best PSNR on a few training slices, from a grid."""
    y = A(truth)
    scores = {lam: float(psnr(tv_reconstruction(A, y, lam, iterations), truth).mean())
              for lam in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}
    return max(scores, key=scores.get)


class Scorer:
    """The row of each method on one task: PSNR and SSIM of its output clipped to [-1, 1], consistency of the output
    itself, and FD of the clipped outputs' domain features against held-out real slices (`fd`: each space's)."""

    def __init__(self, truth: torch.Tensor, A, y: torch.Tensor, fd):
        self.truth, self.A, self.y, self.fd = truth, A, y, fd

    def __call__(self, x: torch.Tensor, seconds: float, nfe: int, std=None) -> dict:
        clipped = x.clamp(-1, 1)
        row = {"psnr": float(psnr(clipped, self.truth).mean()), "ssim": float(ssim(clipped, self.truth).mean()),
               **self.fd(clipped), "consistency": float(consistency_error(self.A, x, self.y).mean()), "nfe": nfe,
               "seconds": seconds / len(x)}
        if std is not None:
            row["calibration"] = float(calibration(std, (x - self.truth).abs()).nanmean())
        return row


def domain_fd(s: dict):
    """x (N, 1, S, S) -> {"fd": ..., "fd_contrastive": ...}: the Fréchet distance of its features to those of
    s["fd_reference"] held-out slices, in two feature spaces trained on the training slices
    (diffusely.metrics.fit_domain_features): a lesion classifier (the labels the phantoms have), and a SimCLR
    encoder (no labels: it must tell slices apart, so it keeps what makes one differ from another). With N test
    images an FD is biased upwards at small N and comparable only within one run of this benchmark."""
    data = load_dataset("phantoms", s["size"], 1, classes=True)
    reference_images = render_phantoms(s["fd_reference"], s["size"], start=200_000).images[..., :1]
    spaces = {"fd": fit_domain_features(data.images, data.labels, len(data.class_names), steps=s["fd_steps"]),
              "fd_contrastive": fit_domain_features(data.images, steps=s["fd_steps"])}
    references = {key: FeatureStats.of(extractor(reference_images), extractor.name)
                  for key, extractor in spaces.items()}

    def fd(x: torch.Tensor) -> dict:
        fakes = {key: FeatureStats.of(extractor(x)) for key, extractor in spaces.items()}
        return {key: frechet_distance(references[key].mu, references[key].sigma, fakes[key].mu, fakes[key].sigma)
                for key in spaces}
    return fd


def timed(fn):
    """fn() under no_grad (DPS takes its own gradients), and the seconds it took."""
    started = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - started


def posterior(draw, k: int):
    """K draws (each (B, C, H, W)) -> the first, their mean and std, and the seconds they took."""
    xs, seconds = timed(lambda: torch.stack([draw(i).clamp(-1, 1) for i in range(k)]))
    return xs[0], xs.mean(0), xs.std(0), seconds


def noise_for(truth: torch.Tensor, i: int):
    gens = generators([SEED + 1000 * i + j for j in range(len(truth))])
    return randn(truth.shape, gens), gens


def zero_shot(run, A, y, truth, s, how: str, i: int = 0, method: str = SAMPLERS["restore"]) -> torch.Tensor:
    d = run.config.diffusion
    noise, gens = noise_for(truth, i)
    x = restore(run.denoiser, A, y, noise, method=method, how=how, steps=steps_for_nfe(method, s["nfe"]),
                sigma_min=d.sigma_min, sigma_max=d.sigma_max, generator=gens)
    return in_range(A, x, y) if how == "project" else x  # as `diffusely restore` writes it


def super_resolution(s, truth, prior, sr, regression, fd) -> tuple[dict, list]:
    A, n, method = Downsample(4), s["nfe"], SAMPLERS["upscale"]
    y = A(truth)
    score, rows, pictures = Scorer(truth, A, y, fd), {}, {}
    x, t = timed(lambda: F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False))
    rows["bicubic"], pictures["bicubic"] = score(x, t, 0), x
    x, t = timed(lambda: regress(regression, A, LowRes(sr.config), y))
    rows["regression U-Net (L1)"], pictures["regression"] = score(x, t, 1), x
    d, cond = sr.config.diffusion, {"lowres": LowRes(sr.config).render(y)}

    def draw(i, consistent=False, method=method):
        noise, gens = noise_for(truth, i)
        x = sample(Projected(sr.denoiser, A, y) if consistent else sr.denoiser, noise, method=method,
                   steps=steps_for_nfe(method, s["nfe"]), sigma_min=d.sigma_min, sigma_max=d.sigma_max, generator=gens,
                   cond=cond)
        return in_range(A, x, y) if consistent else x  # as `diffusely upscale [--consistent]` writes it
    first, mean, std, t = posterior(draw, s["k"])
    rows["SR3 (diffusely upscale), 1 sample"] = score(first, t / s["k"], n)
    rows[f"SR3, mean of {s['k']}"] = score(mean, t, n * s["k"], std)
    x, t = timed(lambda: draw(0, consistent=True))
    rows["SR3 --consistent, 1 sample"] = score(x, t, n)
    x, t = timed(lambda: draw(0, method="heun"))
    rows["SR3, 1 sample, Heun"] = score(x, t, nfe_of("heun", steps_for_nfe("heun", s["nfe"])))
    for how in ("project", "dps"):
        x, t = timed(lambda: zero_shot(prior, A, y, truth, s, how))
        rows[f"zero-shot {how}, 1 sample"] = score(x, t, n)
    row = lambda *xs: torch.stack([v[0] for v in xs])  # noqa: E731
    pictures = [row(A.pinv(y), pictures["bicubic"], pictures["regression"], first, mean, std_picture(std), truth,
                    error_picture(mean, truth)), ["input A^+ y", "bicubic", "regression", "SR3 sample",
                                                  f"mean of {s['k']}", "std x4", "truth", "|error| x4"]]
    return rows, pictures


def sr_fd(s, sr, regression, fd) -> dict:
    """FD and FD-c over s["fd_images"] held-out slices (from 300000 on), where the test set's 64 cannot tell the
    methods apart: the truths themselves (what a perfect method scores at this N), bicubic, the regression U-Net and
    single SR3 samples (the bar's rows), in batches of the test set's size."""
    truth = to_tensor(render_phantoms(s["fd_images"], s["size"], start=300_000).images[..., :1])
    A, lowres, method, d = Downsample(4), LowRes(sr.config), SAMPLERS["upscale"], sr.config.diffusion

    def sr3(t, i):
        gens = generators([SEED + 7 + 10_000 * i + j for j in range(len(t))])
        x = sample(sr.denoiser, randn(t.shape, gens), method=method, steps=steps_for_nfe(method, s["nfe"]),
                   sigma_min=d.sigma_min, sigma_max=d.sigma_max, generator=gens, cond={"lowres": lowres.render(A(t))})
        print(f"  SR3 samples for FD: {min((i + 1) * s['test'], len(truth))}/{len(truth)}", flush=True)
        return x
    methods = {"truths": lambda t, i: t,
               "bicubic": lambda t, i: F.interpolate(A(t), scale_factor=4, mode="bicubic", align_corners=False),
               "regression U-Net (L1)": lambda t, i: regress(regression, A, lowres, A(t)),
               "SR3 (diffusely upscale), 1 sample": sr3}
    with torch.no_grad():
        return {name: fd(torch.cat([fn(t, i) for i, t in enumerate(truth.split(s["test"]))]).clamp(-1, 1))
                for name, fn in methods.items()}


def mri(s, truth, prior, acceleration: int, tuning: torch.Tensor, fd) -> tuple[dict, list]:
    """The MRI rows at `acceleration`; TV's weight tuned on the `tuning` slices (training ones)."""
    A, n = KSpace.random(s["size"], acceleration, seed=0), s["nfe"]
    lam = pick_lambda(A, tuning, s["tv_iterations"])
    y = A(truth)
    score, rows = Scorer(truth, A, y, fd), {}
    x_zf, t = timed(lambda: A.pinv(y))
    rows["zero-filled inverse FFT"] = score(x_zf, t, 0)
    x_tv, t = timed(lambda: tv_reconstruction(A, y, lam, s["tv_iterations"]))
    rows[f"TV compressed sensing (lambda {lam:g})"] = score(x_tv, t, 0)
    first, mean, std, t = posterior(lambda i: zero_shot(prior, A, y, truth, s, "project", i), s["k"])
    rows["zero-shot project, 1 sample"] = score(first, t / s["k"], n)
    rows[f"zero-shot project, mean of {s['k']}"] = score(mean, t, n * s["k"], std)
    x, t = timed(lambda: zero_shot(prior, A, y, truth, s, "project", method="heun"))
    rows["zero-shot project, 1 sample, Heun"] = score(x, t, nfe_of("heun", steps_for_nfe("heun", s["nfe"])))
    x, t = timed(lambda: zero_shot(prior, A, y, truth, s, "dps"))
    rows["zero-shot DPS, 1 sample"] = score(x, t, n)
    row = lambda *xs: torch.stack([v[0] for v in xs])  # noqa: E731
    pictures = [row(x_zf.clamp(-1, 1), x_tv.clamp(-1, 1), first, mean, std_picture(std), truth,
                    error_picture(mean, truth)), ["zero-filled", "TV-CS", "sample", f"mean of {s['k']}", "std x4",
                                                  "truth", "|error| x4"]]
    return rows, pictures


def warm_up(prior, sr, truth: torch.Tensor) -> None:
    """One call of each network: a first call allocates, which is kept out of the timings."""
    with torch.no_grad():
        prior.denoiser(truth[:1], torch.ones(1))
        sr.denoiser(truth[:1], torch.ones(1), lowres=LowRes(sr.config).render(Downsample(4)(truth[:1])))


def std_picture(std: torch.Tensor) -> torch.Tensor:
    return (4 * std).clamp(0, 1) * 2 - 1  # 0 black; a std of 0.25 ([-1, 1] units) or more white


def error_picture(x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (2 * (x - truth).abs()).clamp(0, 1) * 2 - 1  # |error| x 4 on [0, 1]'s scale: 0.25 or more white


def table(title: str, rows: dict) -> str:
    lines = [f"\n{title}", f"{'method':42s} {'PSNR':>7s} {'SSIM':>6s} {'FD':>8s} {'FD-c':>7s} {'consist.':>9s} "
             f"{'NFE':>5s} {'s/img':>8s} {'calib.':>6s}"]
    for name, r in rows.items():
        calib = f"{r['calibration']:6.2f}" if "calibration" in r else ""
        contrastive = f"{r['fd_contrastive']:7.3g}" if "fd_contrastive" in r else " " * 7  # not in older results
        lines.append(f"{name:42s} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['fd']:8.3g} {contrastive} "
                     f"{r['consistency']:9.4f} {r['nfe']:5d} {r['seconds']:8.3f} {calib}")
    return "\n".join(lines)


def fd_table(title: str, rows: dict) -> str:
    return "\n".join([f"\n{title}", f"{'method':42s} {'FD':>10s} {'FD-c':>10s}"] +
                     [f"{name:42s} {r['fd']:10.3g} {r['fd_contrastive']:10.3g}" for name, r in rows.items()])


def earlier_results(path: Path, s: dict) -> dict:
    """The tables an earlier invocation with the same settings wrote to `path`, which --only keeps; refused where
    there are none to keep, or they were made with other settings (rewriting the file would lose them, or mix)."""
    if not path.is_file():
        raise SystemExit(f"--only keeps the other tables of {path}, which does not exist: run without --only first")
    earlier = json.loads(path.read_text())
    if earlier["settings"] != json.loads(json.dumps(s)):
        raise SystemExit(f"{path} was made with other settings ({earlier['settings']}); --only would mix them: "
                         f"give another --out, or run without --only")
    return earlier["results"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="Folder for the pictures and results.json.")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes, to see it work (a minute or two).")
    parser.add_argument("--runs", type=Path, help="Keep the trained networks here (default: a temporary folder); a "
                        "second invocation with the same settings loads them instead of training again.")
    parser.add_argument("--only", action="append", choices=["sr", "mri4", "mri8"], help="Score only these tables "
                        "(repeatable), keeping the others' from an earlier results.json in --out.")
    args = parser.parse_args()
    s = copy.deepcopy(QUICK if args.quick else FULL)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"settings: {s}")
    train_images = to_tensor(load_dataset("phantoms", s["size"], 1).images)
    truth = to_tensor(render_phantoms(s["test"], s["size"], start=100_000).images[..., :1])
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        prior, t_prior = train_diffusion(s, "generate", runs)
        sr, t_sr = train_diffusion(s, "upscale", runs)
        regression, t_reg = regression_baseline(s, train_images, runs)
        fd = domain_fd(s)
        floor = fd(truth)  # the test slices themselves: the FD a perfect method scores at this N
        print(f"trained {s['steps']} steps each: prior {t_prior:.0f} s, SR3 {t_sr:.0f} s, regression {t_reg:.0f} s")
        warm_up(prior, sr, truth)
        tasks = {"SR x4": ("sr", lambda: super_resolution(s, truth, prior, sr, regression, fd))}
        for acceleration in (4, 8):
            tasks[f"MRI {acceleration}x"] = (f"mri{acceleration}", functools.partial(
                mri, s, truth, prior, acceleration, train_images[:4], fd))
        results = earlier_results(args.out / "results.json", s) if args.only else {}
        for key, (name, run) in tasks.items():
            if args.only and name not in args.only:
                continue
            results[key], (images, labels) = run()
            save_strip([images], args.out / f"{name}.png", labels=labels, scale=max(1, 128 // s["size"]))
            print(table(f"{key} ({s['size']}x{s['size']}, {s['test']} held-out phantoms; FD of the truths: "
                        f"{floor['fd']:.3g}, FD-c {floor['fd_contrastive']:.3g})", results[key]), flush=True)
            if name == "sr":
                results["SR x4 FD"] = sr_fd(s, sr, regression, fd)
                print(fd_table(f"SR x4, FD over {s['fd_images']} held-out phantoms", results["SR x4 FD"]), flush=True)
            # written after each task (atomically: --only reads it back): a late failure keeps the tables before it
            written = {"settings": s, "sr_residual": sr.config.diffusion.residual, "truths": floor, "results": results}
            atomic_write_text(args.out / "results.json", json.dumps(written, indent=2))
    print(f"\npictures and results.json in {args.out}")


if __name__ == "__main__":
    main()
