"""`diffusely <command>`: parses arguments, calls the library, says where results went.

    cli/__init__.py   the `diffusely` group, --debug, the commands registered
    cli/errors.py     the one error boundary: expected failures as `Error: ...`, exit status 1
    cli/flags.py      options several commands share, and value types that name the flag on bad input
    cli/train.py      train, train-autoencoder (configs from diffusely.options)
    cli/sample.py     sample, synth, forward, reverse
    cli/runs.py       info, eval, optimize-schedule
    cli/restore.py    upscale, restore, img2img
    cli/interop.py    import-diffusers, export
    cli/ui.py         ui (the web page, diffusely.ui)
    cli/distill.py    distill
    cli/ema.py        ema (post-hoc EMA)
"""

from __future__ import annotations

import click

from .distill import distill
from .ema import ema
from .errors import Group
from .interop import export, import_diffusers_command
from .restore import img2img, restore, upscale
from .runs import eval_, info, optimize_schedule
from .sample import forward, reverse, sample, synth
from .train import train, train_autoencoder
from .ui import ui


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffusely")
@click.option("--debug", is_flag=True, help="Show the traceback of any error, not only of a bug.")
def main(debug):
    """diffusely: train diffusion models on your images and sample from them."""


for command in (train, train_autoencoder, sample, synth, optimize_schedule, forward, reverse, info, eval_, upscale,
                restore, img2img, import_diffusers_command, export, distill):
    main.add_command(command)
main.add_command(ui)
main.add_command(ema)

__all__ = ["main"]
