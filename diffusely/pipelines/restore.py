"""Images in, images out, from a trained run: `upscale` (a super-resolution run, `train --task upscale`),
`restore` (zero-shot, with any pixel run: a measurement operator and data consistency, diffusely.restoration) and
`img2img` (SDEdit). Each reads image files, samples K draws per input and writes

    OUT/NAME.png                       the result (K = 1)
    OUT/NAME.0.png ... NAME.{K-1}.png  K posterior samples, then their per-pixel
    OUT/NAME.mean.png                  mean, and
    OUT/NAME.std.png                   standard deviation, averaged over channels, grey = std / STD_WHITE (clipped)
    OUT/NAME.input.png                 restore only: the pseudo-inverse A^+ y (MRI: the zero-filled image A^T y)

Sample i of the j-th input draws its noise from seed + j * K + i, so a result depends on its seed, not its batch.
A folder that already holds any of these names is refused before any work, unless the plan says to overwrite.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .._files import atomic_write, run_lock
from .._util import generators, randn
from ..checkpoint import LoadedRun, RunError
from ..conditions import LowRes
from ..data import DataError, to_tensor, to_uint8
from ..data.images import decode
from ..metrics.restoration import calibration, consistency_error, psnr, ssim
from ..restoration import TASKS, Projected, img2img as sdedit, make_operator, repaint, restore as consistent_sample
from ..restoration.operators import MEASURED_BLUR_CUTOFF, TASK_OPTIONS, MeasurementError
from ..samplers import sample
from .conditioning import conditioning
from .generate import _refuse_existing, _write_sample, sampling_plan, stored_spacing

STD_WHITE = 0.25  # a std map's white: 0.25 in the data's [-1, 1] units, an eighth of the range; fixed, so maps compare
# (sampler, steps) where neither the user nor the run names one (a run of the stock Heun): at 35 NFE on the phantoms
# (docs/restoration.md), a stochastic sampler beats Heun's ODE, by 1.4 dB PSNR for SR3's samples (Euler ancestral) and
# for zero-shot projection (DPM++ 2M SDE) by 3.9 dB at MRI 4x and 0.5 at 8x: each step's fresh noise absorbs the
# projection's change to the estimate.
UPSCALE_SAMPLER = ("euler_ancestral", 35)
RESTORE_SAMPLER = ("dpmpp_2m_sde", 35)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
POCS_ITERATIONS = 100  # projections onto [-1, 1] and {A x = y} that bring a consistent sample into the range
HOW = ("project", "dps", "repaint")  # data consistency: DDNM projection, DPS gradient, RePaint resampling


def read_images(source: str | Path, channels: int, flag: str = "INPUT") -> list[tuple[str, torch.Tensor]]:
    """(name, (C, H, W) in [-1, 1]) for an image file or each image file of a folder (sorted by name), at their own
    size. An image of another channel count than `channels` (grey is 1, colour 3) is a DataError saying so."""
    source = Path(source)
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                   ) if source.is_dir() else [source]  # hidden: a macOS ._scan.png is no image
    if not files:
        raise DataError(f"{flag} {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in files]
    twins = sorted({p.name for p in files if stems.count(p.stem) > 1})
    if twins:  # both would write NAME.png
        raise DataError(f"{flag} {source} holds images of one name in two formats ({', '.join(twins[:4])}): the "
                        f"results are named by it, so rename or move one of each")
    out = []
    for path in files:
        with Image.open(path) as image:  # the header only: the decode below checks the pixels
            grey = Image.getmodebase(image.mode) == "L"
        if (1 if grey else 3) != channels:
            raise DataError(f"{path} is a {'greyscale' if grey else 'colour'} image but the run makes "
                            f"{'greyscale' if channels == 1 else 'colour'} ones ({channels} channel(s)): convert it "
                            f"to {'greyscale (L)' if channels == 1 else 'RGB'}")
        array = torch.from_numpy(np.asarray(decode(path, "L" if grey else "RGB")).copy())
        out.append((path.stem, to_tensor(array.reshape(*array.shape[:2], -1)[None])[0]))
    return out


def read_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool from a mask image: white (> 127 in grey) where the pixel is known; refused at another size."""
    mask = torch.from_numpy(np.asarray(decode(path, "L")).copy()) > 127
    if tuple(mask.shape) != tuple(size):
        raise MeasurementError(f"--mask {path} is {mask.shape[1]}x{mask.shape[0]} but the images are "
                               f"{size[1]}x{size[0]}: give a mask of the images' size (white where pixels are known)")
    return mask


