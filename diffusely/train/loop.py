"""The training loop, top to bottom: data, model, AdamW, EMA, checkpoints, sample grids, DDP.

Every step draws its batch, sigmas and noise from generators seeded by (seed, step, rank), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have (EDM2's approach).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from .. import viz
from .._util import randn, randn_like
from ..checkpoint import (CHECKPOINT, RunError, autoencoder_dir, build_denoiser, build_model, load_checkpoint,
                          read_config, save_checkpoint)
from ..config import AutoencoderRunConfig, RunConfig
from .._files import atomic_write_text
from ..data import DataError, Dataset, load_dataset, to_tensor
from ..data.shapes import caption_variants
from ..layout import box_direction, flip_boxes, layout_channels, pack_boxes, render_run_layout
from ..loss import denoising_loss, discrete_sigmas, lognormal_sigmas, weighting
from ..nets import UNet
from ..samplers import sample
from ..text import build_text_encoder
from .common import (LOG, Batches, adamw, append_log, autocast, load_optimizer, lr_at, run_config, seed_from,
                     seeded_generator, setup_distributed, start_log)
from .ema import ema_beta, make_ema, update_ema
from .latents import prepare_latents

LOG_FIELDS = ["step", "loss", "lr", "images_per_second", "seconds"]
LABEL_DROPOUT = 0.1  # fraction of labels replaced by the null label, so one model also samples unconditionally
CAPTION_DROPOUT = 0.1  # fraction of captions replaced by the null caption, for classifier-free guidance
LAYOUT_DROPOUT = 0.1  # fraction of layouts replaced by the null layout (see diffusely.layout)
LAYOUTS = "layouts.json"  # a layout run's training boxes, from which `diffusely synth` draws new layouts


def _train_sigmas(config: RunConfig, schedule, batch: int, generator, device) -> torch.Tensor:
    d = config.diffusion
    if d.train_sigmas == "lognormal":
        return lognormal_sigmas(batch, P_mean=d.P_mean, P_std=d.P_std, generator=generator, device=device)
    return discrete_sigmas(batch, schedule, generator=generator, device=device)


def check_image_size(config: RunConfig) -> None:
    ae_factor = config.latent.factor if config.latent else 1
    f = config.model.downsample_factor * ae_factor
    if config.data.image_size % f:
        lo, hi = config.data.image_size // f * f, (config.data.image_size // f + 1) * f
        on_latents = f" on latents {ae_factor} times smaller than the images" if ae_factor > 1 else ""
        patch = f" and patch size {config.model.patch_size}" if config.model.patch_size > 1 else ""
        raise DataError(f"image size {config.data.image_size} is not divisible by {f}, which a U-Net with "
                        f"{len(config.model.channels)} levels{patch}{on_latents} needs; use --image-size {lo or hi} or {hi}")


def prepare_data(config: RunConfig) -> Dataset:
    """Load the run's data and fit the model config to it (input channels, number of classes)."""
    if config.latent is not None:  # the U-Net sees the autoencoder's latents
        ae = read_config(autoencoder_dir(config), AutoencoderRunConfig).model
        config.latent.factor, config.latent.latent_channels = ae.factor, ae.latent_channels
    check_image_size(config)
    data = load_dataset(config.data.source, config.data.image_size, config.data.channels, config.data.classes,
                        seed=config.train.seed, captions=config.text.enabled, max_shapes=config.data.max_shapes,
                        directions=config.data.directions if config.data.layout else "labels")  # only layouts use them
    config.model.in_channels = config.model.out_channels = (
        config.latent.latent_channels if config.latent else data.images.shape[-1])
    if config.data.classes:
        if data.labels is None:
            raise DataError(f"{config.data.source} has no class labels; put images in one subfolder per class")
        config.model.num_classes = len(data.class_names)
        config.data.class_names = tuple(data.class_names)
    if config.data.layout:
        if data.boxes is None:
            raise DataError(f"{config.data.source} has no boxes to condition on; a layout run needs a YOLO folder "
                            f"(with data.yaml), a COCO .json, or the built-in defects or shapes")
        k = len(data.class_names)
        if not config.model.layout_channels:  # a new run: the line channel when some box has a direction
            config.model.layout_channels = layout_channels(k, lines=any(box_direction(b) for image in data.boxes for b in image))
        elif config.model.layout_channels not in (layout_channels(k, False), layout_channels(k, True)):
            raise DataError(f"this run reads {config.model.layout_channels} layout channels, which does not fit the "
                            f"{k} classes of {config.data.source}: train a new run on it")
        config.data.class_names = tuple(data.class_names)
    if config.data.paraphrases and not (config.text.enabled and config.data.source == "shapes"):
        raise DataError("paraphrases are drawn for the captions of the built-in shapes (a text run on shapes); "
                        f"{config.data.source} {'has its own captions' if config.text.enabled else 'is not a text run'}")
    if config.text.enabled:
        if data.captions is None:
            raise DataError(f"{config.data.source} has no captions; put a .txt beside each image or a metadata.jsonl")
        config.model.context_dim = config.text.width
    return data


