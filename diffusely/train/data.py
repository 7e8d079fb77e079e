"""What a diffusion run trains on: its data loaded and fitted to the model's config, its captions encoded once, and
the batch of every step.

Every step draws its batch, and each sample its flip, sigma, conditions' dropout and noise, from generators seeded
by (seed, step, rank) and (seed, the sample's position in the run), so a run resumed from a checkpoint continues
exactly as the uninterrupted run would have (EDM2's approach), and N processes draw what one does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch

from .._util import randn_like
from ..audio import data_dims, network_dims, network_input, stft_size
from ..checkpoint import autoencoder_dir, read_config
from ..conditions import Captions, Condition, FromSamples, LowRes
from ..config import AutoencoderRunConfig, RunConfig
from ..data import DataError, Dataset, apply_flips, draw_flips, load_dataset, to_tensor
from ..data.shapes import caption_variants
from ..layout import box_direction, layout_channels
from ..loss import discrete_sigmas, lognormal_sigmas
from ..text import build_text_encoder
from .common import Batches, Dist, seed_from
from .latents import Latents


def train_sigmas(config: RunConfig, schedule, batch: int, generator, device) -> torch.Tensor:
    """(batch,) training noise levels: EDM's log-normal, or the discrete schedule's sigmas drawn uniformly."""
    d = config.diffusion
    if d.train_sigmas == "lognormal":
        return lognormal_sigmas(batch, P_mean=d.P_mean, P_std=d.P_std, generator=generator, device=device)
    return discrete_sigmas(batch, schedule, generator=generator, device=device)


def check_image_size(config: RunConfig) -> None:
    if network_dims(config) != data_dims(config):  # an audio clip's spectrogram: its frames are padded to fit
        check_spectrogram_size(config)
        return
    ae_factor = config.latent.factor if config.latent else 1
    f = config.model.downsample_factor * ae_factor
    if config.data.image_size % f:
        lo, hi = config.data.image_size // f * f, (config.data.image_size // f + 1) * f
        on_latents = f" on latents {ae_factor} times smaller than the images" if ae_factor > 1 else ""
        patch = f" and patch size {config.model.patch_size}" if config.model.patch_size > 1 else ""
        raise DataError(f"image size {config.data.image_size} is not divisible by {f}, which a U-Net with "
                        f"{len(config.model.channels)} levels{patch}{on_latents} needs; use --image-size {f'{lo} or {hi}' if lo else hi}")


def check_spectrogram_size(config: RunConfig) -> None:
    """A spectrogram run's clip must outlast its STFT's padding, and the U-Net's factor divide its frequency bins."""
    d, m = config.data, config.model
    n_fft = stft_size(d.sample_rate)
    if d.image_size <= n_fft // 2:
        raise DataError(f"a clip of {d.image_size} samples is too short for a spectrogram at {d.sample_rate} Hz (its "
                        f"{n_fft}-point STFT needs more than {n_fft // 2}): give a longer --image-size, or train with "
                        f"--audio-model waveform")
    if (n_fft // 2) % m.downsample_factor:
        raise DataError(f"a spectrogram at {d.sample_rate} Hz has {n_fft // 2} frequency bins, which the U-Net's "
                        f"downsampling factor {m.downsample_factor} ({len(m.channels)} levels, patch size "
                        f"{m.patch_size}) does not divide: give fewer --channels levels, a smaller --patch-size or a "
                        f"higher --sample-rate")


def check_task(config: RunConfig) -> None:
    """Refuse what an upscale run cannot be (yet): a text run (the text network passes no low-res channels), data
    that is not images, or a latent run whose scale and autoencoder factor do not nest (conditions.LowRes brings
    the low-res image to the latent grid by whole repeats or whole blocks)."""
    if config.data.task != "upscale":
        return
    why = [text for bad, text in [(config.text.enabled, "with text (--text)"),
                                  (config.data.modality != "image", f"on {config.data.modality}")] if bad]
    if why:
        raise DataError(f"--task upscale trains on images, not {' or '.join(why)}: drop "
                        f"{'that option' if len(why) == 1 else 'those options'}, or train without --task upscale")
    factor, scale = (config.latent.factor or 0) if config.latent else 1, config.data.scale
    if factor and scale % factor and factor % scale:
        raise DataError(f"--scale {scale} does not nest with the autoencoder's factor {factor} (the latents are "
                        f"1/{factor} of the image a side, the low-res input 1/{scale}): give a scale that divides "
                        f"{factor} or is a multiple of it")


def prepare_data(config: RunConfig, data: Optional[Dataset] = None) -> Dataset:
    """Load the run's data (or take `data`, samples of the model's dims) and fit the model config to it (input
    channels, number of classes, layout and low-res channels, text width)."""
    if config.latent is not None:  # the U-Net sees the autoencoder's latents
        if network_dims(config) != data_dims(config):
            raise DataError("a latent audio run learns an autoencoder's latents of the waveform, not a spectrogram: "
                            "add --audio-model waveform, or drop --autoencoder")
        ae = read_config(autoencoder_dir(config), AutoencoderRunConfig).model
        config.latent.factor, config.latent.latent_channels = ae.factor, ae.latent_channels
        frames = config.model.dims == 3 and bool(config.data.frames)  # an image autoencoder encodes each frame
        if ae.dims != config.model.dims - frames:
            kinds = {1: "1-D samples (audio)", 2: "images", 3: "3-D volumes"}
            raise DataError(f"the autoencoder in {config.latent.autoencoder} encodes {kinds[ae.dims]}, and this "
                            f"{config.data.modality} run needs one of "
                            f"{kinds[config.model.dims - frames]}{' (per frame)' if frames else ''}: train one "
                            f"on its data (diffusely train-autoencoder), or drop --autoencoder")
    check_task(config)
    check_image_size(config)
    if data is None:
        data = load_dataset(config.data.source, config.data.image_size, config.data.channels, config.data.classes,
                            seed=config.train.seed, captions=config.text.enabled, max_shapes=config.data.max_shapes, outside=config.data.outside,
                            directions=config.data.directions if config.data.layout else "labels",  # layouts only
                            rate=config.data.sample_rate, frames=config.data.frames)
    shape = config.data.spatial(data_dims(config))
    if tuple(data.images.shape[1:-1]) != shape:
        raise DataError(f"{config.data.source} holds samples of {tuple(data.images.shape[1:-1])}, but the model (dims "
                        f"{config.model.dims}, image size {config.data.image_size}) takes {shape}")
    config.model.in_channels = config.model.out_channels = (
        config.latent.latent_channels if config.latent else data.images.shape[-1])
    # an upscale run reads the low-res image's channels, on its grid, and its "given" channel (conditions.LowRes)
    upscale = config.data.task == "upscale"
    config.model.lowres_channels = LowRes.channels_for(config, data.images.shape[-1]) if upscale else 0
    if upscale and config.latent is not None:  # latents and low-res pixels: no base of x's shape to add to
        config.diffusion.residual = False
    config.model.frames_channels = config.model.in_channels + 1 if config.data.given_frames else 0  # conditions.Frames
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


def encode_captions(config: RunConfig, captions: list[str], run_dir: Path, device, *, save: bool, resume: bool,
                    progress: bool) -> Captions:
    """Build (or, resuming, reload) the run's text encoder and encode each distinct caption once, so a frozen
    encoder never runs inside the training loop. With data.paraphrases, each image's paraphrases too."""
    variants = (caption_variants(captions, config.data.paraphrases, config.train.seed) if config.data.paraphrases
                else [[c] for c in captions])
    every = [c for image in variants for c in image]
    unique = list(dict.fromkeys(every))
    encoder = build_text_encoder(config.text, every, run_dir, device, save=save, reuse=resume)
    if save:
        _warn_about_captions(encoder, unique)
    row = {c: i for i, c in enumerate(unique)}
    texts = unique + [None]
    table, mask = encoder.encode(texts, progress=progress) if config.text.pretrained else encoder.encode(texts)
    index = torch.tensor([[row[c] for c in image] for image in variants], dtype=torch.long)
    return Captions(table.to(device), mask.to(device), index.to(device))


def _warn_about_captions(encoder, captions: list[str]) -> None:
    """Say what of the captions the model will not see: the tokens past the cap a caption is cut at, and (a resumed
    scratch run, whose vocabulary is the captions it started with) the words its vocabulary lacks."""
    lengths = encoder.token_counts(captions) if hasattr(encoder, "token_counts") else map(encoder.length, captions)
    cut = sum(n > encoder.max_tokens for n in lengths)
    if cut:
        warnings.warn(f"{cut} of {len(captions)} captions are longer than the {encoder.max_tokens} tokens a caption "
                      f"is cut at: the model never sees their end", stacklevel=3)
    scratch = hasattr(encoder, "unknown_words")
    unknown = sorted({w for c in captions for w in encoder.unknown_words(c)}) if scratch else []
    if unknown:
        warnings.warn(f"{len(unknown)} words of the captions are not in the run's vocabulary (built from the captions "
                      f"it started with) and are read as unknown: {', '.join(unknown[:8])}", stacklevel=3)


class TrainingSet:
    """The training samples on the device (uint8 channels last, or a latent run's latents) and the run's
    conditions on their data: `draw_batch(step)` is the batch of every step as a pure function of (seed, step,
    rank)."""

    def __init__(self, config: RunConfig, data: Dataset, conditions: list[Condition], latents: Optional[Latents],
                 device, d: Dist):
        self.config, self.conditions, self.latents, self.device = config, conditions, latents, device
        self.samples = torch.from_numpy(data.images).to(device) if latents is None else None  # decoded once
        images = self.samples if latents is None else None
        self.batches = Batches(len(data.images), config.train.batch_size, config.train.seed, d)
        self.schedule = config.diffusion.discrete_schedule()
        for condition in conditions:  # the low-res image is drawn from the training images themselves
            if isinstance(condition, FromSamples):
                if images is None:  # a latent run's: the images in pixels too
                    images = torch.from_numpy(data.images).to(device)
                condition.images = images

    def draw_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """This rank's share of step `step`: x0 (B, C, *spatial), sigma (B,), noise like x0 and the conditions'
        inputs, each sample drawing its flip, sigma, conditions and noise in that order from its own generator."""
        torch.manual_seed(seed_from(self.config.train.seed, step, self.batches.d.rank, 1))  # the network's dropout
        positions = self.batches.positions(step)
        rows = self.batches.indices(positions).to(self.device)
        gens = self.batches.generators(positions, self.device)
        if self.latents is None:
            x0 = network_input(to_tensor(self.samples[rows]), self.config)  # audio: linear amplitudes
        else:
            x0 = self.latents.images[rows]
        flip = draw_flips(gens) if self.config.data.flip else None
        if flip is not None:  # a latent run's mirror images were encoded mirrored, not mirrored as latents
            x0 = apply_flips(x0, flip, None if self.latents is None else self.latents.flipped[rows])
        sigma = torch.cat([train_sigmas(self.config, self.schedule, 1, g, self.device) for g in gens])
        cond: dict[str, torch.Tensor] = {}
        for condition in self.conditions:
            cond.update(condition.train(rows, gens, flip))
        return x0, sigma, randn_like(x0, gens), cond
