"""Images in, images out: `upscale` (a --task upscale run), `restore` (zero-shot, any pixel run), `img2img` (SDEdit)."""

from __future__ import annotations

import click

from ..pipelines.restore import HOW
from ..restoration.operators import TASKS
from .flags import COUNT, INFERENCE, QUIET, SAMPLING, Finite, seed_option, stack
from .sample import device, writable

DRAWS = click.option("-n", "k", type=COUNT, default=1, show_default=True,
                     help="Draws per input; with 2 or more, also their mean and a per-pixel std map (NAME.std.png: "
                          "black 0, white a std of 0.25 in [-1, 1] units or more).")
OUT = stack(click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write."),
            click.option("--overwrite", is_flag=True, help="Replace files of the same names in --out (by default a "
                         "folder holding any of them is refused)."))
CLASS = click.option("--class", "classes", multiple=True, metavar="NAME", help="Of this class (a class run).")
GUIDANCE = click.option("--guidance", type=Finite(), help="Classifier-free guidance scale towards --class/--prompt.")
# what every command here ends with: the draws and how they are sampled, then (after the conditions) the arithmetic
DRAWING = stack(DRAWS, SAMPLING, seed_option(help="Draw i of input j uses seed + j * n + i."))
RUNNING = stack(INFERENCE, QUIET)


def _load(run_dir, out_dir, precision, cuda_graphs):
    from ..checkpoint import load_run

    run = load_run(run_dir, device(), precision=precision or "auto", cuda_graphs=cuda_graphs)
    writable(out_dir)
    return run


def _plan(run, sampler, steps, nfe, k, seed, overwrite, default=None):
    from ..pipelines.restore import Plan

    return Plan.of(run, sampler, steps, nfe, k, seed, overwrite, default)


def _shown(quiet):
    return None if quiet else (lambda name: click.echo(f"  {name}"))


def _written(out_dir, count, k):
    what = "NAME.png" if k == 1 else f"NAME.0..{k - 1}.png, NAME.mean.png, NAME.std.png (std: white = 0.25 or more)"
    click.echo(f"wrote {count} input(s) to {out_dir}: {what}")


@click.command()
@click.argument("run_dir", type=click.Path())
@click.argument("source", metavar="INPUT", type=click.Path(exists=True))
@OUT
@click.option("--consistent", is_flag=True, help="Also project each estimate onto the images that average-pool to "
              "INPUT (as restore does): every result pools back to its input exactly.")
@DRAWING
@CLASS
@GUIDANCE
@RUNNING
def upscale(run_dir, source, out_dir, overwrite, consistent, k, steps, nfe, sampler, seed, classes, guidance, precision,
            cuda_graphs, quiet):
    """Upscale INPUT (a low-res image, or a folder of them) with a super-resolution run (`train --task upscale`).
    Without --sampler or --nfe, in a run of the stock sampler (Heun): Euler ancestral, 35 steps (or --steps).

    \b
    diffusely upscale runs/sr4 lowres.png --out upscaled
    diffusely upscale runs/sr4 scans/ --out upscaled -n 8      # mean and std map of 8 samples each
    diffusely upscale runs/sr4 lowres.png --out upscaled --consistent
    """
    from ..pipelines.restore import UPSCALE_SAMPLER, upscale as run_upscale

    run = _load(run_dir, out_dir, precision, cuda_graphs)
    plan = _plan(run, sampler, steps, nfe, k, seed, overwrite, UPSCALE_SAMPLER)
    names = run_upscale(run, source, out_dir, plan, consistent=consistent, classes=list(classes) or None,
                        guidance=guidance, progress=_shown(quiet))
    _written(out_dir, len(names), k)


def _print_scores(rows: list[dict]) -> None:
    """A table of the scores, one row per input, then their mean."""
    keys = [key for key in ("psnr", "ssim", "psnr_mean", "ssim_mean", "calibration", "consistency") if key in rows[0]]
    click.echo("input".ljust(16) + "".join(key.rjust(13) for key in keys))
    for row in rows + ([{"name": "mean", **{key: sum(r[key] for r in rows) / len(rows) for key in keys}}]
                       if len(rows) > 1 else []):
        click.echo(row["name"][:15].ljust(16) + "".join(f"{row[key]:13.4f}" for key in keys))
    click.echo("psnr in dB, ssim in [0, 1] (of the first draw; _mean: of the mean), calibration: correlation of the "
               "std map with the mean's error, consistency: RMS of A x - y in [-1, 1] units")


@click.command()
@click.argument("run_dir", type=click.Path())
@click.argument("source", metavar="INPUT", type=click.Path(exists=True))
@click.option("--task", required=True, type=click.Choice(list(TASKS)),
              help="The measurement: a mask, an average pool, undersampled k-space, a Gaussian blur.")
@OUT
@click.option("--mask", type=click.Path(dir_okay=False, exists=True),
              help="inpaint: an image of the run's size, white where pixels are known.")
@click.option("--scale", type=int, help="upscale: the average pool's factor (default 4).")
@click.option("--acceleration", type=float, help="mri: the undersampling (default 4: a quarter of the lines).")
@click.option("--mask-seed", type=click.IntRange(0),
              help="mri: seed of the random phase-encode lines (default 0; the centre is always measured).")
