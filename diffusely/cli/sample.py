"""The commands that draw from a run: `sample`, `synth`, and the strips `forward` and `reverse`."""

from __future__ import annotations

from pathlib import Path

import click

from .flags import COUNT, CONDITIONS, INFERENCE, QUIET, SAMPLER_OPTION, SAMPLING, Finite, conditions, seed_option


def device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def writable(directory) -> None:
    """Check, before any work, that `directory` (or the folder that would hold it) can be written."""
    from .._files import check_writable
    check_writable(directory)


def from_png(ctx: click.Context, image, run_dir, out_dir, overwrite, cuda_graphs, quiet) -> None:
    """`sample --from-png`: draw IMAGE again from the parameters in it, refusing flags that would change it."""
    from ..pipelines.generate import reproduce

    fixed = ("count", "steps", "nfe", "sampler", "seed", "fmt", "grid", "classes", "prompt", "prompts_file",
             "negative_prompt", "guidance", "precision", "options")
    given = [p.opts[-1] for p in ctx.command.params
             if p.name in fixed and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--from-png takes how to draw from the image itself: drop {', '.join(given)}")
    if out_dir:
        writable(out_dir)
    result = reproduce(image, out_dir, run_dir=run_dir, device=device(), cuda_graphs=cuda_graphs,
                       overwrite=overwrite, progress=not quiet)
    p = result["parameters"]
    click.echo(f"wrote {result['path']} ({p['sampler']}, {p['steps'] or 'adaptive'} steps, seed {p['seed']})")
    if result["same"]:
        click.echo(f"identical to {image}, pixel for pixel")
    else:
        click.echo(f"note: it differs from {image}, which was drawn on {p['device']} in {p['precision']}; kernels "
                   f"on another device or thread count can round differently")


def drawn_with(plan, nfe) -> str:
    """How a recipe draws, in words: "unipc, 5 steps, schedule optimised for this run; picked for --nfe 5"."""
    if plan.steps is None:
        return f"{plan.sampler.given}, adaptive steps"
    schedule = "schedule optimised for this run" if plan.optimised else \
        f"{plan.spacing if isinstance(plan.spacing, str) else 'karras' if plan.spacing is None else 'given'} spacing"
    chosen = f"; picked for --nfe {nfe} (docs/samplers.md)" if plan.sampler.fallback else ""
    return f"{plan.sampler.given}, {plan.steps} steps, {schedule}{chosen}"


def given_frames(run, path) -> "torch.Tensor":
    """The first data.given_frames frames of the clip at `path`, at the run's size: (C, k, H, W) in [-1, 1]."""
    from ..data import to_grayscale, to_tensor
    from ..data.video import DEFAULT_FPS, first_clip

    d = run.config.data
    clip = first_clip(path, d.image_size, max(1, d.given_frames), d.sample_rate or DEFAULT_FPS)  # the run's fps
    return to_tensor((clip if d.channels == 3 else to_grayscale(clip))[None])[0]


@click.command()
@click.argument("run_dir", type=click.Path(), required=False)
@click.option("-n", "count", type=COUNT, default=16, show_default=True, help="Number of samples.")
@SAMPLING
@seed_option()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for the samples (default RUN_DIR/generated).")
@click.option("--overwrite", is_flag=True, help="Replace samples of the same names in --out (by default a folder that "
              "holds any of them is refused: choose another --seed or --out to add samples).")
@click.option("--format", "fmt", type=click.Choice(["png", "wav", "gif", "mp4", "npy"]),
              help="png (images), wav (audio, 16-bit PCM) or gif (video), the default for the run's data; mp4 "
                   "(video, H.264: pip install 'diffusely[video]'); or npy.")
@click.option("--grid", type=click.Path(dir_okay=False), help="Also save all samples as one grid PNG (audio: "
              "waveforms over log-mel spectrograms; video: a strip of frames per clip).")
@click.option("--batch-size", type=COUNT, default=64, show_default=True, help="Samples per batch (bounds memory).")
@CONDITIONS
@INFERENCE
@SAMPLER_OPTION
@QUIET
@click.option("--first-frames", type=click.Path(dir_okay=False, exists=True),
              help="A video run trained with --given-frames K: continue this clip (GIF, MP4, WebM) from its first K "
                   "frames.")
@click.option("--from-png", "png", type=click.Path(dir_okay=False, exists=True),
              help="Draw this PNG (written by `diffusely sample`) again, bit for bit, from the parameters it holds; "
                   "RUN_DIR defaults to the run it names.")
@click.pass_context
def sample(ctx, run_dir, count, steps, nfe, sampler, seed, out_dir, overwrite, fmt, grid, batch_size, classes, prompt,
           prompts_file, negative_prompt, guidance, precision, cuda_graphs, options, quiet, first_frames, png):
    """Draw N samples from a trained run, of a class or a prompt where it was trained on them.

    Sample i is written as OUT/{seed + i:06d}.png, with how it was drawn in its text chunks (A1111's
    `parameters`, and JSON that --from-png reads); with prompts or classes, OUT/metadata.jsonl records which
    sample got which. --sampler also takes the names A1111, ComfyUI, k-diffusion and diffusers use.

    \b
    diffusely sample runs/shapes -n 64 --grid grid.png
    diffusely sample runs/shapes -n 8 --sampler euler --steps 50 --format npy
    diffusely sample runs/shapes -n 64 --sampler unipc --nfe 10
    diffusely sample runs/shapes -n 64 --steps 25 -o S_churn=30 -o S_tmin=0.05 -o S_tmax=10 -o S_noise=1.003
    diffusely sample runs/classes -n 16 --class circle,square --guidance 3
    diffusely sample runs/text -n 8 --prompt "a large red circle on a navy background" --negative-prompt "a square"
    diffusely sample runs/text -n 64 --prompts prompts.txt --grid grid.png
    diffusely sample runs/shapes -n 16 --sampler "DPM++ 2M Karras" --nfe 10
    diffusely sample --from-png runs/shapes/generated/000003.png --out again
    diffusely sample runs/video -n 4 --first-frames clip.gif --format mp4 --grid frames.png
    """
    from ..checkpoint import load_run
    from ..pipelines import write_samples

    if png:
        return from_png(ctx, png, run_dir, out_dir, overwrite, cuda_graphs, quiet)
    if run_dir is None:
        raise click.UsageError("give RUN_DIR, the run to sample (or --from-png IMAGE)")

    out = Path(out_dir) if out_dir else Path(run_dir) / "generated"
    asked = conditions(classes, prompt, prompts_file, negative_prompt, guidance)
    run = load_run(run_dir, device(), precision=precision or "auto", cuda_graphs=cuda_graphs)
    if first_frames:
        asked["first_frames"] = [given_frames(run, first_frames)]
    writable(out)
    if grid:
        writable(Path(grid).parent)
    result = write_samples(run, out, count, fmt=fmt, seed=seed, grid=grid, overwrite=overwrite, steps=steps, nfe=nfe,
                           sampler=sampler, batch_size=batch_size, progress=not quiet, **asked, **options)
    click.echo(f"wrote {result['count']} samples to {out} ({drawn_with(result['plan'], nfe)})")
    if grid:
        click.echo(f"grid: {grid}")


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("-n", "count", type=COUNT, default=100, show_default=True, help="Number of images.")
@click.option("--classes", help="Only boxes of these classes, comma-separated (e.g. scratch,crack).")
@click.option("--balance", is_flag=True, help="Draw every class equally often (oversamples the rare ones).")
@click.option("--layouts", "layouts_file", type=click.Path(dir_okay=False),
              help='Your own layouts: JSON (lines) of [{"class": "crack", "box": [x0, y0, x1, y1]}], corners 0..1, '
                   'optionally with "direction": 1 or -1 (see docs/synth.md).')
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True,
              help="Share of images in images/val.")
