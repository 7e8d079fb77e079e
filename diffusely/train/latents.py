"""Latent diffusion's training data: every training image encoded once by the run's autoencoder.

The U-Net learns posterior means, not draws from the posterior: with LDM's KL weight of 1e-6 the
posterior is all but a point (its std is far below the latents' spread), and means make the encoded
set a pure function of the images. They are scaled to mean 0 and variance 1 over the training set,
with the factors kept in the run's config. With flip augmentation each image is also encoded mirrored:
the latent of a mirrored image is not the mirrored latent, so mirroring latents would teach the
U-Net latents the decoder never sees.

The encoded set is cached in the run directory (float16: a relative rounding of 5e-4 on unit-variance
latents, and half the file), so a resumed run trains on exactly the latents the interrupted one did.

A text run made from options (`diffusely train DATA --text`) is latent by default on an autoencoder of its own:
use_own_autoencoder points the config at RUN_DIR/autoencoder, and prepare_own_autoencoder trains it there (or
resumes it, or finds it trained) before the diffusion run starts.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .._files import Unreadable, load_tensors, save_tensors
from ..checkpoint import CONFIG, OWN_AUTOENCODER, RunError, autoencoder_dir, load_autoencoder, read_config
from ..config import AutoencoderRunConfig, ConfigError, RunConfig
from ..data import DataError, to_tensor
from ..nets.autoencoder import Autoencoder, LatentSpace, latent_scale, per_frame
from ..samplers.defaults import TEXT_SAMPLER

LATENTS = "latents.safetensors"
CACHE_DTYPE = torch.float16


@dataclass
class Latents:
    """Scaled latents of the training images (N, C, *spatial), of the mirrored images when flipping, and the
    latent space that made them (to decode sample grids)."""

    images: torch.Tensor
    flipped: Optional[torch.Tensor]
    space: LatentSpace


@torch.no_grad()
def encode_images(autoencoder: Autoencoder, images: np.ndarray, *, mirrored: bool = False, batch_size: int = 64,
                  device="cpu", progress: bool = False) -> torch.Tensor:
    """Posterior means (N, latent_channels, *spatial / factor), float32, of uint8 images (N, H, W, C)
    (mirrored left to right first if asked); of clips (N, T, H, W, C), each frame's: (N, latent_channels, T, ...)."""
    out = []
    encode = lambda v: autoencoder.encode(v)[0].float()  # noqa: E731
    for start in tqdm(range(0, len(images), batch_size), desc="encoding" + (" mirrored" if mirrored else ""),
                      unit="batch", disable=not progress):
        x = to_tensor(images[start:start + batch_size]).to(device)
        out.append(per_frame(encode, x.flip(-1) if mirrored else x, autoencoder.config.dims))
    return torch.cat(out)


def prepare_latents(config: RunConfig, images: np.ndarray, run_dir: Path, device, *, resume: bool, save: bool,
                    progress: bool = False) -> Latents:
    """Encode the training images (or, resuming, read the cache), measuring the scale and shift at the start
    of a run into config.latent; returns the scaled latents on `device`."""
    loaded = load_autoencoder(autoencoder_dir(config, run_dir if resume else None), device)
    lc, cache = config.latent, Path(run_dir) / LATENTS
    if loaded.config.model.in_channels != images.shape[-1]:
        raise DataError(f"the autoencoder in {lc.autoencoder} encodes {loaded.config.model.in_channels}-channel images, "
                        f"but the data has {images.shape[-1]} channels: train with "
                        f"{'--rgb' if loaded.config.model.in_channels == 3 else '--grayscale'} to match it")
    if resume:
        if cache.is_file():
            cached, flipped = _read_cache(cache, lc.autoencoder_digest, len(images), config.data.flip, device)
            return Latents(cached, flipped, LatentSpace(loaded.autoencoder, lc.scale_factor, lc.shift_factor))
        if loaded.digest != lc.autoencoder_digest:
            raise RunError(f"the autoencoder in {lc.autoencoder} changed after this run started (step "
                           f"{lc.autoencoder_step} then, {loaded.step} now) and {cache} is gone, so the run cannot "
                           "continue on the latents it began with; start a new run")
    ae = loaded.autoencoder
    means = encode_images(ae, images, device=device, progress=progress)
    if not resume:
        lc.scale_factor, lc.shift_factor = latent_scale(means)
        lc.autoencoder_step, lc.autoencoder_digest = loaded.step, loaded.digest
    space = LatentSpace(ae, lc.scale_factor, lc.shift_factor)
    scale = lambda z: ((z - lc.shift_factor) * lc.scale_factor).to(CACHE_DTYPE)  # noqa: E731
    tensors = {"images": scale(means)}
    if config.data.flip:
        tensors["flipped"] = scale(encode_images(ae, images, mirrored=True, device=device, progress=progress))
    if save:
        save_tensors(cache, tensors, {"autoencoder_digest": lc.autoencoder_digest, "count": len(images)})
    return Latents(tensors["images"].float(), tensors["flipped"].float() if config.data.flip else None, space)


