"""Latent diffusion's training data: every training image encoded once by the run's autoencoder.

The U-Net learns posterior means, not draws from the posterior: with LDM's KL weight of 1e-6 the
posterior is all but a point (its std is far below the latents' spread), and means make the encoded
set a pure function of the images. They are scaled to mean 0 and variance 1 over the training set,
with the factors kept in the run's config. With flip augmentation each image is also encoded mirrored:
the latent of a mirrored image is not the mirrored latent, so mirroring latents would teach the
U-Net latents the decoder never sees.

The encoded set is cached in the run directory (float16: a relative rounding of 5e-4 on unit-variance
latents, and half the file), so a resumed run trains on exactly the latents the interrupted one did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from .._files import Unreadable, load_tensors, save_tensors
from ..checkpoint import RunError, autoencoder_dir, load_autoencoder
from ..config import RunConfig
from ..data import DataError, to_tensor
from ..nets.autoencoder import Autoencoder, LatentSpace, latent_scale

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
    (mirrored left to right first if asked)."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="encoding" + (" mirrored" if mirrored else ""),
                      unit="batch", disable=not progress):
        x = to_tensor(images[start:start + batch_size]).to(device)
        out.append(autoencoder.encode(x.flip(-1) if mirrored else x)[0].float())
    return torch.cat(out)


def prepare_latents(config: RunConfig, images: np.ndarray, run_dir: Path, device, *, resume: bool, save: bool,
                    progress: bool = False) -> Latents:
    """Encode the training images (or, resuming, read the cache), measuring the scale and shift at the start
    of a run into config.latent; returns the scaled latents on `device`."""
    loaded = load_autoencoder(autoencoder_dir(config, run_dir if resume else None), device)
    lc, cache = config.latent, Path(run_dir) / LATENTS
    if loaded.config.model.in_channels != images.shape[-1]:
        raise DataError(f"the autoencoder in {lc.autoencoder} encodes {loaded.config.model.in_channels}-channel images, "
                        f"but the data has {images.shape[-1]} channels (--grayscale?)")
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
