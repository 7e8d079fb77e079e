"""Generation from a trained run: load, wrap, sample, save."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from tqdm import tqdm

from .._util import generators, randn
from ..checkpoint import LoadedRun
from ..samplers import get_sampler, sample


def generate(run: LoadedRun, n: int, *, steps: Optional[int] = None, sampler: Optional[str] = None, seed: int = 0,
             batch_size: int = 64, progress: bool = True, callback: Optional[Callable] = None,
             **options) -> Iterator[torch.Tensor]:
    """Yield batches of samples (B, C, *spatial) in [-1, 1], n in all.

    Sample i draws its noise from its own generator seeded `seed + i`, so it is the same image
    whatever the batch size or n. steps/sampler default to the run's config.
    """
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    cfg = run.config
    d = cfg.diffusion
    sampler = sampler or d.sampler
    get_sampler(sampler)
    steps = steps if steps is not None else d.sample_steps
    device = next(run.denoiser.parameters()).device
    shape = (cfg.model.in_channels, *[cfg.data.image_size] * cfg.model.dims)
    with tqdm(total=n, desc="sampling", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            gens = generators(range(seed + start, seed + min(n, start + batch_size)))
            noise = randn((len(gens), *shape), gens, device)
            with torch.inference_mode():
                x = sample(run.denoiser, noise, method=sampler, steps=steps, sigma_min=d.sigma_min,
                           sigma_max=d.sigma_max, generator=gens,
                           callback=callback, **options)
            bar.update(len(x))
            yield x.clamp(-1, 1).cpu()