def check_size(images: Sequence[tuple[str, torch.Tensor]], size: tuple[int, ...], what: str) -> None:
    for name, x in images:
        if tuple(x.shape[1:]) != tuple(size):
            raise DataError(f"{name} is {'x'.join(map(str, x.shape[:0:-1]))} but {what} "
                            f"{'x'.join(map(str, size[::-1]))}: resize or crop it to that size")


def pixel_run(run: LoadedRun, what: str) -> None:
    """Refuse a latent run where the operators act on pixels, and a run whose samples are not images."""
    if run.config.latent is not None:
        raise RunError(f"{what} measures and corrects images in pixels, but this is a latent run (its model draws "
                       f"autoencoder latents): use a run trained on pixels (no --autoencoder)")
    image_run(run, what)


def image_run(run: LoadedRun, what: str) -> None:
    """Refuse a run whose samples are not images (audio, video: not an error from inside a 3-D convolution)."""
    if run.config.data.modality != "image" or run.config.model.dims != 2:
        raise RunError(f"{what} works on images, but this run draws {run.config.data.modality} "
                       f"({run.config.model.dims}-D samples): use a run trained on images")


@dataclass
class Plan:
    """How each input is sampled: the sampler and its steps (the run's unless given), K draws, the base seed."""

    sampler: str
    steps: Optional[int]
    k: int = 1
    seed: int = 0
    overwrite: bool = False  # replace files of the same names in the output folder (else refuse them)

    @classmethod
    def of(cls, run: LoadedRun, sampler=None, steps=None, nfe=None, k: int = 1, seed: int = 0,
           overwrite: bool = False, default: Optional[tuple[str, int]] = None) -> "Plan":
        """`default`: the (sampler, steps) of a run of the stock sampler where none is named (sampling_plan)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"-n must be a whole number >= 1 (draws per input), got {k!r}")
        return cls(*sampling_plan(run, sampler, steps, nfe, default), k, seed, overwrite)

    def check_free(self, out: str | Path, images: Sequence[tuple[str, torch.Tensor]], inputs: bool = False) -> None:
        """Refuse, before any work, an output folder holding files this would write, unless `overwrite`."""
        parts = [""] if self.k == 1 else [f".{i}" for i in range(self.k)] + [".mean", ".std"]
        parts += [".input"] if inputs else []
        if not self.overwrite:
            _refuse_existing([Path(out) / f"{name}{part}.png" for name, _ in images for part in parts], Path(out))

    def generators(self, j: int) -> list[torch.Generator]:
        """The generators of input j's K draws, seeded seed + j K + i."""
        return generators([self.seed + j * self.k + i for i in range(self.k)])

    def noise(self, run: LoadedRun, j: int) -> tuple[torch.Tensor, list]:
        """Standard-normal noise (K, *sample shape) for input j, and its generators."""
        gens = self.generators(j)
        return randn((self.k, *run.config.sample_shape), gens, run.device), gens

    def sampling(self, run: LoadedRun, gens, whole: bool = True) -> dict:
        """diffusely.sample's arguments. A name such as "DPM++ 2M Karras" brings its spacing and options
        (pipelines.generate.Sampler); else the run's optimised schedule for this sampler and steps is used where
        it has one (schedules.json, as `sample` does), else a budget's sampler (--nfe alone) gets the spacing it
        was picked on. whole=False (img2img, which starts part-way down) never takes a stored schedule, which
        would start at sigma_max whatever the strength."""
        d = run.config.diffusion
        stored = stored_spacing(run, self.sampler, self.steps) if whole else None
        return dict(method=self.sampler, steps=self.steps, sigma_min=d.sigma_min, sigma_max=d.sigma_max, generator=gens,
                    spacing=stored or self.sampler.spacing or self.sampler.fallback, **self.sampler.options)


