"""Generation from a trained run: load, wrap, sample, save."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch
from tqdm import tqdm

from .._util import generators, randn
from ..checkpoint import LoadedRun
from ..samplers import get_sampler, nfe as nfe_of, resolve_steps, sample
from ..schedules import Spacing
from .conditioning import conditioning


def sample_shape(run: LoadedRun) -> tuple[int, ...]:
    """The shape of what the sampler draws for one sample of the run: (C, *spatial), a latent in a latent run."""
    return run.config.sample_shape


def sampling_plan(run: LoadedRun, sampler: Optional[str], steps: Optional[int], nfe: Optional[int]) -> tuple[str, Optional[int]]:
    """The sampler (the run's unless given) and its step count: `steps`, or what an `nfe` budget buys, or
    the run's default; None for a sampler that picks its own steps (adaptive)."""
    sampler = sampler or run.config.diffusion.sampler
    get_sampler(sampler)
    if steps is None and nfe is None and nfe_of(sampler, 1) is not None:
        steps = run.config.diffusion.sample_steps
    return sampler, resolve_steps(sampler, steps, nfe)


def stored_spacing(run: LoadedRun, sampler: str, steps: Optional[int]) -> Optional[Callable]:
    """The run's optimised schedule for (sampler, steps) as a spacing, or None if it has none."""
    sigmas = run.schedules.get(sampler, {}).get(str(steps))
    return None if sigmas is None else (lambda *_: torch.tensor(sigmas, dtype=torch.float64))


def generate(run: LoadedRun, n: int, *, steps: Optional[int] = None, nfe: Optional[int] = None,
             sampler: Optional[str] = None, spacing: Spacing = None, seed: int = 0, batch_size: int = 64,
             progress: bool = True, callback: Optional[Callable] = None, classes: Optional[Sequence] = None,
             prompts: Optional[Sequence[str]] = None, negative_prompts: Optional[Sequence[str]] = None,
             guidance: Optional[float] = None, layouts: Optional[Sequence] = None,
             indices: Optional[Sequence[int]] = None, **options) -> Iterator[torch.Tensor]:
    """An iterator over batches of samples (B, C, *spatial) in [-1, 1], n in all (images: a latent run decodes
    its samples). The arguments are checked at the call; sampling happens as the batches are taken.

    Sample i draws its noise from its own generator seeded `seed + i`, so it is the same image
    whatever the batch size or n. sampler defaults to the run's config; steps too, unless `nfe` (a
    budget of denoiser evaluations) is given. With no `spacing`, a schedule optimised for this run,
    sampler and step count (schedules.json, `diffusely optimize-schedule`) is used where there is one.
    classes (names or indices) and prompts cycle over the samples; negative_prompts replace the null
    caption in classifier-free guidance of scale `guidance` (see pipelines.conditioning for defaults).
    layouts (lists of boxes (class, x0, y0, x1, y1[, direction]) in pixels) cycle too. indices: draw samples with these
    indices (noise seed + i, conditioning i) instead of 0..n-1, e.g. the ones a stopped job did not finish.
    """
    indices = list(range(n)) if indices is None else list(indices)
    n = len(indices)
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    sampler, steps = sampling_plan(run, sampler, steps, nfe)
    spacing = spacing or stored_spacing(run, sampler, steps)
    conditions = conditioning(run, classes=classes, prompts=prompts, negative_prompts=negative_prompts,
                              guidance=guidance, layouts=layouts)
    # everything above is checked now, at the call; the sampling happens as the batches are asked for
    return _batches(run, indices, conditions, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                    batch_size=batch_size, progress=progress, callback=callback, options=options)


def _batches(run: LoadedRun, indices: list[int], conditions, *, sampler: str, steps: Optional[int], spacing,
             seed: int, batch_size: int, progress: bool, callback, options: dict) -> Iterator[torch.Tensor]:
    d = run.config.diffusion
    device = next(run.denoiser.parameters()).device
    with tqdm(total=len(indices), desc="sampling", unit="img", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            gens = generators([seed + i for i in batch])
            noise = randn((len(gens), *sample_shape(run)), gens, device)
            denoiser, cond = conditions.batch(batch, device)
            with torch.inference_mode():
                x = sample(denoiser, noise, cond=cond, method=sampler, steps=steps, sigma_min=d.sigma_min,
                           sigma_max=d.sigma_max, spacing=spacing, generator=gens, callback=callback, **options)
                x = run.decode(x)  # a latent run's samples become images here
            bar.update(len(x))
            yield x.clamp(-1, 1).cpu()
