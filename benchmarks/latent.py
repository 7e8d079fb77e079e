"""Latent against pixel diffusion at 64 x 64 on the built-in shapes, with the same U-Net.

Trains an autoencoder (factor 4, 4 latent channels: 64 x 64 x 3 images become 16 x 16 x 4 latents),
then two diffusion runs with the same U-Net config and batch, one on pixels and one on the latents,
each for the same training wall time (steps = seconds x the speed of a timed training step). Reports
  train steps/s     diffusion training steps per second (from each run's log)
  sample img/s      images per second from noise to pixels at the same sampler and NFE (the latent
                    run's time includes decoding)
  FD-domain         Fréchet distance of a shapes classifier's features, samples against held-out real
                    images (lower is better; comparable only within this benchmark)
  PSNR              the autoencoder's reconstructions of held-out images (different seed from training)
The bar (issue 8): latent sampling >= 4x as fast as pixel sampling, FD-domain no worse at equal
training time, PSNR >= 28 dB. Flip augmentation is off in both runs (shapes are mirror-symmetric in
distribution, and a latent run with flips encodes every image twice).

Everything lands in --out and a rerun skips what is done (the autoencoder, each diffusion run, the
domain features, the samples); results.json holds the figures.

    python benchmarks/latent.py --out bench/latent                          # ~20 minutes on 2 free CPU cores
    python benchmarks/latent.py --out bench/latent --picture docs/latent.png
    python benchmarks/latent.py --out /tmp/latent-tiny --tiny               # a few minutes: the script works
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusely.checkpoint import CHECKPOINT, build_denoiser, load_autoencoder, load_checkpoint, load_run
from diffusely.config import AutoencoderRunConfig, AutoencoderTrainConfig, DataConfig, RunConfig, TrainConfig
from diffusely.data import load_dataset, render_shapes, to_tensor, to_uint8, write_shapes_folder
from diffusely.loss import denoising_loss, lognormal_sigmas, weighting
from diffusely.metrics import (feature_statistics, fit_domain_features, frechet_distance, load_domain_features,
                               save_domain_features)
from diffusely.nets import UNet, UNetConfig
from diffusely.nets.autoencoder import AutoencoderConfig, psnr
from diffusely.nets.fast import bf16_is_fast
from diffusely.pipelines import generate
from diffusely.train import train
from diffusely.train.autoencoder import reconstruct, train_autoencoder
from diffusely.viz import save_strip

HELDOUT_SEED = 20_260_000  # held-out images: drawn with another seed than the training set (seed 0)
SAMPLE_SEED = 10_000


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Folder for the runs, caches and results.json.")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ae-steps", type=int, default=1500)
    p.add_argument("--ae-crop", type=int, default=32, help="Autoencoder training crops (0: whole images).")
    p.add_argument("--train-seconds", type=float, default=240, help="Training wall time of each diffusion run.")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--channels", default="32,64,64", help="U-Net channels per level (both runs).")
    p.add_argument("--sampler", default="heun")
    p.add_argument("--sample-steps", type=int, default=9, help="Steps of --sampler (heun 9: 17 NFE).")
    p.add_argument("--samples", type=int, default=256, help="Samples per run for FD-domain.")
    p.add_argument("--speed-samples", type=int, default=64, help="Samples per run for the sampling speed.")
    p.add_argument("--heldout", type=int, default=1000, help="Held-out real images (PSNR and FD reference).")
    p.add_argument("--domain-steps", type=int, default=300)
    p.add_argument("--picture", help="Also write originals, reconstructions and latent samples to this PNG.")
    p.add_argument("--tiny", action="store_true", help="Minutes, not tens of minutes: check that the script works.")
    args = p.parse_args()
    if args.tiny:
        args.image_size, args.ae_steps, args.ae_crop, args.train_seconds = 32, 30, 16, 8
        args.samples, args.speed_samples, args.heldout, args.domain_steps = 32, 8, 64, 20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "picture")}
    if results.setdefault("settings", settings) != settings:
        raise SystemExit(f"{out} holds a benchmark with other settings ({results['settings']}); use another --out")

    def record(**values):
        results.update(values)
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    size = args.image_size
    t = time.perf_counter()
    source = _tiny_data(out, size) if args.tiny else "shapes"
    data = load_dataset(source, size, classes=True)
    heldout = render_shapes(args.heldout, size=size, seed=HELDOUT_SEED).images
    print(f"data: {len(data)} training and {len(heldout)} held-out {size} x {size} images ({time.perf_counter() - t:.0f} s)")

    # 1. the autoencoder, and its reconstructions of held-out images
    ae_dir = out / "ae"
    ae_cfg = AutoencoderRunConfig(
        model=AutoencoderConfig(channels=(16, 32, 32) if args.tiny else AutoencoderConfig().channels),
        data=DataConfig(source=source, image_size=size, flip=True),
        train=AutoencoderTrainConfig(steps=args.ae_steps, batch_size=args.batch_size, crop_size=args.ae_crop,
                                     checkpoint_every=500, sample_every=500))
    ae_seconds = _train_once(ae_dir, args.ae_steps, lambda resume: train_autoencoder(ae_cfg, ae_dir, resume=resume))
    if ae_seconds is not None:
        record(autoencoder_seconds=round(ae_seconds, 1))
    ae = load_autoencoder(ae_dir).autoencoder
    x = to_tensor(heldout)
    x_hat = torch.cat([reconstruct(ae, x[i:i + 100]) for i in range(0, len(x), 100)])
    record(autoencoder_steps=args.ae_steps, psnr_db=round(psnr(x_hat, x).mean().item(), 2))
    print(f"autoencoder: {args.ae_steps} steps in {results.get('autoencoder_seconds', float('nan')):.0f} s, "
          f"held-out PSNR {results['psnr_db']:.2f} dB")

    # 2. two diffusion runs, the same U-Net and batch, for the same wall time
    unet = UNetConfig(channels=tuple(int(c) for c in args.channels.split(",")), blocks_per_level=1, attention_levels=(2,))
    configs = {
        "pixel": RunConfig(model=unet, data=DataConfig(source=source, image_size=size, flip=False)),
        "latent": RunConfig(model=UNetConfig(**unet.__dict__), data=DataConfig(source=source, image_size=size, flip=False)),
    }
    configs["latent"].use_autoencoder(ae_dir)  # unit-variance latents: sigma_data 1, P_mean moved to match
    for name, cfg in configs.items():
        cfg.diffusion.sampler, cfg.diffusion.sample_steps = args.sampler, args.sample_steps
        key = f"{name}_planned_steps"
        if key not in results:
            f = ae_cfg.model.factor
            shape = (ae_cfg.model.latent_channels, size // f, size // f) if name == "latent" else (3, size, size)
            rate = _training_step_rate(cfg, shape, args.batch_size)
            record(**{key: max(2, int(args.train_seconds * rate))})
        steps = results[key]
        # the same schedule for both: warm-up over a tenth of the run (at most the usual 200 steps), then decay
        cfg.train = TrainConfig(steps=steps, batch_size=args.batch_size, warmup_steps=max(1, min(200, steps // 10)),
                                checkpoint_every=steps, sample_every=steps)
        run_dir = out / name
        _train_once(run_dir, steps, lambda resume: train(cfg, run_dir, resume=resume))
        seconds = _log_seconds(run_dir)
        record(**{f"{name}_train_seconds": seconds, f"{name}_train_steps_per_second": round(steps / seconds, 2)})
        print(f"{name}: {steps} steps in {seconds:.0f} s ({steps / seconds:.2f} steps/s)")

    # 3. sampling speed, at the same sampler and NFE
    runs = {name: load_run(out / name) for name in configs}
    for name, run in runs.items():
        next(generate(run, 2, seed=0, progress=False))  # warm-up
        t = time.perf_counter()
        for _ in generate(run, args.speed_samples, seed=0, batch_size=64, progress=False):
            pass
        record(**{f"{name}_sample_images_per_second": round(args.speed_samples / (time.perf_counter() - t), 2)})
    nfe = 2 * args.sample_steps - 1 if args.sampler == "heun" else args.sample_steps
    speedup = results["latent_sample_images_per_second"] / results["pixel_sample_images_per_second"]
    record(sampler=args.sampler, sample_steps=args.sample_steps, nfe=nfe, sampling_speedup=round(speedup, 2))

    # 4. quality: domain-classifier features, samples and real images against held-out ones
    domain_file = out / "domain.safetensors"
    if domain_file.is_file():
        features = load_domain_features(domain_file)
    else:
        features = fit_domain_features(data.images, data.labels, len(data.class_names), steps=args.domain_steps,
                                       reference={"source": source, "size": size})
        save_domain_features(domain_file, features)
    reference = feature_statistics(features(heldout))
    fd = {"real": frechet_distance(*feature_statistics(features(data.images[:args.samples])), *reference)}
    for name, run in runs.items():
        cache = out / f"samples-{name}.npy"
        if not cache.is_file() or len(np.load(cache)) != args.samples:
            images = np.concatenate([to_uint8(b) for b in generate(run, args.samples, seed=SAMPLE_SEED, progress=False)])
            np.save(cache, images)
        fd[name] = frechet_distance(*feature_statistics(features(np.load(cache))), *reference)
    record(fd_domain={k: round(v, 3) for k, v in fd.items()}, samples=args.samples)

    print(f"\n{'':<8} {'train steps/s':>14} {'train s':>8} {'sample img/s':>13} {'FD-domain':>10}")
    print(f"{'real':<8} {'':>14} {'':>8} {'':>13} {fd['real']:>10.3f}")
    for name in configs:
        print(f"{name:<8} {results[f'{name}_train_steps_per_second']:>14.2f} {results[f'{name}_train_seconds']:>8.0f} "
              f"{results[f'{name}_sample_images_per_second']:>13.2f} {fd[name]:>10.3f}")
    print(f"\nsampling: latent {speedup:.1f}x as fast as pixel ({args.sampler}, {nfe} NFE; bar: >= 4x)")
    print(f"quality at equal training time: FD-domain latent {fd['latent']:.3f} vs pixel {fd['pixel']:.3f} (bar: no worse)")
    print(f"autoencoder: held-out PSNR {results['psnr_db']:.2f} dB (bar: >= 28 dB)")
    print(f"results: {results_path}")

    if args.picture:
        samples = torch.from_numpy(np.load(out / "samples-latent.npy")[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
        save_strip([x[:8], x_hat[:8], samples], args.picture,
                   row_labels=["held-out image", "reconstruction", "latent diffusion sample"], scale=max(1, 128 // size))
        print(f"picture: {args.picture}")


def _tiny_data(out: Path, size: int) -> str:
    folder = out / "tiny-images"
    if not folder.is_dir():
        write_shapes_folder(folder, 256, size=size, seed=0)
    return str(folder)


def _train_once(run_dir: Path, steps: int, run) -> float | None:
    """Train (or finish) a run unless its checkpoint is at `steps` already; its wall time, or None if skipped."""
    done = load_checkpoint(run_dir).step if (run_dir / CHECKPOINT).is_file() else 0
    if done >= steps:
        return None
    t = time.perf_counter()
    run(done > 0)
    return time.perf_counter() - t


def _log_seconds(run_dir: Path) -> float:
    """Training wall time from the run's log.csv (the loop's clock: steps, checkpoints, sample grids)."""
    last = (run_dir / "log.csv").read_text().strip().splitlines()[-1].split(",")
    return float(last[-1])


def _training_step_rate(config: RunConfig, shape: tuple[int, ...], batch_size: int, steps: int = 6) -> float:
    """Training steps per second of the run's U-Net on random data of `shape`, as the loop takes them
    (bf16 autocast where it pays, AdamW, gradient clipping), from `steps` timed steps after one warm-up."""
    cfg = UNetConfig(**{**config.model.__dict__, "in_channels": shape[0], "out_channels": shape[0]})
    net = UNet(cfg)
    denoiser = build_denoiser(config, net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    weight = weighting(config.diffusion.weighting)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_is_fast(torch.device("cpu")))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        x0 = torch.randn(batch_size, *shape)
        sigma = lognormal_sigmas(batch_size)
        with autocast:
            loss = denoising_loss(denoiser, x0, sigma, weight(sigma, config.diffusion.sigma_data)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
    return 1.0 / float(np.median(times[1:]))


if __name__ == "__main__":
    main()
