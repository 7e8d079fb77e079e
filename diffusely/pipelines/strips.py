"""The forward and reverse processes made visible, as strips of images."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..checkpoint import LoadedRun
from ..audio import DEFAULT_RATE, EXTENSIONS as AUDIO_EXTENSIONS
from ..data import BUILTIN, MODALITIES, DataError, load_dataset, modality_of, to_tensor
from ..data.audio import load_audio_file
from ..data.folder import load_image
from ..data.reading import regular_file
from ..data.video import VIDEO_EXTENSIONS, first_clip
from ..schedules import add_noise, ve_to_vp
from .generate import generate

FORWARD_SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 6.0, 20.0, 80.0)


def strip_image(source: str, size: int | None = None, rate: int = 0) -> torch.Tensor:
    """The sample a forward strip shows, (C, *spatial) in [-1, 1]: an image file, resized and center-cropped to
    size x size (default 64), an audio file (its first `size` samples at `rate` Hz, default 1 s at 8 kHz; see
    diffusely.audio.read_audio), or the first sample of a built-in dataset named `source` (unless a file of that
    name exists)."""
    audio = modality_of(source) == "audio" or Path(source).suffix.lower() in AUDIO_EXTENSIONS
    size = size or (rate or DEFAULT_RATE if audio else 64)
    if not audio and size > 1024:
        raise DataError(f"--size {size} is too large for an image strip: at most 1024 pixels a side")
    if source in BUILTIN and not Path(source).exists():
        array = load_dataset(source, size, rate=rate).images[0]
    elif audio:
        array = load_audio_file(source, size, rate or DEFAULT_RATE)
    elif Path(source).suffix.lower() in VIDEO_EXTENSIONS:  # a clip: its first 8 frames at 8 fps
        array = first_clip(regular_file(source, "video"), size)
    else:
        array = load_image(source, size)
    return to_tensor(array[None])[0]


def strip_pictures(rows: list[torch.Tensor], modality: str, rate: int = 0) -> tuple[list[torch.Tensor], int]:
    """Rows of samples (K, C, *spatial) in [-1, 1] as viz.save_strip takes them, and the scale to enlarge them by:
    images as they are (to about 128 pixels), other modalities drawn by their module's `tiles` (audio: waveform over
    log-mel spectrogram, enlarged twice)."""
    writer = MODALITIES[modality].writer
    if not writer:
        return rows, max(1, 128 // rows[0].shape[-1])
    tiles = importlib.import_module(writer).tiles
    return [tiles(row, rate or DEFAULT_RATE) for row in rows], 2


def forward_strip(image: torch.Tensor, sigmas=FORWARD_SIGMAS, seed: int = 0) -> torch.Tensor:
    """(C, *spatial) image in [-1, 1] -> (K, C, *spatial): x0 + sigma n at each sigma, with one fixed n,
    shown in the variance-preserving scale x / sqrt(1 + sigma^2) so every tile has the data's range."""
    x0 = image.unsqueeze(0).expand(len(sigmas), *image.shape)
    sigma = torch.tensor(sigmas, dtype=image.dtype)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed), dtype=image.dtype)
    return ve_to_vp(add_noise(x0, sigma, noise.expand_as(x0)), sigma).clamp(-1, 1)


def reverse_strip(run: LoadedRun, *, seed: int = 0, steps: int | None = None, nfe: int | None = None,
                  sampler: str | None = None, tiles: int = 10, **options) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Sample one image and keep, at up to `tiles` of its steps, the noisy x (VP scale) and the model's
    x0 estimate. Returns (xs, x0_hats, sigmas), the first two (K, C, *spatial); the final sample is the
    last x0 tile and appears at sigma 0. A latent run shows its noisy latents and estimates decoded."""
    seen = []
    final = next(generate(run, 1, steps=steps, nfe=nfe, sampler=sampler, seed=seed, batch_size=1, progress=False,
                          callback=lambda info: seen.append((info["sigma"], info["x"][0].clone(), info["denoised"][0].clone())),
                          **options))
    keep = sorted({round(i * (len(seen) - 1) / max(1, tiles - 2)) for i in range(tiles - 1)})
    with torch.inference_mode():
        xs = run.decode(torch.stack([ve_to_vp(seen[i][1].unsqueeze(0), seen[i][0])[0] for i in keep])).cpu()
        x0s = run.decode(torch.stack([seen[i][2] for i in keep])).cpu()
    sigmas = [seen[i][0] for i in keep] + [0.0]
    return torch.cat([xs, final]).clamp(-1, 1), torch.cat([x0s, final]).clamp(-1, 1), sigmas