@click.option("--coco", is_flag=True, help="Also write annotations/instances_{train,val}.json (COCO).")
@click.option("--guidance", type=Finite(), help="Guidance towards the layout (default 2; 1: none).")
@SAMPLING
@seed_option(help="Image i uses layout (seed, i) and noise seed + i.")
@click.option("--batch-size", type=COUNT, default=16, show_default=True, help="Images per batch (bounds memory).")
@click.option("--resume", is_flag=True, help="Finish a stopped job in --out (same settings).")
@click.option("--no-copies/--allow-copies", default=True, show_default=True,
              help="Draw again (noise seed + i + n, + 2n, ...) each image that is a near-copy of a training image; "
                   "synth.json records which. --allow-copies keeps them.")
@INFERENCE
@SAMPLER_OPTION
@QUIET
def synth(run_dir, out_dir, count, classes, balance, layouts_file, val_fraction, coco, guidance, steps, nfe, sampler,
          seed, batch_size, resume, no_copies, precision, cuda_graphs, options, quiet):
    """Generate a labelled detection dataset (Ultralytics YOLO layout) from a layout run.

    Layouts are drawn from the training layouts' statistics (box counts, sizes, positions, class
    frequencies), or read from --layouts; each image is generated for its layout, which becomes its labels.
    An image that copies a training image is drawn again (see docs/synth.md), unless --allow-copies.

    \b
    diffusely synth runs/defects --out datasets/synth -n 1000
    diffusely synth runs/defects --out datasets/cracks -n 500 --classes crack --coco
    diffusely synth runs/defects --out datasets/balanced -n 1000 --balance
    diffusely synth runs/defects --out datasets/synth -n 1000 --resume      # after a stop
    yolo train data=datasets/synth/data.yaml model=yolo11n.yaml
    """
    from ..checkpoint import load_run
    from ..pipelines.synth import job_settings, synthesize

    if precision is None:  # a resumed job keeps the precision it was begun in: it changes the images
        precision = (job_settings(out_dir).get("precision") if resume else None) or "auto"
    run = load_run(run_dir, device(), precision=precision, cuda_graphs=cuda_graphs)
    writable(out_dir)
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    result = synthesize(run, out_dir, count, classes=wanted, balance=balance, layouts_file=layouts_file, seed=seed,
                        val_fraction=val_fraction, coco=coco, resume=resume, batch_size=batch_size, guidance=guidance,
                        sampler=sampler, steps=steps, nfe=nfe, no_copies=no_copies, progress=not quiet, options=options)
    per_class = ", ".join(f"{k} {v}" for k, v in result["per_class"].items())
    click.echo(f"{result['images']} images ({result['made']} made now; train {result['train']}, val {result['val']}), "
               f"{result['boxes']} boxes: {per_class}")
    if no_copies:
        click.echo(f"{result['replaced']} near-copies of training images drawn again (listed in {out_dir}/synth.json)")
    click.echo(f"dataset: {out_dir}/data.yaml  contact sheet: {out_dir}/contact_sheet.png")


