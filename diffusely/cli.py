"""`diffusely <command>`: parses arguments, calls training and pipelines, says where results went."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import click
import numpy as np

from .checkpoint import CONFIG, RunError, load_run, read_config
from .config import RECIPES, ConfigError, DataConfig, RunConfig
from .data import DataError, to_tensor, to_uint8
from .samplers import SAMPLERS

USER_ERRORS = (DataError, RunError, ConfigError, ValueError, FileNotFoundError)


def user_errors(fn):
    """Turn the library's own errors into a one-line message and exit status 1, not a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from None
    return wrapper


def _options(ctx, param, values):
    """-o KEY=VALUE pairs -> {KEY: float}, for sampler options such as S_churn or eta."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"expected KEY=NUMBER such as S_churn=30 or eta=0.5, got {item!r}") from None
    return out


SAMPLER_OPTION = click.option("-o", "--option", "options", multiple=True, callback=_options, metavar="KEY=VALUE",
                              help="A sampler option, repeatable: -o S_churn=30 -o S_tmax=10 (heun, euler), -o eta=0.5 (ddim).")


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 64,128,128, got {value!r}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffusely")
def main():
    """diffusely: train diffusion models on your images and sample from them."""


# ---------------------------------------------------------------------------------------------- train

@main.command()
@click.argument("data", required=False)
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--steps", type=int, help="Training steps (default 4000).")
@click.option("--batch-size", type=int, help="Images per step (per process under torchrun).")
@click.option("--image-size", type=int, help="Train at this square size (default 32).")
@click.option("--channels", callback=_int_list, help="U-Net channels per level, e.g. 64,128,128.")
@click.option("--blocks-per-level", type=int, help="Residual blocks per U-Net level.")
@click.option("--attention-levels", callback=_int_list, help="U-Net levels with self-attention, e.g. 1,2 (0 = full size).")
@click.option("--lr", type=float, help="Peak learning rate of AdamW.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), help="edm (default) or ddpm (eps-prediction, linear schedule).")
@click.option("--classes", is_flag=True, default=None, help="Class labels from subfolders (or the built-in labels).")
@click.option("--grayscale", is_flag=True, default=None, help="Train on one channel.")
@click.option("--no-flip", is_flag=True, default=None, help="Do not mirror images at random.")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints.")
@click.option("--sample-every", type=int, help="Steps between sample grids.")
@click.option("--log-every", type=int, help="Steps between rows of log.csv (default 10).")
@click.option("--seed", type=int, help="Seed of weights, batches and noise.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]),
              help="auto (default): bf16 autocast on CUDA and on CPUs with native bf16, else fp32.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A config.json to start from; options override it.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(data, run_dir, steps, batch_size, image_size, channels, blocks_per_level, attention_levels, lr, recipe,
          classes, grayscale, no_flip, checkpoint_every, sample_every, log_every, seed, precision, config_file, resume, quiet):
    """Train on DATA (a folder of images, or a built-in dataset: shapes) into a run directory.

    \b
    diffusely train shapes --out runs/shapes --steps 2000
    diffusely train ~/photos --out runs/photos --image-size 64 --channels 64,128,256,256
    diffusely train --out runs/shapes --resume --steps 4000
    """
    from .train import train as run_training

    if resume:
        if not (Path(run_dir) / CONFIG).is_file():
            raise RunError(f"nothing to resume in {run_dir}: it has no {CONFIG}; drop --resume to start a new run")
        config = read_config(run_dir)
    else:
        if data is None:
            raise click.UsageError("give the DATA to train on: a folder of images or a built-in name (shapes)")
        config = RunConfig.load(config_file) if config_file else RunConfig()
        if recipe:
            config.diffusion = RECIPES[recipe]()
        config.data = DataConfig(**{**config.data.__dict__, "source": data})
        _set(config.data, image_size=image_size, classes=classes, channels=1 if grayscale else None,
             flip=False if no_flip else None)
        _set(config.model, channels=channels, blocks_per_level=blocks_per_level, attention_levels=attention_levels)
        config.model.__post_init__()
        _set(config.train, batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every, sample_every=sample_every,
             log_every=log_every,
             seed=seed, precision=precision)
    _set(config.train, steps=steps)
    config.train.__post_init__()
    result = run_training(config, run_dir, resume=resume, progress=not quiet)
    click.echo(f"trained {result['step']} steps (effective batch {result['effective_batch_size']}), last loss {result['loss']:.4f}")
    click.echo(f"run directory: {run_dir}  (samples/ grids, loss.png, checkpoint.safetensors)")


def _device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _set(obj, **values):
    for k, v in values.items():
        if v is not None:
            setattr(obj, k, v)


# ---------------------------------------------------------------------------------------------- sample

@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("-n", "count", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--steps", type=int, help="Sampler steps (default: the run's, 18 for Heun).")
@click.option("--sampler", type=str, help=f"One of: {', '.join(SAMPLERS)} (default: the run's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for the samples (default RUN_DIR/generated).")
@click.option("--format", "fmt", type=click.Choice(["png", "npy"]), default="png", show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False), help="Also save all samples as one grid PNG.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Samples per batch (bounds memory).")
@SAMPLER_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def sample(run_dir, count, steps, sampler, seed, out_dir, fmt, grid, batch_size, options, quiet):
    """Draw N samples from a trained run.

    \b
    diffusely sample runs/shapes -n 64 --grid grid.png
    diffusely sample runs/shapes -n 8 --sampler euler --steps 50 --format npy
    diffusely sample runs/shapes -n 64 --steps 25 -o S_churn=30 -o S_tmin=0.05 -o S_tmax=10 -o S_noise=1.003
    """
    from PIL import Image

    from . import viz
    from .pipelines import generate

    run = load_run(run_dir, _device())
    out = Path(out_dir) if out_dir else Path(run_dir) / "generated"
    out.mkdir(parents=True, exist_ok=True)
    everything = []
    i = 0
    for batch in generate(run, count, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size,
                          progress=not quiet, **options):
        images = to_uint8(batch)
        # written as produced: a stopped run keeps what it made
        for image in images:
            name = out / f"{seed + i:06d}.{fmt}"
            if fmt == "png":
                Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(name)
            else:
                np.save(name, image)
            i += 1
        if grid:
            everything.append(images)
    click.echo(f"wrote {i} samples to {out}")
    if grid:
        viz.save_grid(np.concatenate(everything), grid)
        click.echo(f"grid: {grid}")


# ---------------------------------------------------------------------------------------------- strips

@main.command()
@click.argument("image", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--size", type=int, default=64, show_default=True, help="Resize and crop the image to this size.")
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def forward(image, out, size, seed):
    """Show the forward process: IMAGE at rising noise levels sigma (VP scale).

    IMAGE is an image file, or `shapes` for the first image of the built-in data.
    """
    from . import viz
    from .data import load_dataset
    from .data.folder import load_image
    from .pipelines import FORWARD_SIGMAS, forward_strip

    if image in ("shapes",) and not Path(image).exists():
        array = load_dataset(image, size).images[0]
    else:
        array = load_image(image, size)
    strip = forward_strip(to_tensor(array[None])[0], seed=seed)
    viz.save_strip([strip], out, labels=[f"σ={s:g}" for s in FORWARD_SIGMAS], scale=max(1, 128 // size))
    click.echo(f"forward process: {out}")


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, help="Sampler steps (default: the run's).")
@click.option("--sampler", type=str, help=f"One of: {', '.join(SAMPLERS)} (default: the run's).")
@SAMPLER_OPTION
@user_errors
def reverse(run_dir, out, seed, steps, sampler, options):
    """Show the reverse process: one sample's noisy state and the model's x0 estimate at each step."""
    from . import viz
    from .pipelines import reverse_strip

    run = load_run(run_dir, _device())
    xs, x0s, sigmas = reverse_strip(run, seed=seed, steps=steps, sampler=sampler, **options)
    size = run.config.data.image_size
    viz.save_strip([xs, x0s], out, labels=[f"σ={s:.3g}" for s in sigmas], row_labels=["x", "x0 estimate"],
                   scale=max(1, 128 // size))
    click.echo(f"reverse process: {out}")


# ---------------------------------------------------------------------------------------------- info

@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@user_errors
def info(run_dir, as_json):
    """What a run is: data, size, recipe, steps, parameters, last loss."""
    run = load_run(run_dir)
    cfg = run.config
    log = Path(run_dir) / "log.csv"
    last = None
    if log.is_file():
        with open(log, newline="") as f:
            rows = list(csv.DictReader(f))
        last = float(rows[-1]["loss"]) if rows else None
    facts = {
        "run_dir": str(run_dir),
        "data": cfg.data.source,
        "image_size": cfg.data.image_size,
        "channels": cfg.model.in_channels,
        "classes": cfg.model.num_classes,
        "parameterization": cfg.diffusion.parameterization,
        "schedule": cfg.diffusion.schedule or "continuous (EDM)",
        "steps_trained": run.step,
        "steps_planned": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "parameters": sum(p.numel() for p in run.denoiser.parameters()),
        "unet_channels": list(cfg.model.channels),
        "sampler": f"{cfg.diffusion.sampler}, {cfg.diffusion.sample_steps} steps",
        "last_loss": last,
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        width = max(map(len, facts))
        for k, v in facts.items():
            click.echo(f"{k.replace('_', ' '):<{width}}  {v:,}" if isinstance(v, int) and not isinstance(v, bool)
                       else f"{k.replace('_', ' '):<{width}}  {v}")


if __name__ == "__main__":
    main()