def _read_cache(path: Path, digest: str, count: int, flip: bool, device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    try:
        tensors, meta = load_tensors(path, device)
    except Unreadable as e:
        raise RunError(f"{e}; delete it to encode the data again") from None
    same_data = meta.get("autoencoder_digest") == digest and str(meta.get("count")) == str(count)
    if not same_data or flip != ("flipped" in tensors):
        raise RunError(f"{path} holds latents of other data or another autoencoder than this run's; "
                       "delete it to encode the data again")
    return tensors["images"].float(), tensors["flipped"].float() if flip else None


# ---------------------------------------------------------------------------------------------
# a text run's own autoencoder: the latent default of `diffusely train DATA --text`

FACTOR = 4  # the autoencoder's default: 32 x 32 images become 8 x 8 latents
MIN_LATENT_SIDE = 8  # smaller images (the tests' 16 px folders) stay in pixels: a 4 x 4 latent holds too little
TEXT_MAX_SHAPES = 3  # a text run on the built-in shapes: captions of one to three shapes
# ln(sigma) ~ N(0.75, 1.2^2) in unit-variance latents, where a caption's layout is decided: EDM's -1.2 moved by ln 2
# for sigma_data 1 would be -0.51, and 60 minutes there never learned which side of "left of" an object goes; at 0.5
# (18% of the steps above sigma 5, 4% at -0.51) three runs of four learned every side, the fourth (training seed 2)
# not left and right (position 0.64). The same seed and autoencoder at 0.75 (24% above sigma 5) learned all four by
# minute 45 (position 0.92, all right 0.79 against 0.73, shape 0.91 against 0.92); at 1.0 (31%) by minute 30, but
# shapes came late (0.74). Seeds 0 and 1 at 0.75 learned every side too (position 0.95 and 0.89; all right 0.87 and
# 0.80, against 0.91 and 0.88 at 0.5 with 6-15% more steps). docs/text.md, "Which side: the noise levels"
TEXT_P_MEAN = 0.75
# a text run of this many steps or more trains torch.compile'd: on the 8 x 8 latents of 32 x 32 shapes a step is
# small enough that eager overhead counts, and compiled it ran at 195-200 images a second against 147-152 eager
# (1.29-1.36x; batch 32, the shared 2-core CPU, torch 2.13), after a first compile of about 2.5 minutes (seconds
# once inductor's cache holds it). Eager 2000 steps take about 7 minutes, which that shortens by about the first
# compile. Over prompt_adherence.py's hour: 1.12x the steps, and issue 21's bar met (docs/text.md).
COMPILE_FROM_STEPS = 2000


def latent_by_default(config: RunConfig) -> bool:
    """Whether a new text run diffuses in the latents of an autoencoder of its own (RUN_DIR/autoencoder): 2-D
    images generated from noise, large enough for an 8 x 8 latent, with no autoencoder of the user's."""
    d = config.data
    return (config.text.enabled and config.latent is None and d.modality == "image" and config.model.dims == 2
            and d.task == "generate" and not d.layout and d.image_size // FACTOR >= MIN_LATENT_SIDE)


def use_own_autoencoder(config: RunConfig, run_dir, given: Sequence[str] = ()) -> None:
    """Make `config` a latent run on RUN_DIR/autoencoder (trained by prepare_own_autoencoder before the run). Unless
    `given` (option names) holds them: self- and cross-attention at every level of the U-Net, since on an 8 x 8
    latent every level is small and the text must reach the level that places the shapes (the largest) as well as
    the rest; and one residual block a level, as the demo's latent run, which pays for that attention (on the
    shared 2-core CPU channels 64,128,128 with one block and attention everywhere took a step in about the time of
    two blocks and attention at level 1 alone). And noise levels drawn higher (TEXT_P_MEAN), where a caption's
    layout is decided; Euler ancestral sampling (TEXT_SAMPLER); and a compiled network when the run is long
    enough to pay for compiling it (COMPILE_FROM_STEPS)."""
    config.use_autoencoder(Path(run_dir) / OWN_AUTOENCODER)
    if "attention_levels" not in given:
        config.model.attention_levels = tuple(range(len(config.model.channels)))
    if "blocks_per_level" not in given:
        config.model.blocks_per_level = 1
    if "P_mean" not in given:
        config.diffusion.P_mean = TEXT_P_MEAN
    if "sampler" not in given:
        config.diffusion.sampler, config.diffusion.sample_steps = TEXT_SAMPLER
    if "compile" not in given and config.train.steps >= COMPILE_FROM_STEPS:
        config.train.compile = True


def own_autoencoder_config(config: RunConfig, steps: Optional[int] = None) -> AutoencoderRunConfig:
    """The autoencoder a text run trains for itself, on the run's own data: the demo's (factor 4, 4 latent
    channels, batch 16), for 2500 steps, with random 32-pixel crops past 32 x 32 images (as docs/latent.md's
    64 x 64 autoencoder). On 32 x 32 shapes 600 steps gave 32 dB, and its decoder drew the held-out images' colors
    and backgrounds right only 0.96 and 0.975 of the time, below issue 21's bar for samples; 1500 steps (2.4
    minutes more) give 37 dB and 0.99 and 0.995, but one seed's decoder still bled large shapes' color into the
    corners (2.7 levels off on average; 29 of 1000 real images read as another background); 2500 steps (about 2.5
    minutes more) halve that (1.6 levels, 11 of 1000; docs/text.md)."""
    from ..config import AutoencoderTrainConfig, DataConfig

    size = config.data.image_size
    steps = steps or 2500
    data = DataConfig(source=config.data.source, image_size=size, channels=config.data.channels,
                      max_shapes=config.data.max_shapes, outside=config.data.outside)
    train = AutoencoderTrainConfig(steps=steps, crop_size=32 if size > 32 else 0, seed=config.train.seed,
                                   precision=config.train.precision, checkpoint_every=min(200, steps),
                                   sample_every=steps, warmup_steps=min(100, steps))
    return AutoencoderRunConfig(data=data, train=train)


def prepare_own_autoencoder(config: RunConfig, run_dir, *, steps: Optional[int] = None, progress: bool = True,
                            say: Callable[[str], None] = lambda line: None,
                            should_stop: Optional[Callable[[], bool]] = None) -> bool:
    """Train, resume or reuse the autoencoder of a run made by use_own_autoencoder, before the run trains on its
    latents; nothing for other runs. An autoencoder left halfway (the command stopped) resumes from its
    checkpoint; one of other data is refused. `say` hears a line of what is done. False when `should_stop()` ended
    the autoencoder's training early (the run must not start on it yet), else True."""
    from ..options import checkpoint_step
    from .autoencoder import train_autoencoder

    ae_dir = Path(run_dir).resolve() / OWN_AUTOENCODER
    if config.latent is None or Path(config.latent.autoencoder) != ae_dir:
        if steps is not None:
            raise ConfigError("--autoencoder-steps sets the autoencoder a text run trains for itself, and this run has "
                              "none (not a text run, --pixels, --autoencoder, or images under 32 px): drop it")
        return True
    resume = (ae_dir / CONFIG).is_file()
    ae_config = read_config(ae_dir, AutoencoderRunConfig) if resume else own_autoencoder_config(config, steps)
    if steps is not None and steps != ae_config.train.steps:
        raise ConfigError(f"--autoencoder-steps {steps}: {ae_dir} was begun for {ae_config.train.steps} steps and "
                          f"keeps them; drop --autoencoder-steps, or delete {ae_dir} to train another")
    theirs, ours = ae_config.data, config.data
    fields = ("source", "image_size", "channels", "max_shapes")
    if any(getattr(theirs, f) != getattr(ours, f) for f in fields):
        raise RunError(f"{ae_dir} holds an autoencoder of other data ({', '.join(f'{f} {getattr(theirs, f)}' for f in fields)}) "
                       f"than this run's; delete it, or train into another --out")
    done = checkpoint_step(ae_dir) if resume else 0
    if done >= ae_config.train.steps:
        say(f"autoencoder: {ae_dir} (trained, {done} steps)")
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError(f"a text run trains its autoencoder in one process: run `diffusely train-autoencoder "
                       f"{ours.source} --image-size {ours.image_size} --out {ae_dir}` first, then this command again")
    _check_latent_size(config, ae_config.model.factor)
    say(f"autoencoder: {'resuming' if done else 'training'} {ae_dir} ({ae_config.train.steps} steps"
        f"{f', from step {done}' if done else ''}), then the text model on its latents")
    result = train_autoencoder(ae_config, ae_dir, resume=resume, progress=progress, should_stop=should_stop)
    say(f"autoencoder: {result['step']} steps, training PSNR {result.get('psnr', float('nan')):.1f} dB")
    return result["step"] >= ae_config.train.steps


def _check_latent_size(config: RunConfig, factor: int) -> None:
    """The U-Net's size check on latents `factor` times smaller (train.data.check_image_size), made before the
    autoencoder trains for minutes rather than after."""
    from .data import check_image_size

    probe = copy.deepcopy(config)
    probe.latent.factor = factor
    check_image_size(probe)
