"""Sample quality against training steps: our default recipe (EDM) against DDPM's, and against diffusers.

Trains each recipe once on the built-in shapes data with the same batch and network shape, and at each
of --evals steps samples the EMA weights with the same NFE, and measures the samples against 2000
held-out real images in the features of a shapes classifier trained on the other 8000
(diffusely.metrics; comparable only within this benchmark, never with published FIDs):
  FD          Fréchet distance (lower is better)
  KID         kernel distance, unbiased, mean over 100 subsets (lower is better)
  precision   share of samples on the real images' k-NN manifold: fidelity (higher is better)
  recall      share of real images on the samples' manifold: diversity (higher is better)
  density, coverage   the same two ideas, robust to outliers (Naeem et al. 2020)
  confident   share of samples the classifier puts in a class with probability > 0.9
The `real` row measures 1000 real training images the same way: the best a model can score at this N.

Recipes (rows):
  edm        diffusely's default: EDM preconditioning and loss, lognormal sigmas; Heun, 18 steps (35 NFE)
  ddpm       DDPM's: ε-prediction, linear betas, uniform timesteps, diffusely's U-Net; the same sampler
  diffusers  diffusers' UNet2DModel of the same shape (parameter counts printed) trained with its
             DDPMScheduler (ε-prediction, linear betas, MSE), sampled as a diffusers user would: its
             DDIMScheduler with its defaults (x0 clipped to [-1, 1], "leading" timesteps) at the same NFE.
             The optimiser settings, lr schedule, EMA, clipping, batch and flips are diffusely's
             (--diffusers-lr changes the peak lr; diffusers' train_unconditional example uses 1e-4).
             Needs the `bench` extra.
  diffusers+heun   the same trained UNet2DModel, sampled by diffusely's sampler (the `ddpm` row's): it
             differs from `ddpm` only in the network and the training loop's code.
Snapshots at the --evals steps come from one run per recipe (the lr still decays over the whole run).
"train s" counts only the training steps of the diffusers rows, but for ours also data set-up, checkpoints
and snapshots: it is no speed comparison (benchmarks/throughput.py is).

    python benchmarks/quality.py --steps 1500 --evals 500,1000,1500     # about 40 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from diffusely import nfe, sample
from diffusely._util import generators, randn
from diffusely.checkpoint import CHECKPOINT, CONFIG, load_run
from diffusely.config import RECIPES, DataConfig, RunConfig, TrainConfig
from diffusely.data import load_dataset, to_tensor
from diffusely.denoisers import Denoiser
from diffusely.metrics import DomainFeatures, FeatureStats, fit_domain_features, quality_metrics
from diffusely.nets import UNet, UNetConfig
from diffusely.nets.fast import bf16_is_fast
from diffusely.pipelines import generate
from diffusely.train import train
from diffusely.train.common import lr_at
from diffusely.train.ema import ema_beta, make_ema, update_ema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _diffusers import TensorOutput, parameters, require_diffusers, unet2d  # noqa: E402

COLUMNS = ["fd", "kid", "precision", "recall", "density", "coverage"]
NETWORK = UNetConfig(channels=(32, 64, 64), blocks_per_level=1, attention_levels=(2,))
SIZE = 32
SEED = 10_000  # sampling seed


def train_ours(recipe: str, args, evals: list[int]) -> dict[int, tuple[torch.Tensor, float]]:
    """Train `recipe` for args.steps; at each eval step, sample args.samples images from a snapshot."""
    cfg = RunConfig(model=copy.deepcopy(NETWORK), diffusion=RECIPES[recipe](), data=DataConfig(source="shapes", image_size=SIZE, flip=True),
                    train=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                      checkpoint_every=math.gcd(*evals), sample_every=args.steps))
    cfg.diffusion.sampler, cfg.diffusion.sample_steps = args.sampler, args.sample_steps
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, started = Path(tmp) / "run", time.perf_counter()
        seconds = {}

        def snapshot(step: int) -> None:
            if step in evals:
                seconds[step] = time.perf_counter() - started
                (Path(tmp) / str(step)).mkdir()
                for name in (CONFIG, CHECKPOINT):
                    shutil.copy2(run_dir / name, Path(tmp) / str(step) / name)

        train(cfg, run_dir, progress=args.progress, on_checkpoint=snapshot)
        for step in evals:
            run = load_run(Path(tmp) / str(step))
            out[step] = torch.cat(list(generate(run, args.samples, seed=SEED, batch_size=250, progress=False))), seconds[step]
    return out


def train_diffusers(args, images, evals: list[int], device) -> tuple[dict, int]:
    """UNet2DModel + DDPMScheduler, trained with diffusely's optimiser settings (peak lr --diffusers-lr), then at each
    eval step sampled by its DDIMScheduler and by diffusely's sampler, both at the NFE of the ddpm row."""
    from diffusers import DDIMScheduler, DDPMScheduler

    torch.manual_seed(0)
    net = unet2d(NETWORK, SIZE).to(device)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.diffusers_lr or TrainConfig.lr)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    ema = make_ema(net)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16_is_fast(device) else nullcontext()
    data, b, g = torch.from_numpy(images).to(device), tc.batch_size, torch.Generator().manual_seed(0)
    ddpm = RECIPES["ddpm"]()
    denoiser = Denoiser(TensorOutput(ema), "eps", schedule=ddpm.discrete_schedule())
    out, started, train_seconds = {}, time.perf_counter(), 0.0
    for step in range(tc.steps):
        x = to_tensor(data[torch.randint(len(data), (b,), generator=g).to(device)])
        flip = (torch.rand(b, generator=g) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        noise = torch.randn(x.shape, generator=g).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=g).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        with autocast:
            prediction = net(noise_scheduler.add_noise(x, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        opt.step()
        update_ema(ema, net, ema_beta(b, (step + 1) * b, tc.ema_halflife_images, tc.ema_rampup))
        if step + 1 in evals:
            train_seconds += time.perf_counter() - started
            ddim = DDIMScheduler.from_config(noise_scheduler.config)
            ddim.set_timesteps(nfe(args.sampler, args.sample_steps))  # one network call a DDIM step
            with torch.inference_mode():
                out["diffusers", step + 1] = batched(lambda x: ddim_sample(ema, ddim, x), args.samples, device), train_seconds
                out["diffusers+heun", step + 1] = batched(
                    lambda x: sample(denoiser, x, method=args.sampler, steps=args.sample_steps, sigma_min=ddpm.sigma_min,
                                     sigma_max=ddpm.sigma_max), args.samples, device), train_seconds
            started = time.perf_counter()
    return out, parameters(net)


def batched(draw, n: int, device, batch_size: int = 250) -> torch.Tensor:
    """draw(noise) for n samples in batches; sample i's noise from seed SEED + i, as diffusely.generate draws it."""
    samples = []
    for first in range(0, n, batch_size):
        gens = generators([SEED + i for i in range(first, min(n, first + batch_size))])
        samples.append(draw(randn((len(gens), 3, SIZE, SIZE), gens, device)).clamp(-1, 1).cpu())
    return torch.cat(samples)


def ddim_sample(net, scheduler, x: torch.Tensor) -> torch.Tensor:
    for t in scheduler.timesteps:
        x = scheduler.step(net(x, t.to(x.device)).sample, t, x).prev_sample
    return x


def row(name: str, steps, seconds, images, extractor: DomainFeatures, reference: FeatureStats) -> dict:
    features = extractor(images)
    metrics = quality_metrics(reference, features)
    probs = extractor.net.head(torch.from_numpy(features).float()).softmax(-1).numpy()
    metrics["confident"] = float((probs.max(1) > 0.9).mean())
    cells = " ".join(f"{metrics[c]:>10.4g}" for c in COLUMNS + ["confident"])
    print(f"{name:<15} {steps:>6} {seconds:>8} {cells}", flush=True)
    return metrics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--evals", default="", help="comma-separated steps to measure at (default: --steps only)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sampler", default="heun")
    p.add_argument("--sample-steps", type=int, default=18)
    p.add_argument("--recipes", default="edm,ddpm,diffusers")
    p.add_argument("--diffusers-lr", type=float, default=0.0, help="peak lr of the diffusers rows (default: ours, 1e-3)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    args = p.parse_args()
    evals = sorted({int(s) for s in args.evals.split(",") if s} | {args.steps})
    if evals[0] < 1 or evals[-1] != args.steps:
        raise SystemExit(f"--evals must lie in 1..--steps ({args.steps})")
    recipes = args.recipes.split(",")
    if "diffusers" in recipes:
        require_diffusers()

    data = load_dataset("shapes", SIZE)
    # the classifier learns on the first 8000 images; the last 2000 are the held-out reference
    started = time.perf_counter()
    extractor = fit_domain_features(data.images[:8000], data.labels[:8000], len(data.class_names))
    reference = FeatureStats.of(extractor(data.images[-2000:]), extractor.name)
    probs = extractor.net.head(torch.from_numpy(reference.features).float()).softmax(-1).numpy()
    print(f"domain classifier ({extractor.name}): held-out accuracy "
          f"{(probs.argmax(1) == data.labels[-2000:]).mean():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"{'recipe':<15} {'steps':>6} {'train s':>8} " + " ".join(f"{c:>10}" for c in COLUMNS + ["confident"]))
    results = {"real": row("real", "", "", data.images[:args.samples], extractor, reference)}
    params = {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what train() picks for ours
    for recipe in recipes:
        if recipe == "diffusers":
            samples, params[recipe] = train_diffusers(args, data.images, evals, device)
        else:
            samples = {(recipe, step): value for step, value in train_ours(recipe, args, evals).items()}
            params[recipe] = parameters(UNet(NETWORK))
        for (name, step), (images, seconds) in samples.items():
            results[f"{name}/{step}"] = row(name, step, f"{seconds:.0f}", images, extractor, reference)
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    for other in ("ddpm", "diffusers", "diffusers+heun"):
        if "edm" in recipes and f"{other}/{evals[-1]}" in results:
            ratios = [f"{s}: {results[f'edm/{s}']['fd'] / results[f'{other}/{s}']['fd']:.2f}" for s in evals]
            print(f"FD ratio edm / {other} at equal steps: " + ", ".join(ratios))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "parameters": params,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
