"""`diffusely distill`: a teacher run in, a few-step student run out (diffusely.distill)."""

from __future__ import annotations

import click

from .flags import COUNT, QUIET, Finite

# options that name the student's training (config field: option), checked against the run on --resume
DISTILL_FIELDS = {"nfe": "--nfe", "grid_steps": "--grid-steps", "target_decay": "--target-decay"}


@click.command()
@click.argument("teacher", required=False, type=click.Path(file_okay=False))
@click.option("--nfe", type=click.IntRange(1, 64), help="Network evaluations the student samples in: 1, 2 or 4 "
              "(default 1).")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Student run directory to write.")
@click.option("--steps", type=COUNT, help="Distillation steps to reach (default 2000). May be changed on --resume.")
@click.option("--batch-size", type=COUNT, help="Images per step (default: the teacher's).")
@click.option("--lr", type=Finite(above=0), help="Learning rate of AdamW, constant (default 1e-4).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Seed of batches, noise and grid levels (default: the "
              "teacher's).")
@click.option("--grid-steps", type=click.IntRange(2, 1000), help="Noise levels the ODE is cut into (default 18).")
@click.option("--target-decay", type=Finite(at_least=0), help="Target network's EMA decay per step (default 0.95).")
@click.option("--checkpoint-every", type=COUNT, help="Steps between checkpoints. May be changed on --resume.")
@click.option("--keep", type=COUNT, help="Keep the last N good checkpoints (default 2). May be changed on --resume.")
@click.option("--log-every", type=COUNT, help="Steps between rows of log.csv (default 10). May be changed on --resume.")
@click.option("--resume", is_flag=True, help="Continue the student in --out from its last checkpoint.")
@QUIET
def distill(teacher, run_dir, resume, quiet, **options):
    """Distil the run in TEACHER into a student that samples in --nfe network evaluations.

    Consistency distillation (Song et al. 2023): the student, initialised from the teacher, learns to map any
    point of the teacher's ODE to its end. The student is a run directory like any other: `sample`, `eval` and
    `synth` take it, with the teacher's conditions, and sample it in --nfe evaluations by default.

    \b
    diffusely distill runs/shapes --nfe 1 --out runs/shapes-1nfe --steps 2000
    diffusely distill runs/shapes --nfe 2 --out runs/shapes-2nfe
    diffusely distill --out runs/shapes-1nfe --resume --steps 4000
    diffusely sample runs/shapes-1nfe --n 64 --out samples/
    """
    from ..distill.train import distill as run_distill

    config = _config(teacher, run_dir, resume, options)
    result = run_distill(config, run_dir, resume=resume, progress=not quiet)
    sigmas = ", ".join(f"{s:.4g}" for s in result["sigmas"])
    click.echo(f"distilled {result['step']} steps, last loss {result['loss']:.4g}: samples in {result['nfe']} "
               f"evaluations at sigmas {sigmas}")
    click.echo(f"student run directory: {run_dir}  (sample it: diffusely sample {run_dir})")


def _config(teacher, run_dir, resume: bool, options: dict):
    """A new student's config, or on --resume the student's own with the resumable options set."""
    from ..config import ConfigError
    from ..distill.train import student_config
    from ..options import resumed_config

    if not resume:
        if teacher is None:
            raise click.UsageError("give the TEACHER run directory to distil (or --resume to continue --out)")
        distill_options = {k: options.pop(k) for k in DISTILL_FIELDS}
        return student_config(teacher, distill_options["nfe"] or 1,
                              **{k: v for k, v in distill_options.items() if k != "nfe" and v is not None},
                              **options)
    if teacher is not None:
        raise click.UsageError("--resume continues the student's own teacher: drop TEACHER")
    config = resumed_config(run_dir, None, {k: v for k, v in options.items() if k not in DISTILL_FIELDS})[0]
    if config.distill is None:
        raise ConfigError(f"{run_dir} is not a student run; distil one with `diffusely distill TEACHER --out DIR`")
    for name, flag in DISTILL_FIELDS.items():
        value = options[name]
        if value is not None and value != getattr(config.distill, name):
            raise ConfigError(f"{flag} {value} differs from the student's {getattr(config.distill, name)}: a resumed "
                              f"student keeps its own; drop {flag}, or distil a new student into another --out")
    return config