@dataclass
class Captions:
    """Every distinct training caption encoded once: `table` (U + 1, L[, D]) and `mask` (U + 1, L), the last
    row the null caption; `index` (N, V) holds the rows of each image's V captions (its own, then its
    paraphrases; V = 1 without them)."""

    table: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor

    @property
    def null(self) -> int:
        return len(self.table) - 1

    def cond(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        text = self.table[rows]
        return {"text": text.float() if text.is_floating_point() else text, "text_mask": self.mask[rows]}


def encode_captions(config: RunConfig, captions: list[str], run_dir: Path, device, *, save: bool, resume: bool,
                    progress: bool) -> Captions:
    """Build (or, resuming, reload) the run's text encoder and encode each distinct caption once, so a frozen
    encoder never runs inside the training loop. With data.paraphrases, each image's paraphrases too."""
    variants = (caption_variants(captions, config.data.paraphrases, config.train.seed) if config.data.paraphrases
                else [[c] for c in captions])
    every = [c for image in variants for c in image]
    unique = list(dict.fromkeys(every))
    encoder = build_text_encoder(config.text, every, run_dir, device, save=save, reuse=resume)
    row = {c: i for i, c in enumerate(unique)}
    texts = unique + [None]
    table, mask = encoder.encode(texts, progress=progress) if config.text.pretrained else encoder.encode(texts)
    index = torch.tensor([[row[c] for c in image] for image in variants], dtype=torch.long)
    return Captions(table.to(device), mask.to(device), index.to(device))


def sample_grid(denoiser, config: RunConfig, path: Path, n: int = 16, seed: int = 0, text: Optional[dict] = None,
                decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                boxes: Optional[torch.Tensor] = None) -> None:
    """A grid of `n` samples from fixed noise, so grids from different steps compare like for like.
    Class runs cycle through the classes; text runs take `text`, the encoded captions of n images; layout
    runs take `boxes` (n, M, 6), the layouts of n images. `decode` turns a latent run's samples into images."""
    device = next(denoiser.parameters()).device
    g = seeded_generator("cpu", seed, 12345)
    noise = randn((n, *config.sample_shape), g, device)
    cond = {}
    if config.model.num_classes:
        cond = {"class_labels": torch.arange(n, device=device) % config.model.num_classes}
    if text is not None:
        cond.update(text)
    if boxes is not None:
        cond["layout"] = render_run_layout(boxes.to(device), config, config.sample_shape[1:])
    d = config.diffusion
    with torch.inference_mode():
        x = sample(denoiser, noise, method=d.sampler, steps=d.sample_steps, sigma_min=d.sigma_min,
                   sigma_max=d.sigma_max, generator=g, cond=cond)
        if decode is not None:
            x = decode(x)
    viz.save_grid(x.clamp(-1, 1).cpu(), path, nrow=int(math.ceil(math.sqrt(n))))


def save_layouts(run_dir: Path, config: RunConfig, boxes: list[list[tuple]]) -> None:
    """layouts.json: the class names, the image size and every training image's boxes in pixels, each
    [class, x0, y0, x1, y1, direction]."""
    layouts = [[[int(b[0]), *(round(float(v), 2) for v in b[1:5]), box_direction(b)] for b in image] for image in boxes]
    atomic_write_text(run_dir / LAYOUTS, json.dumps({"class_names": list(config.data.class_names),
                                                     "image_size": config.data.image_size, "layouts": layouts}))


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          on_checkpoint: Optional[Callable[[int], None]] = None) -> dict:
    """Train `config` into `run_dir`; with resume=True continue the run saved there. Returns final stats."""
    run_dir = Path(run_dir)
    d = setup_distributed()
    device = torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    config = run_config(config, run_dir, resume)
    if not resume:  # derived from the data (a config taken from another run may hold that run's)
        config.model.layout_channels = 0
    data = prepare_data(config)
    captions = None
    if config.text.enabled:  # before the model: the encoder fixes the vocabulary and token counts in the config
        captions = encode_captions(config, data.captions, run_dir, device, save=d.main, resume=resume,
                                   progress=progress and d.main)
    latents = None
    if config.latent is not None:  # before config.json is written: encoding measures the latents' scale
        latents = prepare_latents(config, data.images, run_dir, device, resume=resume, save=d.main,
                                  progress=progress and d.main)
    tc = config.train
    torch.manual_seed(tc.seed)  # the initial weights
    model = build_model(config).to(device)
    ema = make_ema(model)
    optimizer = adamw(model, tc, tc.lr, device)
    start = 0
    if resume and (run_dir / CHECKPOINT).exists():
        ckpt = load_checkpoint(run_dir, device)
        try:
            model.load_state_dict(ckpt.model)
            ema.load_state_dict(ckpt.ema)
            load_optimizer(optimizer, ckpt.optimizer)
        except (RuntimeError, ValueError, KeyError) as e:
            raise RunError(f"the checkpoint in {run_dir} does not fit the model that config.json describes "
                           f"(was config.json edited?): {str(e).splitlines()[0]}") from None
        start = ckpt.step
    if d.main:
        start_log(run_dir, config, start, LOG_FIELDS)
        if config.data.layout:
            save_layouts(run_dir, config, data.boxes)

    net = model
    for module in model.modules():  # the U-Net itself, also inside a text model's wrapper
        if isinstance(module, UNet):
            module.checkpointing = tc.activation_checkpointing
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:  # the training forward only: checkpoints, the EMA and sampling use the plain module
        net = torch.compile(net)
    denoiser = build_denoiser(config, net)
    ema_denoiser = build_denoiser(config, ema)
    weight_fn = weighting(config.diffusion.weighting)
    schedule = config.diffusion.discrete_schedule()
    # uint8, NHWC, decoded once (a latent run trains on its latents instead)
    images = torch.from_numpy(data.images).to(device) if latents is None else None
    labels = torch.from_numpy(data.labels).to(device) if config.model.num_classes else None
    boxes = pack_boxes(data.boxes).to(device) if config.data.layout else None
    batches = Batches(len(data.images), tc.batch_size, tc.seed, d)
    mixed_precision = autocast(tc.precision, device)

    bar = tqdm(total=tc.steps, initial=start, desc="training", unit="step", disable=not (progress and d.main),
               dynamic_ncols=True)
    losses: list[float] = []
    t_last, t0 = time.perf_counter(), time.perf_counter()
    last_loss = float("nan")
    model.train()
    for step in range(start, tc.steps):
        torch.manual_seed(seed_from(tc.seed, step, d.rank, 1))  # dropout
        positions = batches.positions(step)
        idx = batches.indices(positions).to(device)
        gens = batches.generators(positions, device)
        per_sample = lambda draw: torch.cat([draw(g) for g in gens])  # noqa: E731
        x0 = to_tensor(images[idx]) if latents is None else latents.images[idx]
        if config.data.flip:
            flip = per_sample(lambda g: torch.rand(1, generator=g, device=device)) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1) if latents is None else latents.flipped[idx], x0)
        sigma = per_sample(lambda g: _train_sigmas(config, schedule, 1, g, device))
        cond = {}
        if labels is not None:
            drop = per_sample(lambda g: torch.rand(1, generator=g, device=device)) < LABEL_DROPOUT
            cond["class_labels"] = torch.where(drop, config.model.num_classes, labels[idx])
        if captions is not None:
            drop = per_sample(lambda g: torch.rand(1, generator=g, device=device)) < CAPTION_DROPOUT
            rows = captions.index[idx, 0]
            if captions.index.shape[1] > 1:  # a caption or one of its paraphrases
                pick = per_sample(lambda g: torch.randint(captions.index.shape[1], (1,), generator=g, device=device))
                rows = captions.index[idx, pick]
            cond.update(captions.cond(torch.where(drop, captions.null, rows)))
        if boxes is not None:
            b = boxes[idx]
            if config.data.flip:  # the boxes mirror with their image
                b = torch.where(flip.view(-1, 1, 1), flip_boxes(b, config.data.image_size), b)
            drop = per_sample(lambda g: torch.rand(1, generator=g, device=device)) < LAYOUT_DROPOUT
            cond["layout"] = render_run_layout(b, config, x0.shape[2:], given=~drop)
        noise = randn_like(x0, gens)
        with mixed_precision:
            loss = denoising_loss(denoiser, x0, sigma, weight_fn(sigma, config.diffusion.sigma_data), noise, **cond).mean()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        images_seen = (step + 1) * tc.batch_size * d.world
        update_ema(ema, model, ema_beta(tc.batch_size * d.world, images_seen, tc.ema_halflife_images, tc.ema_rampup))

        losses.append(loss.item())
        done = step + 1
        bar.update(1)
        at_checkpoint = done % tc.checkpoint_every == 0 or done == tc.steps
        if done % tc.log_every == 0 or at_checkpoint:
            last_loss = sum(losses) / len(losses)
            if d.world > 1:  # the loss of the whole (global) batch, not rank 0's share
                mean = torch.tensor([last_loss], dtype=torch.float64, device=device)
                dist.all_reduce(mean)
                last_loss = mean.item() / d.world
            now = time.perf_counter()
            rate = len(losses) * tc.batch_size * d.world / (now - t_last)
            bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{rate:.0f}")
            if d.main:
                append_log(run_dir, LOG_FIELDS, {"step": done, "loss": f"{last_loss:.6f}", "lr": f"{lr_at(step, tc):.3g}",
                                                 "images_per_second": f"{rate:.1f}", "seconds": f"{now - t0:.1f}"})
            losses, t_last = [], now
        if at_checkpoint:
            if d.main:
                save_checkpoint(run_dir, model=model, ema=ema, optimizer=optimizer, step=done)
                try:
                    viz.plot_loss(run_dir / LOG, run_dir / "loss.png")
                except ValueError:
                    pass  # nothing plottable (a loss gone to NaN): log.csv shows it, the checkpoint matters more
                if on_checkpoint is not None:
                    on_checkpoint(done)
            if d.world > 1:
                dist.barrier()
        # after the checkpoint, so a failing grid never costs the steps before it
        if d.main and (done % tc.sample_every == 0 or done == tc.steps):
            sample_grid(ema_denoiser, config, run_dir / "samples" / f"step-{done:07d}.png",
                        text=captions.cond(captions.index[torch.arange(16) % len(captions.index), 0])
                        if captions is not None else None, decode=latents.space.decode if latents is not None else None,
                        boxes=boxes[torch.arange(16, device=device) % len(boxes)] if boxes is not None else None)
    bar.close()
    return {"step": tc.steps, "loss": last_loss, "run_dir": str(run_dir), "images": len(data.images),
            "world_size": d.world, "effective_batch_size": tc.batch_size * d.world}
