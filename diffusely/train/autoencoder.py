"""Training an autoencoder for latent diffusion, top to bottom: data, network, AdamW, an optional patch
discriminator, checkpoints, reconstruction pictures.

The same run directory, log, progress bar, atomic checkpoints and exact resume as the diffusion loop
(train/loop.py; the shared helpers are in train/common.py): the batch, flips and posterior noise of every step are
drawn from per-sample generators seeded by (seed, position in the run).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from .. import viz
from .._util import randn_like
from ..checkpoint import CHECKPOINT, RunError, load_state, save_state
from ..config import AutoencoderRunConfig
from ..data import DataError, load_dataset, to_tensor
from ..nets.autoencoder import (Autoencoder, PatchDiscriminator, adaptive_gan_weight, frequency_loss, hinge_d_loss,
                                kl_divergence, l1_loss, psnr)
from .common import (LOG, Batches, Dist, adamw, append_log, autocast, load_optimizer, lr_at, run_config, seed_from,
                     start_log)

LOG_FIELDS = ["step", "loss", "l1", "psnr", "kl", "disc_loss", "lr", "images_per_second", "seconds"]
RECONSTRUCTIONS = "reconstructions"
SHOWN = 8  # images in each reconstruction picture


def train_autoencoder(config: AutoencoderRunConfig, run_dir: str | Path, *, resume: bool = False,
                      progress: bool = True, on_checkpoint: Optional[Callable[[int], None]] = None) -> dict:
    """Train `config` into `run_dir`; with resume=True continue the run saved there. Returns final stats."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("train-autoencoder runs in one process; start it without torchrun")
    run_dir = Path(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = run_config(config, run_dir, resume)
    tc, mc = config.train, config.model
    data = load_dataset(config.data.source, config.data.image_size, config.data.channels, seed=tc.seed,
                        max_shapes=config.data.max_shapes)
    size = tc.crop_size or config.data.image_size  # what the networks see in training
    for name, value in (("image size", config.data.image_size), ("crop size", size)):
        if value % mc.factor:
            raise DataError(f"{name} {value} is not divisible by the autoencoder's factor {mc.factor}")
    if size > config.data.image_size:
        raise DataError(f"crop size {size} exceeds the image size {config.data.image_size}")
    mc.in_channels = data.images.shape[-1]

    torch.manual_seed(tc.seed)  # the initial weights
    ae = Autoencoder(mc).to(device)
    modules, optimizers = {"model": ae}, {"optim": adamw(ae, tc, tc.lr, device)}
    disc = None
    if tc.disc_weight > 0:
        disc = PatchDiscriminator(mc.dims, mc.in_channels, tc.disc_channels, tc.disc_layers).to(device)
        if size < disc.min_size():
            raise DataError(f"a {tc.disc_layers}-layer discriminator needs images (or crops) of at least "
                            f"{disc.min_size()} pixels, got {size}; use fewer disc_layers")
        modules["disc"], optimizers["disc_optim"] = disc, adamw(disc, tc, tc.lr, device)
    start = 0
    if resume and (run_dir / CHECKPOINT).exists():
        state = load_state(run_dir / CHECKPOINT, device)
        try:
            for name, module in modules.items():
                module.load_state_dict(state.modules[name])
            for name, optimizer in optimizers.items():
                load_optimizer(optimizer, state.optimizers[name])
        except (RuntimeError, ValueError, KeyError) as e:
            raise RunError(f"the checkpoint in {run_dir} does not fit the autoencoder that config.json describes "
                           f"(was config.json edited?): {str(e).splitlines()[0]}") from None
        start = state.step
    start_log(run_dir, config, start, LOG_FIELDS)

    images = torch.from_numpy(data.images).to(device)  # uint8, NHWC, decoded once
    shown = to_tensor(images[:SHOWN])
    batches = Batches(len(images), tc.batch_size, tc.seed, Dist())
    mixed_precision = autocast(tc.precision, device)

    bar = tqdm(total=tc.steps, initial=start, desc="training autoencoder", unit="step", disable=not progress,
               dynamic_ncols=True)
    rows: list[dict[str, float]] = []
    t_last, t0 = time.perf_counter(), time.perf_counter()
    last: dict[str, float] = {}
    for step in range(start, tc.steps):
        torch.manual_seed(seed_from(tc.seed, step, 0, 1))
        positions = batches.positions(step)
        gens = batches.generators(positions, device)
        x = to_tensor(images[batches.indices(positions).to(device)])
        if config.data.flip:
            flip = torch.cat([torch.rand(1, generator=g, device=device) for g in gens]) < 0.5
            x = torch.where(flip.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)
        if tc.crop_size:
            x = random_crops(x, tc.crop_size, gens)
        gan = disc is not None and step >= tc.disc_start  # LDM switches the discriminator on after a warm-up
        lr = lr_at(step, tc)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr

        ae.train()
        with mixed_precision:
            mean, logvar = ae.encode(x)
            z = mean + (0.5 * logvar).exp() * randn_like(mean, gens)  # the reparameterisation trick
            x_hat = ae.decode(z)
            l1 = l1_loss(x_hat, x)
            rec = (l1 + tc.frequency_weight * frequency_loss(x_hat, x)).mean()
            kl = kl_divergence(mean, logvar).mean() / x[0].numel()
            loss = rec + tc.kl_weight * kl
            if gan:
                disc.requires_grad_(False)
                g_loss = -disc(x_hat).float().mean()
                loss = loss + tc.disc_weight * adaptive_gan_weight(rec, g_loss, ae.decoder.last_layer) * g_loss
        _step(optimizers["optim"], loss, ae, tc.grad_clip)
        d_loss = torch.zeros(())
        if gan:
            disc.requires_grad_(True)
            with mixed_precision:
                d_loss = hinge_d_loss(disc(x).float(), disc(x_hat.detach()).float()).mean()
            _step(optimizers["disc_optim"], d_loss, disc, tc.grad_clip)

        rows.append({"loss": loss.item(), "l1": l1.mean().item(), "psnr": psnr(x_hat.detach(), x).mean().item(),
                     "kl": kl.item(), "disc_loss": d_loss.item()})
        done = step + 1
        bar.update(1)
        at_checkpoint = done % tc.checkpoint_every == 0 or done == tc.steps
        if done % tc.log_every == 0 or at_checkpoint:
            last = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
            now = time.perf_counter()
            rate = len(rows) * tc.batch_size / (now - t_last)
            bar.set_postfix(loss=f"{last['loss']:.4f}", psnr=f"{last['psnr']:.1f}", img_s=f"{rate:.0f}")
            append_log(run_dir, LOG_FIELDS, {"step": done, **{k: f"{v:.6g}" for k, v in last.items()}, "lr": f"{lr:.3g}",
                                             "images_per_second": f"{rate:.1f}", "seconds": f"{now - t0:.1f}"})
            rows, t_last = [], now
        if at_checkpoint:
            save_state(run_dir / CHECKPOINT, step=done, modules=modules, optimizers=optimizers)
            try:
                viz.plot_loss(run_dir / LOG, run_dir / "loss.png")
            except ValueError:
                pass  # nothing plottable: log.csv shows it, the checkpoint matters more
            if on_checkpoint is not None:
                on_checkpoint(done)
        if done % tc.sample_every == 0 or done == tc.steps:
            save_reconstructions(ae, shown, run_dir / RECONSTRUCTIONS / f"step-{done:07d}.png")
    bar.close()
    return {"step": tc.steps, "run_dir": str(run_dir), "images": len(images), "factor": mc.factor,
            "latent_channels": mc.latent_channels, **last}


def random_crops(x: torch.Tensor, size: int, generators: list[torch.Generator]) -> torch.Tensor:
    """A size x size (x ...) window of each image of x (B, C, *spatial), its corner drawn from the image's generator."""
    crops = []
    for image, g in zip(x, generators):
        corner = [int(torch.randint(0, s - size + 1, (1,), generator=g, device=g.device)) for s in image.shape[1:]]
        crops.append(image[(slice(None), *[slice(c, c + size) for c in corner])])
    return torch.stack(crops)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: torch.nn.Module, grad_clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()


@torch.no_grad()
def reconstruct(ae: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Decode the posterior means of images x (B, C, *spatial) in [-1, 1]: what latent diffusion's decoder sees."""
    was_training = ae.training
    x_hat = ae.eval().decode(ae.encode(x)[0]).clamp(-1, 1)
    ae.train(was_training)
    return x_hat


def save_reconstructions(ae: Autoencoder, x: torch.Tensor, path: Path) -> None:
    """Originals above their reconstructions, with each image's PSNR, as one PNG."""
    x_hat = reconstruct(ae, x)
    size = x.shape[-1]
    viz.save_strip([x.cpu(), x_hat.cpu()], path, labels=[f"{p:.1f} dB" for p in psnr(x_hat, x).tolist()],
                   row_labels=["original", "reconstruction"], scale=max(1, 128 // size))
