"""Sample quality per training step: our default recipe (EDM) against DDPM's, side by side.

Trains both recipes on the built-in shapes data for the same steps, batch and network, samples each
with the same sampler and NFE, and reports two figures against held-out real images:
  FD-domain   Fréchet distance of a shapes classifier's features (lower is better; comparable only
              within this benchmark, not with published FIDs)
  confident   fraction of samples the classifier assigns to a class with probability > 0.9
              (a recognisable shape), against the same figure for real images

    python benchmarks/quality.py --steps 1500           # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from diffusely.checkpoint import load_run
from diffusely.config import RECIPES, DataConfig, RunConfig, TrainConfig
from diffusely.data import load_dataset, to_tensor
from diffusely.metrics import classifier_features, feature_statistics, frechet_distance, train_domain_classifier
from diffusely.nets import UNetConfig
from diffusely.pipelines import generate
from diffusely.train import train


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
    real = to_tensor(data.images)
    labels = torch.from_numpy(data.labels)
    # the classifier learns on the first 8000 images; the last 2000 are the held-out reference
    t = time.perf_counter()
    clf = train_domain_classifier(real[:8000], labels[:8000], len(data.class_names))
    ref_feats, ref_probs = classifier_features(clf, real[-2000:])
    acc = (ref_probs.argmax(1) == data.labels[-2000:]).mean()
    print(f"domain classifier: held-out accuracy {acc:.3f} ({time.perf_counter() - t:.0f} s)")
    ref_stats = feature_statistics(ref_feats)
    real_feats, real_probs = classifier_features(clf, real[:args.samples])
    print(f"{'recipe':<8} {'steps':>6} {'train s':>8} {'FD-domain':>10} {'confident':>10}")
    print(f"{'real':<8} {'':>6} {'':>8} {frechet_distance(*feature_statistics(real_feats), *ref_stats):>10.3f} "
          f"{(real_probs.max(1) > 0.9).mean():>10.3f}")

    for recipe in args.recipes.split(","):
        cfg = RunConfig(model=UNetConfig(channels=(32, 64, 64), blocks_per_level=1, attention_levels=(2,)),
                        diffusion=RECIPES[recipe](), data=DataConfig(source="shapes", image_size=32),
                        train=TrainConfig(steps=args.steps, batch_size=args.batch_size, checkpoint_every=args.steps,
                                          sample_every=args.steps))
        cfg.diffusion.sampler, cfg.diffusion.sample_steps = args.sampler, args.sample_steps
        with tempfile.TemporaryDirectory() as run_dir:
            t = time.perf_counter()
            train(cfg, run_dir, progress=False)
            seconds = time.perf_counter() - t
            run = load_run(run_dir)
            samples = torch.cat(list(generate(run, args.samples, seed=10_000, batch_size=250, progress=False)))
        feats, probs = classifier_features(clf, samples)
        fd = frechet_distance(*feature_statistics(feats), *ref_stats)
        print(f"{recipe:<8} {args.steps:>6} {seconds:>8.0f} {fd:>10.3f} {(probs.max(1) > 0.9).mean():>10.3f}", flush=True)


if __name__ == "__main__":
    main()