def _save(path: Path, x: torch.Tensor) -> Path:
    atomic_write(path, functools.partial(_write_sample, to_uint8(x[None])[0], "png"))
    return path


def write_draws(out: Path, name: str, draws: torch.Tensor) -> dict[str, torch.Tensor]:
    """Write K draws (K, C, H, W) of input `name` (see the module's docstring); returns {"sample", "mean", "std"}
    (the first draw; with K > 1 the mean and std too)."""
    out.mkdir(parents=True, exist_ok=True)
    draws = draws.float().cpu()
    if len(draws) == 1:
        _save(out / f"{name}.png", draws[0])
        return {"sample": draws[0]}
    for i, x in enumerate(draws):
        _save(out / f"{name}.{i}.png", x)
    mean, std = draws.mean(0), draws.std(0)
    _save(out / f"{name}.mean.png", mean)
    grey = (std.mean(0, keepdim=True) / STD_WHITE).clamp(0, 1) * 2 - 1  # 0 -> black, STD_WHITE and up -> white
    _save(out / f"{name}.std.png", grey)
    return {"sample": draws[0], "mean": mean, "std": std}


def _locked(fn):
    """`fn(run, source, out, ...)` run holding out's lock (`diffusely/_files.py`), so its check that no file of
    these names is there and its writes are one step: two jobs into one folder cannot both pass the check."""
    @functools.wraps(fn)
    def locked(run: LoadedRun, source, out, *args, **kwargs):
        with run_lock(out, f"{fn.__name__} --out {out}"):
            return fn(run, source, out, *args, **kwargs)
    return locked


