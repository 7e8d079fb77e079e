"""`diffusely ema`: EDM2's post-hoc EMA, an EMA of any length reconstructed from a run's snapshots."""

from __future__ import annotations

from pathlib import Path

import click

from .flags import Finite, sigma_rel_list
from .sample import writable


@click.command("ema")
@click.argument("run_dir", type=click.Path())
@click.option("--length", type=Finite(above=0), required=True,
              help="The EMA's length as EDM2's sigma_rel, its width relative to the run's steps, in (0, 0.28] "
                   "(EDM2's best: around 0.05 to 0.15).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write the weights to this .safetensors file instead of the run's model.safetensors.")
def ema(run_dir, length, out):
    """Reconstruct the EMA of --length from the run's power-function EMA snapshots (EDM2's post-hoc EMA) and make
    it the run's sampling weights, or write it to --out. A run stores snapshots when trained with
    `train --posthoc-ema` (docs/ema.md); `diffusely eval RUN --ema-length 0.05,0.1,0.2` measures lengths first.

    \b
    diffusely ema runs/shapes --length 0.1
    diffusely ema runs/shapes --length 0.05 --out runs/shapes-ema005.safetensors
    """
    from ..train.posthoc import write_reconstruction

    writable(Path(out).parent if out else run_dir)
    path, r = write_reconstruction(run_dir, length, out)
    sigma_rels = sorted({s.sigma_rel for s in r.snapshots})
    click.echo(f"EMA of length {length:g} at step {r.step}, from {len(r.snapshots)} snapshots (sigma_rel "
               f"{', '.join(f'{s:g}' for s in sigma_rels)}); its profile is {r.error:.2%} off the exact one")
    click.echo(f"wrote {path}" + ("  (the run's sampling weights: sample, eval and the rest now use them)"
                                  if out is None else ""))


EMA_LENGTH = click.option("--ema-length", "ema_lengths", callback=sigma_rel_list, metavar="L[,L...]",
                          help="Sample with the post-hoc EMA of this length (sigma_rel) reconstructed from the run's "
                               "snapshots (see `diffusely ema`); several, comma-separated, measure each and name the "
                               "best.")


def format_sweep(report: dict) -> str:
    """The FD of each EMA length of an evaluate_ema_lengths report, the best marked."""
    sweep = report["ema_sweep"]
    lines = [f"  ema length {length:>6}  FD {fd:.4g}" + ("  <- best" if float(length) == sweep["best"] else "")
             for length, fd in sweep["fd"].items()]
    return "\n".join(["FD by post-hoc EMA length:", *lines, f"best: --ema-length {sweep['best']:g} "
                      f"(make it the run's weights: diffusely ema RUN --length {sweep['best']:g})"])
