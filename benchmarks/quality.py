"""Sample quality per training step: our default recipe (EDM) against DDPM's, side by side.

Trains both recipes on the built-in shapes data for the same steps, batch and network, samples each
with the same sampler and NFE, and measures the samples against 2000 held-out real images in the
features of a shapes classifier trained on the other 8000 (diffusely.metrics; comparable only within
this benchmark, never with published FIDs):
  FD          Fréchet distance (lower is better)
  KID         kernel distance, unbiased, mean over 100 subsets (lower is better)
  precision   share of samples on the real images' k-NN manifold: fidelity (higher is better)
  recall      share of real images on the samples' manifold: diversity (higher is better)
  density, coverage   the same two ideas, robust to outliers (Naeem et al. 2020)
  confident   share of samples the classifier puts in a class with probability > 0.9
The `real` row measures 1000 real training images the same way: the best a model can score at this N.

    python benchmarks/quality.py --steps 1500           # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from diffusely.checkpoint import load_run
from diffusely.config import RECIPES, DataConfig, RunConfig, TrainConfig
from diffusely.data import load_dataset
from diffusely.metrics import DomainFeatures, FeatureStats, fit_domain_features, quality_metrics
from diffusely.nets import UNetConfig
from diffusely.pipelines import generate

COLUMNS = ["fd", "kid", "precision", "recall", "density", "coverage"]


def train_and_sample(recipe: str, args) -> tuple[torch.Tensor, float]:
    """Train `recipe` on shapes for args.steps steps; return args.samples samples and the training seconds."""
    cfg = RunConfig(model=UNetConfig(channels=(32, 64, 64), blocks_per_level=1, attention_levels=(2,)),
                    diffusion=RECIPES[recipe](), data=DataConfig(source="shapes", image_size=32),
                    train=TrainConfig(steps=args.steps, batch_size=args.batch_size, checkpoint_every=args.steps,
                                      sample_every=args.steps))
    cfg.diffusion.sampler, cfg.diffusion.sample_steps = args.sampler, args.sample_steps
    from diffusely.train import train
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        train(cfg, run_dir, progress=False)
        seconds = time.perf_counter() - started
        run = load_run(run_dir)
        samples = torch.cat(list(generate(run, args.samples, seed=10_000, batch_size=250, progress=False)))
    return samples, seconds


def row(name: str, steps, seconds, images, extractor: DomainFeatures, reference: FeatureStats) -> dict:
    features = extractor(images)
    metrics = quality_metrics(reference, features)
    probs = extractor.net.head(torch.from_numpy(features).float()).softmax(-1).numpy()
    metrics["confident"] = float((probs.max(1) > 0.9).mean())
    cells = " ".join(f"{metrics[c]:>10.4g}" for c in COLUMNS + ["confident"])
    print(f"{name:<8} {steps:>6} {seconds:>8} {cells}", flush=True)
    return metrics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sampler", default="heun")
    p.add_argument("--sample-steps", type=int, default=18)
    p.add_argument("--recipes", default="edm,ddpm")
    args = p.parse_args()

    data = load_dataset("shapes", 32)
    # the classifier learns on the first 8000 images; the last 2000 are the held-out reference
    started = time.perf_counter()
    extractor = fit_domain_features(data.images[:8000], data.labels[:8000], len(data.class_names))
    reference = FeatureStats.of(extractor(data.images[-2000:]), extractor.name)
    probs = extractor.net.head(torch.from_numpy(reference.features).float()).softmax(-1).numpy()
    print(f"domain classifier ({extractor.name}): held-out accuracy "
          f"{(probs.argmax(1) == data.labels[-2000:]).mean():.3f} ({time.perf_counter() - started:.0f} s)")
    print(f"{'recipe':<8} {'steps':>6} {'train s':>8} " + " ".join(f"{c:>10}" for c in COLUMNS + ["confident"]))
    row("real", "", "", data.images[:args.samples], extractor, reference)

    results = {}
    for recipe in args.recipes.split(","):
        samples, seconds = train_and_sample(recipe, args)
        results[recipe] = row(recipe, args.steps, f"{seconds:.0f}", samples, extractor, reference)
    if {"edm", "ddpm"} <= set(results):
        print(f"FD ratio edm / ddpm at {args.steps} steps: {results['edm']['fd'] / results['ddpm']['fd']:.2f} "
              f"(KID ratio {results['edm']['kid'] / results['ddpm']['kid']:.2f})")


if __name__ == "__main__":
    main()