@click.option("--how", type=click.Choice(HOW), default="project", show_default=True,
              help="Data consistency: project (DDNM), dps (gradient through the network, ~3x slower) or repaint.")
@click.option("--measured", is_flag=True, help="INPUT is the measurement: a low-res image (upscale), a blurred one "
              "(deblur), the known pixels (inpaint) or a zero-filled image (mri: the real part of the inverse FFT of "
              "the lines measured with this --acceleration and --mask-seed, as NAME.input.png holds it). "
              "Without it INPUT is the truth, measured here, and the scores are printed.")
@click.option("--dps-scale", type=Finite(at_least=0), help="dps: the step (default 1: whole).")
@click.option("--resample", type=click.IntRange(1, 100), help="repaint: times each step is redone (default 10).")
@DRAWING
@CLASS
@GUIDANCE
@RUNNING
def restore(run_dir, source, task, out_dir, overwrite, mask, scale, acceleration, mask_seed, how, measured, dps_scale,
            resample, k, steps, nfe, sampler, seed, classes, guidance, precision, cuda_graphs, quiet):
    """Restore INPUT (an image, or a folder) with any pixel run and a measurement: every sample agrees with
    what was measured (exactly, with --how project). A research tool, not a medical device. Without --sampler or
    --nfe, in a run of the stock sampler (Heun): DPM++ 2M SDE, 35 steps (or --steps); --how repaint: the run's.

    \b
    diffusely restore runs/phantoms scan.png --task mri --acceleration 4 --out recon -n 8
    diffusely restore runs/phantoms scan.png --task upscale --scale 4 --how dps --out sr
    diffusely restore runs/shapes image.png --task inpaint --mask mask.png --how repaint --steps 25 --out filled
    diffusely restore runs/shapes lowres.png --task upscale --measured --out sr
    """
    from ..pipelines.restore import RESTORE_SAMPLER, restore as run_restore
    from ..restoration import MeasurementError

    # a flag of another --how or --task would do nothing: said, not ignored
    idle = [flag for flag, value, used in (("--dps-scale", dps_scale, how == "dps"),
                                           ("--resample", resample, how == "repaint"),
                                           ("--mask-seed", mask_seed, task == "mri")) if value is not None and not used]
    if idle:
        raise MeasurementError(f"{', '.join(idle)} {'does' if len(idle) == 1 else 'do'} nothing with --task {task} "
                               f"--how {how}: drop {'it' if len(idle) == 1 else 'them'}")
    # DPS differentiates through the network, which a replayed CUDA graph cannot
    run = _load(run_dir, out_dir, precision, False if how == "dps" else cuda_graphs)
    plan = _plan(run, sampler, steps, nfe, k, seed, overwrite, None if how == "repaint" else RESTORE_SAMPLER)
    options = {"mask_seed": mask_seed, "dps_scale": dps_scale, "resample": resample}
    given = {k: v for k, v in options.items() if v is not None}
    rows = run_restore(run, source, out_dir, plan, task=task, how=how, mask=mask, scale=scale, acceleration=acceleration,
                       measured=measured, classes=list(classes) or None, guidance=guidance, progress=_shown(quiet),
                       **given)  # the others at restore's own defaults
    if not measured:
        _print_scores(rows)
    _written(out_dir, len(rows), k)
    click.echo(f"and NAME.input.png: {'A^T y (the zero-filled image)' if task == 'mri' else 'A^+ y (pseudo-inverse)'}")


@click.command()
@click.argument("run_dir", type=click.Path())
@click.argument("source", metavar="INPUT", type=click.Path(exists=True))
@OUT
@click.option("--strength", type=Finite(at_least=0), default=0.6, show_default=True,
              help="How far to noise the image, 0..1 (0 keeps it, 1 redraws it).")
@DRAWING
@CLASS
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT", help="Towards this prompt (a text run).")
@click.option("--negative-prompt", "negative_prompts", multiple=True, metavar="TEXT", help="Away from this prompt.")
@GUIDANCE
@RUNNING
def img2img(run_dir, source, out_dir, overwrite, strength, k, steps, nfe, sampler, seed, classes, prompts,
            negative_prompts, guidance, precision, cuda_graphs, quiet):
    """Transform INPUT (an image of the run's size, or a folder) by SDEdit: noise it part way, sample back down.

    \b
    diffusely img2img runs/shapes sketch.png --strength 0.6 --out edited
    diffusely img2img runs/classes photo.png --class circle --guidance 3 --strength 0.8 --out edited -n 4
    """
    from ..pipelines.restore import img2img as run_img2img

    run = _load(run_dir, out_dir, precision, cuda_graphs)
    plan = _plan(run, sampler, steps, nfe, k, seed, overwrite)
    names = run_img2img(run, source, out_dir, plan, strength=strength,
                        classes=list(classes) or None, prompts=list(prompts) or None,
                        negative_prompts=list(negative_prompts) or None, guidance=guidance, progress=_shown(quiet))
    _written(out_dir, len(names), k)


__all__ = ["upscale", "restore", "img2img"]
