"""Training an autoencoder for latent diffusion, top to bottom: data, network, AdamW, an optional patch
discriminator, checkpoints, reconstruction pictures.

The same run directory, log, progress bar, atomic checkpoints and exact resume as the diffusion loop
(train/loop.py; the shared helpers are in train/common.py): the batch, flips and posterior noise of every step are
drawn from per-sample generators seeded by (seed, position in the run).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .. import viz
from .._util import randn_like
from ..checkpoint import RunError, save_run_state
from ..config import AutoencoderRunConfig
from ..data import Dataset, DataError, apply_flips, draw_flips, load_dataset, random_crops, to_tensor
from ..nets.autoencoder import (Autoencoder, PatchDiscriminator, adaptive_gan_weight, frequency_loss, hinge_d_loss,
                                kl_divergence, l1_loss, psnr)
from .common import (Batches, Dist, Tracker, adamw, autocast, check_room, locked, lr_at, optimize, resume_state,
                     run_config, seed_from, set_lr, start_log)

LOG_FIELDS = ["step", "loss", "l1", "psnr", "kl", "disc_loss", "lr", "images_per_second", "seconds"]
RECONSTRUCTIONS = "reconstructions"
SHOWN = 8  # images in each reconstruction picture


def train_autoencoder(config: AutoencoderRunConfig, run_dir: str | Path, *, resume: bool = False,
                      progress: bool = True, on_checkpoint: Optional[Callable[[int], None]] = None,
                      should_stop: Optional[Callable[[], bool]] = None, data: Optional[Dataset] = None) -> dict:
    """Train `config` into `run_dir`; with resume=True continue the run saved there. Trains on
    config.data.source, or on `data`: images (N, H, W, C) uint8 at the image size (a caller resuming gives the same
    again). Returns final stats. The run directory is locked for the whole job; a non-finite loss stops the run with
    a RunError, its last good checkpoint kept. `should_stop()`, asked after each step (a UI's stop button), ends it
    early at a checkpoint (the returned "step" says where)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("train-autoencoder runs in one process; start it without torchrun")
    run_dir, d = Path(run_dir), Dist()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with locked(run_dir, "train-autoencoder", d):
        config = run_config(config, run_dir, resume)
        tc, mc = config.train, config.model
        images = load_images(config, device, data)
        torch.manual_seed(tc.seed)  # the initial weights
        ae = Autoencoder(mc).to(device)
        modules, optimizers = {"model": ae}, {"optim": adamw(ae, tc, tc.lr, device)}
        disc = add_discriminator(config, modules, optimizers, device)
        start = resume_state(run_dir, modules, optimizers, device, tc.steps, "autoencoder") if resume else 0
        check_room(run_dir, modules, optimizers, tc.keep)
        start_log(run_dir, config, start, LOG_FIELDS)
        shown = to_tensor(images[:SHOWN])
        batches = Batches(len(images), tc.batch_size, tc.seed, d)
        mixed_precision = autocast(tc.precision, device, mc.dims)
        save = lambda step: save_run_state(run_dir, step=step, modules=modules, optimizers=optimizers,  # noqa: E731
                                           keep=tc.keep)
        tracker = Tracker(run_dir, LOG_FIELDS, tc, start, d, save, desc="training autoencoder", progress=progress,
                          shown=("loss", "psnr"), on_checkpoint=on_checkpoint, should_stop=should_stop)
        for step in range(start, tc.steps):
            x, gens = draw_batch(images, batches, step, config)
            lr = lr_at(step, tc)
            set_lr(optimizers.values(), lr)
            gan = disc is not None and step >= tc.disc_start  # LDM switches the discriminator on after a warm-up
            values = autoencoder_step(ae, disc if gan else None, optimizers, x, gens, tc, mixed_precision)
            done = tracker.after(step, values, lr)
            if done % tc.sample_every == 0 or done == tc.steps:
                save_reconstructions(ae, shown, run_dir / RECONSTRUCTIONS / f"step-{done:07d}.png")
            if tracker.stopped:
                break
        last = tracker.close()
    return {"step": done if tracker.stopped else tc.steps, "run_dir": str(run_dir), "images": len(images),
            "factor": mc.factor, "latent_channels": mc.latent_channels, **last}


def load_images(config: AutoencoderRunConfig, device, data: Optional[Dataset] = None) -> torch.Tensor:
    """The run's training images (`data`'s, or loaded from config.data.source) on the device, uint8 channels last,
    decoded once; fits model.in_channels to them."""
    tc, mc = config.train, config.model
    if data is None:
        data = load_dataset(config.data.source, config.data.image_size, config.data.channels, seed=tc.seed,
                            max_shapes=config.data.max_shapes, outside=config.data.outside)
    elif (data.images.ndim != 4 or data.images.shape[1:3] != (config.data.image_size,) * 2
          or data.images.dtype != np.uint8):
        size = config.data.image_size
        raise DataError(f"an autoencoder trains on uint8 images (N, {size}, {size}, C) at its image size, got samples "
                        f"of shape {data.images.shape} ({data.images.dtype})")
    size = tc.crop_size or config.data.image_size  # what the networks see in training
    for name, value in (("image size", config.data.image_size), ("crop size", size)):
        if value % mc.factor:
            raise DataError(f"{name} {value} is not divisible by the autoencoder's factor {mc.factor}")
    if size > config.data.image_size:
        raise DataError(f"crop size {size} exceeds the image size {config.data.image_size}")
    mc.in_channels = data.images.shape[-1]
    return torch.from_numpy(data.images).to(device)


def add_discriminator(config: AutoencoderRunConfig, modules: dict, optimizers: dict,
                      device) -> Optional[PatchDiscriminator]:
    """With train.disc_weight > 0, a patch discriminator and its AdamW, added to `modules` and `optimizers`."""
    tc, mc = config.train, config.model
    if tc.disc_weight <= 0:
        return None
    disc = PatchDiscriminator(mc.dims, mc.in_channels, tc.disc_channels, tc.disc_layers).to(device)
    size = tc.crop_size or config.data.image_size
    if size < disc.min_size():
        raise DataError(f"a {tc.disc_layers}-layer discriminator needs images (or crops) of at least "
                        f"{disc.min_size()} pixels, got {size}; use fewer disc_layers")
    modules["disc"], optimizers["disc_optim"] = disc, adamw(disc, tc, tc.lr, device)
    return disc


def draw_batch(images: torch.Tensor, batches: Batches, step: int,
               config: AutoencoderRunConfig) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Step `step`'s images (B, C, *spatial), flipped and cropped as each one's generator draws, and the
    generators (which draw the posterior noise next)."""
    tc = config.train
    torch.manual_seed(seed_from(tc.seed, step, 0, 1))  # the network's dropout
    positions = batches.positions(step)
    gens = batches.generators(positions, images.device)
    x = to_tensor(images[batches.indices(positions).to(images.device)])
    if config.data.flip:
        x = apply_flips(x, draw_flips(gens))
    if tc.crop_size:
        x = random_crops(x, tc.crop_size, gens)
    return x, gens


def autoencoder_step(ae: Autoencoder, disc: Optional[PatchDiscriminator], optimizers: dict, x: torch.Tensor,
                     generators: list[torch.Generator], tc, mixed_precision) -> dict[str, float]:
    """One AdamW step of the autoencoder on images x (B, C, *spatial) (and of the discriminator, when given): L1 +
    frequency L1 + KL, plus the adversarial term; returns the step's values for the log."""
    ae.train()
    with mixed_precision:
        mean, logvar = ae.encode(x)
        z = mean + (0.5 * logvar).exp() * randn_like(mean, generators)  # the reparameterisation trick
        x_hat = ae.decode(z)
        l1 = l1_loss(x_hat, x)
        rec = (l1 + tc.frequency_weight * frequency_loss(x_hat, x)).mean()
        kl = kl_divergence(mean, logvar).mean() / x[0].numel()
        loss = rec + tc.kl_weight * kl
        if disc is not None:
            disc.requires_grad_(False)
            g_loss = -disc(x_hat).float().mean()
            loss = loss + tc.disc_weight * adaptive_gan_weight(rec, g_loss, ae.decoder.last_layer) * g_loss
    optimize(optimizers["optim"], loss, ae, tc.grad_clip)
    d_loss = torch.zeros(())
    if disc is not None:
        disc.requires_grad_(True)
        with mixed_precision:
            d_loss = hinge_d_loss(disc(x).float(), disc(x_hat.detach()).float()).mean()
        optimize(optimizers["disc_optim"], d_loss, disc, tc.grad_clip)
    return {"loss": loss.item(), "l1": l1.mean().item(), "psnr": psnr(x_hat.detach(), x).mean().item(),
            "kl": kl.item(), "disc_loss": d_loss.item()}


@torch.no_grad()
def reconstruct(ae: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Decode the posterior means of images x (B, C, *spatial) in [-1, 1]: what latent diffusion's decoder sees."""
    was_training = ae.training
    x_hat = ae.eval().decode(ae.encode(x)[0]).clamp(-1, 1)
    ae.train(was_training)
    return x_hat


def save_reconstructions(ae: Autoencoder, x: torch.Tensor, path: Path) -> None:
    """Originals above their reconstructions, with each image's PSNR, as one PNG (of 2-D data only)."""
    if x.ndim != 4:
        return
    x_hat = reconstruct(ae, x)
    size = x.shape[-1]
    viz.save_strip([x.cpu(), x_hat.cpu()], path, labels=[f"{p:.1f} dB" for p in psnr(x_hat, x).tolist()],
                   row_labels=["original", "reconstruction"], scale=max(1, 128 // size))
