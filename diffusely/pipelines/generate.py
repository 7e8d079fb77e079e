"""Generation from a trained run: load, wrap, sample, save (`write_samples`: the files `diffusely sample` writes)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .._files import atomic_write, atomic_write_text
from .._util import generators, randn
from ..checkpoint import LoadedRun
from ..data import to_uint8
from ..samplers import get_sampler, nfe as nfe_of, resolve_steps, sample
from ..schedules import Spacing
from ..viz import save_grid
from .conditioning import conditioning


class SamplesExist(ValueError):
    """The output folder already holds samples of these names; the message says how to keep or replace them."""


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


SAMPLE_FORMATS = ("png", "npy")
METADATA = "metadata.jsonl"


def sample_names(n: int, seed: int, fmt: str) -> list[str]:
    """The file names of samples seed .. seed + n - 1: 000000.png, 000001.png, ..."""
    return [f"{seed + i:06d}.{fmt}" for i in range(n)]


def write_samples(run: LoadedRun, out_dir: str | Path, n: int, *, fmt: str = "png", seed: int = 0,
                  grid: Optional[str | Path] = None, overwrite: bool = False, **kwargs) -> dict:
    """Draw n samples with `generate` (kwargs are its arguments) and write each to out_dir as it is made,
    sample i as `{seed + i:06d}.{fmt}` (PNG, or a (H, W, C) uint8 .npy), so a stopped job keeps what it made.
    With classes or prompts, out_dir/metadata.jsonl says which sample got which; `grid` also saves them all
    as one PNG. Files of an earlier job are never replaced unless `overwrite`: a folder that holds any of
    these names is refused before anything is sampled (choose another --seed or folder to add samples).
    Returns {"count", "out_dir", "metadata" (a path or None), "grid"}."""
    if fmt not in SAMPLE_FORMATS:
        raise ValueError(f"unknown sample format {fmt!r}; choose one of: {', '.join(SAMPLE_FORMATS)}")
    out_dir = Path(out_dir)
    batches = generate(run, n, seed=seed, **kwargs)  # checks every argument before a file is touched
    asked = {key: list(kwargs[arg]) for key, arg in (("text", "prompts"), ("class", "classes")) if kwargs.get(arg)}
    names = sample_names(n, seed, fmt)
    targets = [out_dir / name for name in names + ([METADATA] if asked else [])] + ([Path(grid)] if grid else [])
    if not overwrite:
        _refuse_existing(targets, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    everything, i = [], 0
    for batch in batches:
        images = to_uint8(batch)
        for image in images:  # written as produced: a stopped job keeps what it made
            atomic_write(out_dir / names[i], functools.partial(_write_sample, image, fmt))
            i += 1
        if grid:
            everything.append(images)
    metadata = None
    if asked:
        rows = [{"file_name": names[k], **{key: v[k % len(v)] for key, v in asked.items()}} for k in range(i)]
        metadata = out_dir / METADATA
        atomic_write_text(metadata, "".join(json.dumps(row) + "\n" for row in rows))
    if grid:
        save_grid(np.concatenate(everything), grid)
    return {"count": i, "out_dir": out_dir, "metadata": metadata, "grid": grid}


def _write_sample(image: np.ndarray, fmt: str, path: str) -> None:
    """(H, W, C) uint8 -> a PNG (mode L or RGB) or an .npy at `path` (a temporary name: the format is given)."""
    if fmt == "png":
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")
    else:
        with open(path, "wb") as f:
            np.save(f, image, allow_pickle=False)


def _refuse_existing(targets: list[Path], out_dir: Path) -> None:
    existing = [p for p in targets if p.exists()]
    if existing:
        shown = ", ".join(p.name for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise SamplesExist(f"{out_dir} already holds {len(existing)} of the files this would write ({shown}); "
                               f"pass --overwrite to replace them, or choose another --out or --seed")
