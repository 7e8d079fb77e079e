"""How much of a `benchmarks/video.py` figure is the draw: one model's clips drawn again from other noise, and the
real clips' row with other training clips, measured as video.py measures (same held-out clips, same kept feature
networks, never refitted here). A row of 64 clips puts 512 frames into its frame FD; this says how far apart two
draws of one model land, before two models are told apart by it (issue 25's bar: frame FD within 2x the image
model's).

    python benchmarks/video_draws.py --video-out bench/video60 --draws 4                  # the real clips' row
    python benchmarks/video_draws.py --video-out bench/video60 --run bench/video60/latent --draws 4
    python benchmarks/video_draws.py --video-out bench/video60 --run bench/video60/image --image --draws 3

Draw k (k = 0, 1, ...) uses noise seeds k * samples onwards (draw 0 is video.py's own); real draw k measures
training clips [k * samples, (k + 1) * samples) against the held-out clips (draw 0's FDs are video.py's real row;
its coherence is of these training clips, where video.py's is of the held-out ones). Prints each draw's row and the
spread (max / min of each column); writes OUT/draws-NAME.json (NAME: the run's folder and its parent's; OUT: --out,
else --video-out). Each draw of the 3-D model costs about
5 minutes, of the image model 4, of the latent one half a minute. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from diffusely._files import read_meta
from diffusely.data.moving_shapes import render_moving_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import video  # noqa: E402  (benchmarks/video.py: its features, drawing and measures)
from video_trend import COLUMNS  # noqa: E402

SPREAD = ("frame FD", "video FD", "coherence")


def kept_settings(video_out: Path) -> dict:
    """video.py's settings, from a diffusely row it kept, and its feature networks' --quick."""
    kept = [video_out / f"{name}.npz" for name in ("3-D", "factorised", "latent", "image")]
    kept = [path for path in kept if path.exists()]  # rows drawn with diffusely's --steps (the peer's is not)
    clips_path = video_out / "features-clips.safetensors"  # video.features(fit=False) checks it and its twin
    if not kept or not clips_path.exists():
        raise SystemExit(f"{video_out} holds no finished row of benchmarks/video.py with its feature networks")
    with np.load(kept[0]) as got:
        settings = json.loads(str(got["settings"]))
    return {**settings, "quick": read_meta(clips_path).get("quick")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video-out", type=Path, required=True, help="a benchmarks/video.py --out")
    p.add_argument("--run", type=Path, help="a run trained by video.py or video_trend.py (default: the real clips)")
    p.add_argument("--image", action="store_true", help="the run is the image row: its frames are drawn alone")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--first", type=int, default=0, help="the first draw's k (1: skip video.py's own, measured)")
    p.add_argument("--out", type=Path, help="default: --video-out")
    args = p.parse_args()
    settings = kept_settings(args.video_out)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    vargs = argparse.Namespace(**settings, out=args.video_out)
    n, frames = vargs.samples, vargs.frames
    data = render_moving_shapes(vargs.clips + n, size=32, frames=frames, seed=0)
    train_clips, real = data.images[:vargs.clips], data.images[vargs.clips:]
    if args.run is None and (args.first + args.draws) * n > len(train_clips):
        raise SystemExit(f"--draws {args.draws} of {n} real clips from --first {args.first} needs "
                         f"{(args.first + args.draws) * n} training clips")
    frames_net, clip_net = video.features(vargs, train_clips, data.labels[:vargs.clips], fit=False)
    name = "real" if args.run is None else f"{args.run.resolve().parent.name}-{args.run.name}"
    rows = []
    for k in range(args.first, args.first + args.draws):
        if args.run is None:
            clips = train_clips[k * n:(k + 1) * n]
        else:  # an image run's clips are its frames drawn alone
            clips = video.draw(args.run, n, vargs.steps, seed=k * n * (frames if args.image else 1),
                               frames=frames if args.image else None)[0]
        rows.append({"draw": k, **video.measure(name, clips, real, frames_net, clip_net, video=not args.image)})
        print(video.table(rows, ("draw",) + COLUMNS[2:]), flush=True)
    spread = {c: max(r[c] for r in rows) / max(min(r[c] for r in rows), 1e-12) for c in SPREAD if c in rows[0]}
    print("max / min over the draws: " + ", ".join(f"{c} {v:.3g}" for c, v in spread.items()))
    out = (args.out or args.video_out) / f"draws-{name}.json"
    out.write_text(json.dumps({"rows": rows, "max_over_min": spread}, indent=1))


if __name__ == "__main__":
    main()
