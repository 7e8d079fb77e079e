"""The options several commands share, declared once, and the value types that check a flag where it is read
(a bad value names the flag and the allowed range, exit status 2)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..config import MAX_WIDTH, SIGMA_REL_MAX  # MAX_WIDTH: one bound for --channels and config.json
from ..layout import DIRECTIONS
from ..nets.fast import PRECISIONS
from ..options import RESUMABLE_HELP
from ..samplers import SAMPLERS

MAX_SEED = 2 ** 63 - 1
MAX_IMAGE_SIZE = 4096  # pixel space: beyond this a U-Net's activations do not fit any one device

COUNT = click.IntRange(min=1)
SEED = click.IntRange(0, MAX_SEED)
IMAGE_SIZE = click.IntRange(4, MAX_IMAGE_SIZE)
SAMPLE_RATE = click.IntRange(1000, 192_000)  # Hz: below 1 kHz nothing audible is left; 192 kHz is studio audio's top


class Finite(click.ParamType):
    """A finite float, optionally > or >= a bound: `--guidance inf` or `--lr nan` name the flag, never reach the math."""

    name = "number"

    def __init__(self, above: float | None = None, at_least: float | None = None):
        self.above, self.at_least = above, at_least

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not finite; give a number", param, ctx)
        if self.above is not None and not x > self.above:
            self.fail(f"{value} must be > {self.above:g}", param, ctx)
        if self.at_least is not None and not x >= self.at_least:
            self.fail(f"{value} must be >= {self.at_least:g}", param, ctx)
        return x


def int_list(lowest: int, highest: int, example: str):
    """A callback that reads comma-separated integers in [lowest, highest], such as --channels 64,128,128."""
    def read(ctx, param, value):
        if value is None:
            return None
        try:
            values = tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers such as {example}, got {value!r}") from None
        bad = [v for v in values if not lowest <= v <= highest]
        if bad or not values:
            raise click.BadParameter(f"each value must lie in {lowest}..{highest}, got {value!r}")
        return values
    return read


def sigma_rel_list(ctx, param, value) -> list[float]:
    """--ema-length 0.05,0.1,0.2 -> [0.05, 0.1, 0.2] (empty when not given), each an EMA length (sigma_rel) in
    (0, 0.28]."""
    if value is None:
        return []
    try:
        lengths = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0.05,0.1,0.2") from None
    if not lengths or not all(0 < v <= SIGMA_REL_MAX for v in lengths):
        raise click.BadParameter(f"{value!r}: give lengths (sigma_rel) in (0, {SIGMA_REL_MAX}], e.g. 0.05,0.1,0.2")
    return lengths


def sampler_options(ctx, param, values):
    """-o KEY=VALUE pairs -> {KEY: float}, for sampler options such as S_churn or eta; the values must be finite."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"expected KEY=NUMBER such as S_churn=30 or eta=0.5, got {item!r}") from None
        if not math.isfinite(out[key.strip()]):
            raise click.BadParameter(f"{item!r} is not finite; give a number")
    return out


def stack(*options):
    """One decorator applying `options` in the order listed (the first is shown first in --help)."""
    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


NFE = click.option("--nfe", type=COUNT, help="A budget of network evaluations instead of --steps: "
                   "the sampler takes as many steps as fit (heun: --nfe 10 -> 5 steps, 9 evaluations). Without "
                   "--sampler, a budget under 35 takes the sampler measured best for it (unipc to 7, deis to 34; "
                   "docs/samplers.md).")
SAMPLER_OPTION = click.option("-o", "--option", "options", multiple=True, callback=sampler_options, metavar="KEY=VALUE",
                              help="A sampler option, repeatable: -o S_churn=30 -o S_tmax=10 (heun, euler), "
                                   "-o eta=0.5 (ddim).")
SAMPLING = stack(
    click.option("--steps", type=COUNT, help="Sampler steps (default: the run's; restore, upscale: 35)."),
    NFE,
    click.option("--sampler", type=str, help=f"One of: {', '.join(SAMPLERS)} (default: the run's, or for --nfe alone the one best at "
                 "that budget; restore, upscale: see their help), or a name "
                 "A1111, ComfyUI, k-diffusion or diffusers users type, which brings its schedule and options: "
                 "'DPM++ 2M Karras', 'Euler a', dpmpp_2m_sde_gpu, sample_dpmpp_2m, DPMSolverMultistepScheduler "
                 "(all of them: docs/samplers-aliases.md)."),
)
QUIET = click.option("--quiet", is_flag=True, help="No progress bar.")


def seed_option(default=0, help="Sample i uses seed + i."):
    return click.option("--seed", type=SEED, default=default, show_default=default is not None, help=help)


INFERENCE = stack(
    click.option("--precision", type=click.Choice(PRECISIONS),
                 help="The network's arithmetic when sampling. auto (default; on --resume, the job's own): bf16 "
                      "autocast where bf16 is fast (CUDA GPUs from Ampere on, CPUs with native bf16), else float32."),
    click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=None,
                 help="Replay the network from CUDA graphs, one per batch shape (default: on with a CUDA GPU)."),
)

