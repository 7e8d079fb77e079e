"""The commands that work with what users already have: `import-diffusers` (a local diffusers model in) and
`export` (a shareable model out: inference-only weights, or a diffusers UNet2DModel folder)."""

from __future__ import annotations

from pathlib import Path

import click

from ..samplers import SAMPLERS
from .flags import COUNT
from .sample import writable


def _size(path: Path) -> str:
    """The bytes under `path`, for people: 1.2 MB."""
    n = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@click.command("import-diffusers")
@click.argument("folder", type=click.Path())
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default="dpmpp_2m", show_default=True,
              help="The run's default sampler.")
@click.option("--steps", type=COUNT, default=25, show_default=True, help="The run's default sampler steps.")
def import_diffusers_command(folder, run_dir, sampler, steps):
    """Make a run of a local diffusers UNet2DModel: FOLDER is a pipeline folder (unet/ and scheduler/) or a
    unet/ folder alone (then DDPM's default scheduler: linear betas, epsilon).

    The run wraps the network in sigma space (its scheduler's own timestep table; epsilon, v or sample
    prediction), so every sampler, --nfe, optimize-schedule, eval and reverse work on it. Nothing is
    fetched, and .bin pickles are refused: the weights must be diffusion_pytorch_model.safetensors.
    Needs diffusers (pip install 'diffusely[diffusers]').

    \b
    diffusely import-diffusers ~/models/ddpm-cifar10 --out runs/cifar10
    diffusely sample runs/cifar10 -n 16 --sampler "DPM++ 2M Karras" --nfe 10
    """
    from ..checkpoint import load_run
    from ..interop import import_diffusers

    writable(run_dir)
    import_diffusers(folder, run_dir, sampler=sampler, sample_steps=steps)
    d = load_run(run_dir).config.diffusion
    click.echo(f"imported {folder}: UNet2DModel, {d.parameterization} prediction over {d.timesteps} timesteps "
               f"(sigma {d.sigma_min:.3g} to {d.sigma_max:.4g})")
    click.echo(f"run: {run_dir}  (diffusely sample {run_dir} -n 16)")


@click.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (new or empty).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="The weights' float type (diffusely format): bf16 and fp16 halve the file; fp32 samples bit for "
                   "bit like the run.")
@click.option("--format", "fmt", type=click.Choice(["diffusely", "diffusers"]), default="diffusely",
              show_default=True, help="diffusely: config.json and the EMA weights, read by every command like a "
                                      "run; diffusers: unet/ and scheduler/ for diffusers' UNet2DModel.")
def export(run_dir, out, dtype, fmt):
    """Write a run as a model to share: no optimizer state, no raw weights, no logs.

    --format diffusers works for unconditional 2-D pixel runs without patching whose U-Net maps exactly onto
    UNet2DModel (one GroupNorm group count, one attention head width; EDM, or DDPM on a linear or cosine
    schedule); other runs are refused with the reason. Its outputs are checked against the run's before it
    is written.

    \b
    diffusely export runs/shapes --out models/shapes --dtype bf16
    diffusely sample models/shapes -n 16
    diffusely export runs/shapes --out models/shapes-hf --format diffusers
    """
    from ..interop import export_model, to_diffusers

    if fmt == "diffusers" and dtype != "fp32":
        raise click.UsageError("--format diffusers writes float32 weights: drop --dtype (diffusers casts with "
                               "torch_dtype= when it loads)")
    writable(out)
    written = export_model(run_dir, out, dtype) if fmt == "diffusely" else to_diffusers(run_dir, out)
    click.echo(f"exported {run_dir} to {written} ({fmt}, {dtype}, {_size(Path(written))})")