@click.command()
@click.argument("image", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--size", type=click.IntRange(4, 480_000),
              help="Resize and crop the image to this size (default 64), or an audio clip's samples (default 8000, 1 s).")
@seed_option(help="Seed of the noise.")
def forward(image, out, size, seed):
    """Show the forward process: IMAGE at rising noise levels sigma (VP scale).

    IMAGE is an image or audio file (WAV, FLAC, OGG: shown as waveform over log-mel spectrogram), a video (GIF,
    MP4, WebM: its first 8 frames, a strip each), or `shapes` (`sounds`, `moving-shapes`) for the first sample of the
    built-in data.
    """
    from .. import viz
    from ..data import modality_of
    from ..pipelines import FORWARD_SIGMAS, forward_strip, strip_image
    from ..pipelines.strips import strip_pictures

    writable(Path(out).parent)
    x = strip_image(image, size)
    kind = {2: "audio", 4: "video"}.get(x.ndim, modality_of(image))  # the sample's axes say, whatever its name
    rows, scale = strip_pictures([forward_strip(x, seed=seed)], kind)
    viz.save_strip(rows, out, labels=[f"σ={s:g}" for s in FORWARD_SIGMAS], scale=scale)
    click.echo(f"forward process: {out}")


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@seed_option(help="Seed of the sample's noise.")
@SAMPLING
@CONDITIONS
@SAMPLER_OPTION
def reverse(run_dir, out, seed, steps, nfe, sampler, classes, prompt, prompts_file, negative_prompt, guidance, options):
    """Show the reverse process: one sample's noisy state and the model's x0 estimate at each step
    (of the first --class or --prompt, where given)."""
    from .. import viz
    from ..checkpoint import load_run
    from ..pipelines import reverse_strip
    from ..pipelines.strips import strip_pictures

    run = load_run(run_dir, device())
    writable(Path(out).parent)
    asked = conditions(classes, prompt, prompts_file, negative_prompt, guidance)
    xs, x0s, sigmas = reverse_strip(run, seed=seed, steps=steps, nfe=nfe, sampler=sampler, **asked, **options)
    rows, scale = strip_pictures([xs, x0s], run.config.data.modality, run.config.data.sample_rate)
    viz.save_strip(rows, out, labels=[f"σ={s:.3g}" for s in sigmas], row_labels=["x", "x0 estimate"], scale=scale)
    click.echo(f"reverse process: {out}")