@_locked
def upscale(run: LoadedRun, source: str | Path, out: str | Path, plan: Plan, *, consistent: bool = False, classes=None,
            guidance=None, progress=None) -> list[str]:
    """Super-resolve each low-res image of `source` (a file or folder; each image_size / scale a side) with a run
    trained with --task upscale: K samples per input, written to `out`. Returns the names written. `consistent`:
    each x0 estimate is also projected onto the images that average-pool to the input (DDNM, as `restore` does),
    so every result pools back to its input exactly; same cost. A latent run's estimates are latents, so there only
    the decoded result is projected."""
    if "lowres" not in run.config.conditions:
        raise RunError("this run was not trained to upscale: train one with --task upscale --scale S, or restore "
                       "with any run: diffusely restore RUN --task upscale")
    size, scale = run.config.data.image_size, run.config.data.scale
    images = read_images(source, run.config.data.channels)
    check_size(images, (size // scale,) * 2, f"this run upscales {scale}x to {size}x{size}, so inputs must be")
    lowres, c = LowRes(run.config), conditioning(run, classes=classes, guidance=guidance)
    plan.check_free(out, images)
    for j, (name, y) in enumerate(images):
        denoiser, cond = c.batch(range(plan.k), run.device)
        ys = y[None].expand(plan.k, *y.shape).to(run.device)
        cond.update(lowres.given(ys, run.device))
        noise, gens = plan.noise(run, j)
        with torch.no_grad():
            project = consistent and run.latent is None
            draws = run.decode(sample(Projected(denoiser, lowres.operator, ys) if project else denoiser, noise,
                                      cond=cond, **plan.sampling(run, gens)))
        write_draws(Path(out), name, in_range(lowres.operator, draws, ys) if consistent else draws.clamp(-1, 1))
        if progress:
            progress(name)
    return [name for name, _ in images]


def measurement(task: str, size: int, *, mask=None, scale=None, acceleration=None, seed: int = 0, measured=False):
    """The operator of `task` for size x size images, its options checked with the flag that sets them named; for
    `measured` 8-bit images, a blur whose inverse does not amplify their rounding (MEASURED_BLUR_CUTOFF)."""
    if task not in TASKS:
        raise MeasurementError(f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}")
    takes = TASK_OPTIONS[task]  # the flags here are a subset of the operator's options (restoration.operators)
    foreign = [f"--{k}" for k, v in {"mask": mask, "scale": scale, "acceleration": acceleration}.items()
               if v is not None and k not in takes]
    if foreign:
        raise MeasurementError(f"--task {task} takes no {', '.join(foreign)}: drop it")
    if task == "inpaint" and mask is None:
        raise MeasurementError("--task inpaint needs --mask: an image of the run's size, white where pixels are known")
    if acceleration is not None and not (math.isfinite(acceleration) and acceleration >= 1):
        raise MeasurementError(f"--acceleration must be >= 1 (1 measures every k-space line, 4 a quarter), got "
                               f"{acceleration}")
    if task == "upscale":
        scale = 4 if scale is None else scale
    if scale is not None and (scale < 2 or size % scale):
        raise MeasurementError(f"--scale {scale} does not divide the run's image size {size}: pick a scale >= 2 that "
                               f"divides it ({', '.join(str(s) for s in range(2, size) if size % s == 0)})")
    options = {"inpaint": lambda: {"mask": read_mask(mask, (size, size))}, "upscale": lambda: {"scale": scale},
               "mri": lambda: {"acceleration": acceleration, "seed": seed},
               "deblur": lambda: {"cutoff": MEASURED_BLUR_CUTOFF if measured else None}}[task]()
    return make_operator(task, size, **options)


def _measure(operator, image: torch.Tensor, measured: bool) -> torch.Tensor:
    """y for one image (1, C, H, W): A(image) of a clean image; with `measured`, the image is the measurement as a
    file holds it, and the operator reads y from it (Operator.from_measured: a low-res image is y, a blurred one is
    taken into A's range, an inpainting's known pixels are kept, an MRI's zero-filled image gives its k-space lines
    back exactly)."""
    return operator.from_measured(image) if measured else operator(image)


def _scores(operator, x: torch.Tensor, y: torch.Tensor, truth: Optional[torch.Tensor], parts: dict) -> dict:
    """PSNR, SSIM (against the truth, where known) and consistency error of the first draw (and of the mean, and the
    std map's calibration, with K > 1), each of the images as written (clamped to [-1, 1]); SSIM is NaN for images
    under 11 pixels a side."""
    row = {"consistency": float(consistency_error(operator, x[:1], y[:1]))}
    if truth is None:
        return row
    truth = truth.cpu()
    structure = ssim if min(truth.shape[2:]) >= 11 else lambda *_: torch.tensor(math.nan)  # SSIM's 11-pixel window
    row.update(psnr=float(psnr(x[:1].cpu(), truth)), ssim=float(structure(x[:1].cpu(), truth)))
    if "mean" in parts:
        mean = parts["mean"][None]
        row.update(psnr_mean=float(psnr(mean, truth)), ssim_mean=float(structure(mean, truth)),
                   calibration=float(calibration(parts["std"][None], mean - truth)))
    return row


def in_range(operator, x: torch.Tensor, y: torch.Tensor, iterations: int = POCS_ITERATIONS) -> torch.Tensor:
    """x moved into the images' range [-1, 1] while it keeps agreeing with y: alternating projections onto the box
    and onto {x : A x = y} (POCS: both sets are convex and the truth lies in both), ending in the box. A plain clamp
    of a projected sample would undo its consistency wherever the sample overshoots the range."""
    for _ in range(iterations):
        x = operator.project(x.clamp(-1, 1), y)
    return x.clamp(-1, 1)


@_locked
def restore(run: LoadedRun, source: str | Path, out: str | Path, plan: Plan, *, task: str, how: str = "project",
            mask=None, scale=None, acceleration=None, mask_seed: int = 0, measured: bool = False,
            dps_scale: float = 1.0, resample: int = 10, classes=None, guidance=None, progress=None) -> list[dict]:
    """Zero-shot restoration with any pixel run. Each image of `source` is the clean image, measured here with the
    task's operator (for a demo or a benchmark: the truth is known, and scored), or with `measured` the
    measurement itself (see _measure). The mri mask is drawn from `mask_seed`. Writes NAME.input.png (A^+ y; MRI:
    the zero-filled A^T y, which `measured` reads back) and
    the draws (see write_draws); returns a row of scores per input (see _scores)."""
    pixel_run(run, "restore")
    if how not in HOW:
        raise MeasurementError(f"unknown --how {how!r}; choose one of: {', '.join(HOW)}")
    if how == "repaint" and plan.steps is None:
        raise MeasurementError(f"--how repaint steps the sampler itself: give a fixed-step --sampler with --steps "
                               f"({plan.sampler} picks its own)")
    size, channels = run.config.data.image_size, run.config.data.channels
    operator = measurement(task, size, mask=mask, scale=scale, acceleration=acceleration, seed=mask_seed,
                           measured=measured)
    images = read_images(source, channels)
    low = task == "upscale" and measured
    check_size(images, (size // (scale or 4),) * 2 if low else (size, size),
               f"{'--measured low-res images' if low else 'the images'} of this run must be")
    c, rows = conditioning(run, classes=classes, guidance=guidance), []
    plan.check_free(out, images, inputs=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    for j, (name, image) in enumerate(images):
        image = image[None].to(run.device)
        y = _measure(operator, image, measured)
        _save(Path(out) / f"{name}.input.png", operator.as_image(y)[0].clamp(-1, 1).cpu())
        denoiser, cond = c.batch(range(plan.k), run.device)
        noise, gens = plan.noise(run, j)
        ys, sampling = y.expand(plan.k, *y.shape[1:]), plan.sampling(run, gens)
        with torch.no_grad():
            if how == "repaint":
                draws = repaint(denoiser, operator, ys, noise, resample=resample, cond=cond, **sampling)
            else:
                draws = consistent_sample(denoiser, operator, ys, noise, how=how, scale=dps_scale, cond=cond,
                                          **sampling)
        draws = in_range(operator, draws, ys) if how != "dps" else draws.clamp(-1, 1)
        parts = write_draws(Path(out), name, draws)
        rows.append({"name": name, **_scores(operator, draws, ys, None if measured else image, parts)})
        if progress:
            progress(name)
    return rows


@_locked
def img2img(run: LoadedRun, source: str | Path, out: str | Path, plan: Plan, *, strength: float, classes=None,
            prompts=None, negative_prompts=None, guidance=None, progress=None) -> list[str]:
    """SDEdit each image of `source` (the run's size): noised to the sigma of `strength`, sampled back down, with
    the class or prompt guidance the run allows (as `diffusely sample`). A latent run edits the image's latent."""
    image_run(run, "img2img")
    if plan.steps is None:
        raise MeasurementError(f"img2img takes a share of --steps: give a fixed-step --sampler with --steps "
                               f"({plan.sampler} picks its own)")
    size = run.config.data.image_size
    images = read_images(source, run.config.data.channels)
    check_size(images, (size, size), "the images of this run must be")
    c = conditioning(run, classes=classes, prompts=prompts, negative_prompts=negative_prompts, guidance=guidance)
    plan.check_free(out, images)
    for j, (name, image) in enumerate(images):
        denoiser, cond = c.batch(range(plan.k), run.device)
        x = image[None].expand(plan.k, *image.shape).to(run.device)
        gens = plan.generators(j)
        with torch.no_grad():
            z = x if run.latent is None else run.latent.encode(x)
            z = sdedit(denoiser, z, strength=strength, cond=cond, **plan.sampling(run, gens, whole=False))
            draws = run.decode(z).clamp(-1, 1)
        write_draws(Path(out), name, draws)
        if progress:
            progress(name)
    return [name for name, _ in images]