CONDITIONS = stack(
    click.option("--class", "classes", multiple=True, metavar="NAME",
                 help="Sample this class (a name from the run, or an index); repeat it or separate with "
                      "commas to cycle classes over the samples."),
    click.option("--prompt", "prompt", multiple=True, metavar="TEXT",
                 help="Sample this prompt (a text run); repeat it to cycle prompts over the samples."),
    click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, exists=True),
                 help="A file of prompts, one a line, cycled over the samples."),
    click.option("--negative-prompt", "negative_prompt", multiple=True, metavar="TEXT",
                 help="What to steer away from: replaces the unconditional half of guidance."),
    click.option("--guidance", type=Finite(),
                 help="Classifier-free guidance scale (1: none; default 2 with --class, 3 with a prompt)."),
)


def conditions(classes, prompt, prompts_file, negative_prompt, guidance) -> dict:
    """The parsed conditioning flags as keyword arguments of pipelines.generate."""
    prompts = list(prompt)
    if prompts_file:
        try:  # as caption files are read: a byte order mark dropped, lines split at newlines only (a pipe read too)
            lines = [line.strip() for line in Path(prompts_file).read_bytes().decode("utf-8-sig").split("\n")]
        except UnicodeDecodeError as e:
            raise click.BadParameter(f"{prompts_file} is not UTF-8 text ({e.reason} at byte {e.start}): save it as "
                                     "UTF-8", param_hint="--prompts") from None
        if not any(lines):
            raise click.BadParameter(f"{prompts_file} holds no prompts (one a line)", param_hint="--prompts")
        prompts += [line for line in lines if line]
    return {"classes": [c.strip() for value in classes for c in value.split(",") if c.strip()] or None,
            "prompts": prompts or None, "negative_prompts": list(negative_prompt) or None, "guidance": guidance}


def _resumable(text: str) -> str:
    return f"{text} {RESUMABLE_HELP}"


# what `train` and `train-autoencoder` share: the data, the network's size, the optimiser, the run's files
TRAINING = stack(
    click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory to write."),
    click.option("--steps", type=COUNT, help=_resumable("Training steps to reach (default 4000).")),
    click.option("--batch-size", type=COUNT, help="Images per step (per process under torchrun)."),
    click.option("--image-size", type=IMAGE_SIZE, help=f"Train at this square size (default 32; at most {MAX_IMAGE_SIZE})."),
    click.option("--channels", callback=int_list(1, MAX_WIDTH, "64,128,128"),
                 help="Network widths per level, e.g. 64,128,128 (each 1..4096)."),
    click.option("--blocks-per-level", type=click.IntRange(1, 64), help="Residual blocks per network level."),
    click.option("--lr", type=Finite(above=0), help="Peak learning rate of AdamW."),
    click.option("--max-shapes", type=click.IntRange(1, 64), help="Built-in shapes: up to this many shapes per image "
                 "(default 1; 3 for a text run)."),
    click.option("--grayscale", is_flag=True, default=None, help="Train on one channel (the default for a folder "
                 "whose images are all grayscale)."),
    click.option("--rgb", is_flag=True, default=None, help="Train on three channels, even when every image is grayscale."),
    click.option("--flip/--no-flip", default=None, help="Mirror images left to right at random (default: off, as EDM "
                 "and diffusers; wrong where a mirror image means something else: text, a scan's left and right)."),
    click.option("--allow-outside", is_flag=True, default=None,
                 help="Let a COCO file name images outside its dataset folder (absolute, or with ..)."),
    click.option("--checkpoint-every", type=COUNT, help=_resumable("Steps between checkpoints.")),
    click.option("--keep", type=COUNT, help=_resumable("Keep the last N good checkpoints (default 2), to roll a late "
                                                       "divergence back.")),
    click.option("--sample-every", type=COUNT, help=_resumable("Steps between sample pictures.")),
    click.option("--log-every", type=COUNT, help=_resumable("Steps between rows of log.csv (default 10).")),
    seed_option(None, "Seed of weights, batches and noise (default 0)."),
    click.option("--precision", type=click.Choice(PRECISIONS),
                 help="auto (default): bf16 autocast on CUDA and on CPUs with native bf16 (video training on a "
                 "CPU: fp32), else fp32."),
    click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint. Only the options "
                 "marked 'May be changed on --resume' may differ from the run's; any other must agree with it."),
    click.option("--quiet", is_flag=True, help=_resumable("No progress bar.")),
)

DIRECTIONS_OPTION = click.option(
    "--directions", type=click.Choice(DIRECTIONS),
    help="Diagonal directions of plain boxes in a layout run. auto (default): read off each box's pixels, unless "
         "polygon labels give them; labels: only what the labels say.")
