"""How a video row's coherence grows with training time (issue 25): is the bar out of reach on this CPU, or just
past the hour?

Copies a row's finished run out of a `benchmarks/video.py` --out (default the latent row, with its autoencoder),
resumes its training (bit for bit, as `diffusely train --resume` does: the same constant learning rate) for --extra
minutes in --spans equal spans, and after each span draws clips as video.py drew the row (its --samples, Heun at
its --steps, read from the row's kept settings) and measures them as video.py does: against the same held-out real
clips, with the feature networks kept in that --out (never refitted here). Prints frame FD, video FD and the
coherence scores against the training minutes (the row's own, then the clock's after each span; for the latent
row they include its autoencoder's), and writes OUT/trend.json and OUT/trend.md. Each span's drawing is off the
clock and adds its minutes (64 clips: about half a minute for the latent row, five for the 3-D one). Run it alone.

    python benchmarks/video_trend.py --video-out bench/video60 --extra 60 --spans 4 --out bench/video60-trend
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffusely._files import read_meta
from diffusely.checkpoint import read_config, write_config
from diffusely.data import Dataset
from diffusely.data.moving_shapes import render_moving_shapes
from diffusely.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import video  # noqa: E402  (benchmarks/video.py: its features, drawing and measures)

COLUMNS = ("minutes", "steps", "frame FD", "video FD", "coherence", "identity", "smoothness", "flicker")


def check(args) -> tuple[dict, np.ndarray, int]:
    """The row's kept settings, drawn clips and steps, once everything this needs is there: its clips and run, the
    cached features."""
    kept, source = args.video_out / f"{args.row}.npz", args.video_out / args.row
    if not kept.exists() or not (source / "checkpoint.safetensors").exists():
        raise SystemExit(f"{args.row} is not finished in {args.video_out}: run benchmarks/video.py --rows {args.row} "
                         f"--out {args.video_out} first")
    if (args.out / args.row).exists():
        raise SystemExit(f"{args.out / args.row} exists: a wall-clock run cannot resume exactly; delete it to start "
                         "over")
    if args.extra <= 0 or args.spans < 1:
        raise SystemExit("--extra must be above 0 and --spans at least 1")
    with np.load(kept) as got:
        settings, clips, step = json.loads(str(got["settings"])), got["clips"], int(got["step"])
    if read_meta(source / "model.safetensors").get("step") != step:
        raise SystemExit(f"{source} is not the run {kept} was drawn from (a later sitting's?)")
    clips_path = args.video_out / "features-clips.safetensors"  # video.features(fit=False) checks the rest
    return {**settings, "quick": read_meta(clips_path).get("quick") if clips_path.exists() else None}, clips, step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video-out", type=Path, required=True, help="a benchmarks/video.py --out holding the row")
    p.add_argument("--row", default="latent", choices=("3-D", "factorised", "latent"))
    p.add_argument("--extra", type=float, default=60.0, help="minutes of training past the row's own")
    p.add_argument("--spans", type=int, default=4, help="measure after each of this many equal spans")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    settings, clips, step = check(args)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))  # as video.py trained
    vargs = argparse.Namespace(**settings, out=args.video_out)
    data = render_moving_shapes(vargs.clips + vargs.samples, size=32, frames=vargs.frames, seed=0)
    train_clips, real = data.images[:vargs.clips], data.images[vargs.clips:]
    frames_net, clip_net = video.features(vargs, train_clips, data.labels[:vargs.clips], fit=False)
    minutes, run_dir = settings["minutes"], args.out / args.row
    rows = [{"minutes": minutes, "steps": step, **video.measure(args.row, clips, real, frames_net, clip_net)}]
    print(video.table(rows, COLUMNS), flush=True)
    shutil.copytree(args.video_out / args.row, run_dir, ignore=shutil.ignore_patterns(".lock"))
    config = read_config(run_dir)
    if getattr(config, "latent", None) is not None:  # its own copy of the autoencoder, not the --video-out's
        config.latent.autoencoder = str((run_dir / "autoencoder").resolve())
        write_config(run_dir, config)
    clips_set = Dataset(train_clips, None, None, None, None, "moving-shapes")
    for _ in range(args.spans):
        start = time.time()
        deadline = start + args.extra * 60 / args.spans
        step = train(config, run_dir, resume=True, data=clips_set, progress=False,
                     should_stop=lambda: time.time() > deadline)["step"]
        minutes += (time.time() - start) / 60
        drawn, _ = video.draw(run_dir, vargs.samples, vargs.steps)
        rows.append({"minutes": round(minutes, 1), "steps": step,
                     **video.measure(args.row, drawn, real, frames_net, clip_net)})
        print(video.table(rows, COLUMNS), flush=True)
        (args.out / "trend.json").write_text(json.dumps(rows, indent=1))
        (args.out / "trend.md").write_text(video.table(rows, COLUMNS) + "\n")


if __name__ == "__main__":
    main()
