"""When does a model start copying its training images? Near-copy share against training steps and set size.

For each dataset (built-in shapes, defects) and each training-set size (50, 200, 1000 images, a folder of the
first N images of seed 0), one run of diffusely's default recipe (EDM, Heun 18 steps; a U-Net of channels
32,64,64 at 32 x 32, batch 32, flips) is trained, and at each --evals step
`diffusely eval` (pipelines.evaluate.evaluate_run) measures its samples:
  FD            Fréchet distance in domain features trained once on the held-out images (comparable within
                this benchmark only), lower is better
  near-copies   share of samples whose ratio d1 / mean(d1..dk) to the training images is under 1/6
                (metrics.copies: Carlini et al. 2023's test, calibrated on these data sets)
  ratio 5%      the samples' 5% ratio quantile (a copy is near 0; fresh images of these sets sit above 0.2)
  held-out      share of held-out images (seed 1, never trained on) flagged: the test's false alarms
The learning rate stays constant after warm-up (decay_from 1), so the snapshot at S steps stands for a run of
S steps without its final decay. The row with the lowest FD of each run is marked: early stopping there is
what a user would do, and its near-copy share is what they would get.

    python benchmarks/memorization.py --out bench/memorization            # about 3 hours on 2 free CPU cores
    python benchmarks/memorization.py --out bench/mem-shapes --datasets shapes            # about 1.5 hours
    python benchmarks/memorization.py --out /tmp/mem --quick              # under 2 minutes: the script works
    python benchmarks/memorization.py --out bench/mem-dropout --dropout 0.1 --datasets shapes   # a recipe choice

The full run's time is an estimate: this U-Net trains ~90 images/s on the 2-core CPU (benchmarks/NOTES.md), so
~0.36 s a step and ~24 minutes a run of 4000 steps, 6 runs, plus 5 measurements a run of 500 samples (~1 minute
each). Copying appears first in the 50-image runs, if at all within 4000 steps: extend --evals (8000, 16000)
where the share is still 0 there.

Writes OUT/results.json (every row), OUT/memorization.png (near-copy share and FD against steps, a line per
set size, a column per dataset) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from diffusely._files import atomic_write_text
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.data import BUILTIN
from diffusely.nets import UNetConfig
from diffusely.pipelines.evaluate import evaluate_run
from diffusely.train import train

SIZE = 32  # the copy test's threshold was calibrated at 32 x 32


def write_folder(folder: Path, images: np.ndarray) -> Path:
    """(N, S, S, 3) uint8 images as a flat folder of PNGs (written once: a folder that exists is kept)."""
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return folder


def snapshots(args, dataset: str, count: int, held: Path, out: Path) -> list[dict]:
    """Train on the first `count` images of `dataset` (seed 0), measuring it at each of args.evals steps."""
    evals = [s for s in args.evals if s <= args.stop.get(count, max(args.evals))]
    images = write_folder(out / "data" / f"{dataset}-{count}", BUILTIN[dataset](SIZE, 0, count=count).images)
    run_dir = out / "runs" / f"{dataset}-{count}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run of an earlier invocation: trained again from the start
    config = RunConfig(model=UNetConfig(channels=args.channels, dropout=args.dropout,
                                        **({"blocks_per_level": 1, "groups": 8} if args.quick else {})),
                       data=DataConfig(source=str(images), image_size=SIZE, flip=not args.no_flip),
                       train=TrainConfig(steps=max(evals), batch_size=args.batch_size, decay_from=1.0,
                                         warmup_steps=min(200, min(evals) // 2), checkpoint_every=min(evals),
                                         sample_every=max(evals), keep=1, schedule_search=0.0))
    rows, started = [], time.perf_counter()

    def measure(step: int) -> None:
        if step not in evals:
            return
        trained = time.perf_counter() - started - sum(r["eval_seconds"] for r in rows)
        t = time.perf_counter()
        report = evaluate_run(run_dir, str(held), count=args.samples, steps=args.sample_steps, seed=0,
                              held_out=str(held), domain_file=str(out / f"domain-{dataset}.safetensors"),
                              domain_steps=args.domain_steps, progress=False)
        pixel = report["copies"]["pixel"]
        rows.append({"dataset": dataset, "images": count, "steps": step, "fd": report["metrics"]["fd"],
                     "near_copies": pixel["near_copies"], "ratio_5%": pixel["ratio"]["samples"]["5%"],
                     "ratio_min": pixel["ratio"]["samples"]["min"], "train_min": pixel["ratio"]["train"]["min"],
                     "held_out_flagged": pixel["flagged"]["held_out"], "train_seconds": round(trained, 1),
                     "eval_seconds": round(time.perf_counter() - t, 1)})
        print(row_text(rows[-1]), flush=True)

    train(config, run_dir, progress=False, on_checkpoint=measure)
    best = min(rows, key=lambda r: r["fd"])
    best["fd_minimum"] = True
    return rows


HEADER = (f"{'dataset':<8} {'images':>6} {'steps':>6} {'FD':>8} {'near-copies':>11} {'ratio 5%':>8} "
          f"{'ratio min':>9} {'train min':>9} {'held-out':>8}  {'train s':>7} {'eval s':>6}")


def row_text(r: dict) -> str:
    return (f"{r['dataset']:<8} {r['images']:>6} {r['steps']:>6} {r['fd']:>8.3f} {100 * r['near_copies']:>10.1f}% "
            f"{r['ratio_5%']:>8.3f} {r['ratio_min']:>9.3f} {r['train_min']:>9.3f} {100 * r['held_out_flagged']:>7.1f}%"
            f"  {r['train_seconds']:>7.0f} {r['eval_seconds']:>6.0f}" + ("  <- FD minimum" if r.get("fd_minimum") else ""))


def plot(rows: list[dict], path: Path) -> None:
    """Near-copy share (top) and FD (bottom) against steps: a line per set size, a column per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False, sharex="col")
    for col, dataset in enumerate(datasets):
        for count in sorted({r["images"] for r in rows if r["dataset"] == dataset}):
            mine = [r for r in rows if r["dataset"] == dataset and r["images"] == count]
            steps = [r["steps"] for r in mine]
            line, = axes[0, col].plot(steps, [100 * r["near_copies"] for r in mine], "o-", label=f"{count} images")
            axes[1, col].plot(steps, [r["fd"] for r in mine], "o-", color=line.get_color())
            best = next(r for r in mine if r.get("fd_minimum"))  # early stopping at the FD minimum
            axes[0, col].plot(best["steps"], 100 * best["near_copies"], "*", ms=14, color=line.get_color())
        top = max(100 * r["near_copies"] for r in rows if r["dataset"] == dataset)
        axes[0, col].set_ylim(-1, max(10, 1.1 * top))  # the share from 0: no copies reads as a flat floor
        axes[0, col].set_title(dataset)
        axes[0, col].set_ylabel("near-copies of training images (%)")
        axes[1, col].set_ylabel("FD (domain features)")
        axes[1, col].set_xlabel("training steps")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[0, col].legend(title="training set (* FD minimum)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="A tiny network, 2 sizes, 3 snapshots, 64 samples: minutes.")
    p.add_argument("--datasets", default=None, help="Comma-separated built-in names (default shapes,defects).")
    p.add_argument("--sizes", default=None, help="Training-set sizes (default 50,200,1000).")
    p.add_argument("--evals", default=None, help="Steps to measure at (default 250,500,1000,2000,4000).")
    p.add_argument("--stop", default="", help="Fewer steps for some set sizes, e.g. 200=2000,1000=2000: large sets "
                   "copy last, so the longest runs are spent on the smallest.")
    p.add_argument("--channels", default=None, help="U-Net channels per level (default 32,64,64).")
    p.add_argument("--samples", type=int, default=None, help="Samples per measurement (default 500).")
    p.add_argument("--dropout", type=float, default=0.0, help="U-Net dropout (a recipe choice to compare).")
    p.add_argument("--no-flip", action="store_true", help="Train without mirrored images (the default flips).")
    p.add_argument("--rows", type=Path, default=None, help="An earlier invocation's results.json: its rows go first "
                   "in the table and the plot (e.g. shapes measured before, defects now).")
    args = p.parse_args()
    q = args.quick
    args.datasets = (args.datasets or ("shapes" if q else "shapes,defects")).split(",")
    args.sizes = [int(s) for s in (args.sizes or ("50,200" if q else "50,200,1000")).split(",")]
    args.evals = [int(s) for s in (args.evals or ("20,40,80" if q else "250,500,1000,2000,4000")).split(",")]
    args.stop = dict(tuple(int(v) for v in item.split("=")) for item in args.stop.split(",") if item)
    args.channels = tuple(int(c) for c in (args.channels or ("16,32" if q else "32,64,64")).split(","))
    args.samples = args.samples or (64 if q else 500)
    args.sample_steps, args.batch_size = (6, 16) if q else (18, 32)
    args.domain_steps = 60 if q else None
    args.out.mkdir(parents=True, exist_ok=True)

    rows = json.loads(args.rows.read_text())["rows"] if args.rows else []
    settings = {k: v if not isinstance(v, Path) else str(v) for k, v in vars(args).items()}
    print(HEADER, flush=True)
    for dataset in args.datasets:
        held = write_folder(args.out / "data" / f"{dataset}-held-out", BUILTIN[dataset](SIZE, 1, count=400 if q else 1000).images)
        for count in args.sizes:
            rows += snapshots(args, dataset, count, held, args.out)
            # after each run, so a benchmark stopped later keeps what it measured (--rows takes it up again)
            atomic_write_text(args.out / "results.json", json.dumps({"settings": settings, "rows": rows}, indent=2))
    plot(rows, args.out / "memorization.png")
    print("\n" + HEADER)
    for r in rows:
        print(row_text(r))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'memorization.png'}")


if __name__ == "__main__":
    main()
