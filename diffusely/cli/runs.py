"""The commands that study a trained run: `info`, `eval` and `optimize-schedule`."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import click

from .ema import EMA_LENGTH, format_sweep
from .flags import COUNT, SAMPLER_OPTION, SAMPLING, seed_option
from .sample import device, writable


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(run_dir, as_json):
    """What a run is: data, size, recipe, steps, parameters, last loss."""
    from ..pipelines import describe_run

    facts = describe_run(run_dir)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    width = max(map(len, facts))
    for k, v in facts.items():
        shown = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v
        click.echo(f"{k.replace('_', ' '):<{width}}  {shown}")


@click.command("eval")
@click.argument("run_dir", type=click.Path())
@click.option("--reference", required=True,
              help="Real images to compare with: a folder, a built-in name (shapes), or an .npz of statistics "
                   "(pytorch-fid's, clean-fid's, or one an earlier eval wrote).")
@click.option("-n", "count", type=COUNT, help="Samples to draw (default 1000), or to read from --samples (default all).")
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
@click.option("--domain-steps", type=COUNT, help="Training steps of a new domain network (default 600 classifier, "
              "400 contrastive).")
@click.option("--reference-count", type=COUNT, help="Use a random subset of this many reference images (default all).")
@click.option("--held-out", type=click.Path(file_okay=False), help="Images of the training data's kind the run never saw, "
              "the copy check's scale of a fresh image (a built-in source brings its own; a folder has none without it).")
@SAMPLING
@seed_option()
@click.option("--batch-size", type=COUNT, default=64, show_default=True, help="Images per batch (bounds memory).")
@SAMPLER_OPTION
@EMA_LENGTH
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_(run_dir, reference, count, samples, features, inception_weights, domain_file, domain_steps, reference_count,
          held_out, steps, nfe, sampler, seed, batch_size, options, ema_lengths, quiet):
    """Measure a run's samples against real images: FD, KID, precision, recall, density, coverage; and
    whether they are near-copies of its training images (Carlini et al.'s ratio test, docs/eval.md).

    Writes RUN_DIR/eval.json and RUN_DIR/copies.png (the samples closest to a training image).

    \b
    diffusely eval runs/shapes --reference shapes -n 1000
    diffusely eval runs/photos --reference ~/photos --features inception --inception-weights pt_inception.pth
    diffusely eval runs/shapes --reference shapes --samples runs/shapes/generated
    diffusely eval runs/shapes --reference shapes --ema-length 0.05,0.1,0.2
    """
    from ..metrics import format_copies, format_metrics
    from ..pipelines.evaluate import EVAL_FILE, evaluate_ema_lengths, evaluate_run

    writable(run_dir)
    if domain_file:
        writable(Path(domain_file).parent)
    if ema_lengths and samples:
        raise click.UsageError("--ema-length samples the run with those weights; it cannot measure --samples")
    evaluate = (partial(evaluate_ema_lengths, lengths=ema_lengths) if len(ema_lengths) > 1 else
                partial(evaluate_run, ema_length=ema_lengths[0] if ema_lengths else None))
    report = evaluate(run_dir, reference, count=count, samples=samples, features=features, sampler=sampler,
                      steps=steps, nfe=nfe, seed=seed, batch_size=batch_size, inception_weights=inception_weights,
                      domain_file=domain_file, domain_steps=domain_steps, reference_count=reference_count,
                      held_out=held_out, device=device(), progress=not quiet, **options)
    s, r = report["samples"], report["reference"]
    if s["source"] != "generated":
        how = s["source"]
    else:
        how = f"{s['sampler']}, " + (f"{s['steps']} steps, {s['nfe']} NFE" if s["steps"] else "adaptive steps")
        how += f", post-hoc EMA length {s['ema_length']:g}" if "ema_length" in s else ""
    click.echo(f"{s['count']} samples ({how}) at step {report['step']} against {r['count'] or 'statistics of'} "
               f"reference images ({r['source']}), {report['features']} features")
    click.echo(format_metrics(report["metrics"]))
    click.echo(f"note: {report['comparable']}")
    click.echo(format_copies(report["copies"]))
    if "ema_sweep" in report:
        click.echo(format_sweep(report))
    click.echo(f"wrote {Path(run_dir) / EVAL_FILE}")


@click.command("optimize-schedule")
@click.argument("run_dir", type=click.Path())
@SAMPLING
@click.option("-n", "count", type=COUNT, default=16, show_default=True,
              help="Samples the search runs on (and as many held out).")
@seed_option(1_000_000, "Noise seeds seed .. seed + 2n - 1.")
@SAMPLER_OPTION
def optimize_schedule(run_dir, steps, nfe, sampler, count, seed, options):
    """Find the sigmas that bring a sampler closest to the exact ODE solution for this model.

    Searches the noise levels for that many steps on a small batch (Align Your Steps, Sabour et al.
    2024, in spirit), stores them in RUN_DIR/schedules.json, and `sample`, `reverse` and `eval` use
    them by default for that sampler and step count. Prints the error before (Karras) and after. A sampler that
    adds noise each step (euler_ancestral, ddpm, the SDE ones, ddim with eta or heun with S_churn) has none: name a
    deterministic one where the run's own is one of those (a latent text run's Euler ancestral).

    \b
    diffusely optimize-schedule runs/shapes --sampler unipc --nfe 10
    diffusely optimize-schedule runs/shapes --steps 8 --sampler dpmpp_3m -n 32
    """
    from ..checkpoint import load_run, write_schedule
    from ..pipelines import optimize_schedule as optimize
    from ..pipelines.generate import sampling_plan
    from ..samplers.defaults import added_noise

    run = load_run(run_dir, device())
    writable(run_dir)  # before the search, which takes minutes
    sampler, steps = sampling_plan(run, sampler, steps, nfe)  # takes "DPM++ 2M" and the other names people know
    if steps is None:
        raise click.UsageError(f"{sampler.given!r} chooses its own steps: there is no schedule to optimise")
    noise = added_noise(str(sampler), {**sampler.options, **options})
    if noise is not None:
        raise click.UsageError(f"{sampler}{f' with {noise}' if noise else ''} adds noise each step, so no schedule "
                               f"brings it to the ODE's answer: name a deterministic sampler (--sampler heun with "
                               f"no S_churn, ddim with no eta, unipc, deis, ...)")
    result, before, after = optimize(run, steps, sampler=sampler, n=count, seed=seed, **{**sampler.options, **options})
    path = write_schedule(run_dir, sampler, steps, result.sigmas)
    click.echo(f"{sampler}, {steps} steps: RMS error against the ODE solution (adaptive, rtol 1e-5)")
    click.echo(f"  search batch ({count}):  Karras {result.error_karras:.4f} -> optimised {result.error:.4f} "
               f"({result.evaluations} sampler runs)")
    click.echo(f"  held-out batch ({count}): Karras {before:.4f} -> optimised {after:.4f}")
    click.echo("  sigmas: " + ", ".join(f"{s:.4g}" for s in result.sigmas.tolist()))
    click.echo(f"wrote {path}")
