"""Video diffusion on the built-in moving shapes: are the frames right, and do they belong together?

Each model trains for the same wall-clock minutes on the same clips (8 frames of 32 x 32, the quick default) and
draws --samples clips, measured against held-out real clips:
  frame FD    Fréchet distance of single frames in the features of a shapes-class classifier trained on real
              frames (diffusely.metrics.domain; comparable only within this benchmark)
  video FD    the same in the features of a small 3-D classifier trained on real clips' (shape, motion) labels:
              it sees motion, as FVD's I3D does, without downloaded weights
  coherence   diffusely.metrics.coherence read from the pixels: identity (the objects of frame 0 in every frame,
              colour and size kept) x smoothness (centroids on a constant-velocity path with bounces) x flicker
              (background steadiness); its three parts beside it
  train s, s/clip   the training time given, and sampling seconds per clip (Heun, --steps steps)
Rows:
  real        held-out real clips measured the same way: the ceiling (coherence) and floor (FD) at this N
  3-D         diffusely's default video model: the U-Net with 3-D convolutions and attention
  factorised  the U-Net with factorised space-time blocks (--factorised: 2-D layers per frame, temporal conv and
              attention), same widths
  latent      the 3-D U-Net on the latents of an image autoencoder applied to each frame (8 x 8 x 4 latents of
              32 x 32 frames), trained first on the training clips' frames within the same minutes (--ae-steps,
              the autoencoder a text run trains for itself): a step works on 16 times fewer positions
  latent AE   real clips through the latent row's autoencoder, frame by frame: the ceiling of a latent model (shown
              with the latent row)
  image       diffusely's image model trained on the frames as images for the same minutes: the frame FD a
              video model is held to (its clips are 8 independent frames, so no coherence is reported)
  peer        lucidrains' video-diffusion-pytorch (Unet3D + GaussianDiffusion, the issue's anchor), the same base width
              (32; its dim_mults 1,2,4 make 32,64,128 where ours are 32,64,64) and minutes, in its own environment
              (.venv-peer-video, made on first use: it pins its own torch); benchmarks/_video_peer.py runs there

    python benchmarks/video.py --quick              # diffusely's 3-D and image models, ~1 minute each (2 CPU cores)
    python benchmarks/video.py --minutes 60         # every row, the issue's bar: 60 minutes a model
    python benchmarks/video.py --minutes 60 --rows 3-D,factorised   # two rows in one sitting (~2.5 hours) ...
    python benchmarks/video.py --minutes 60 --rows latent,image     # ... two in another ...
    python benchmarks/video.py --minutes 60 --rows peer --peer-steps 50   # ... the peer (~1.5 hours): one table

A row finished is kept (OUT/NAME.npz: its drawn clips, steps and seconds per clip) and measured again, not
retrained, when a later sitting writes into the same --out with the same settings (others are refused before any
work; delete OUT/NAME.npz, and for the peer OUT/peer-work, to train a row again); a row of diffusely stopped midway
trains again from the start. Every sitting measures every kept row again against the same held-out clips, in the
same feature networks (trained by the first sitting, about 9 minutes, and kept as OUT/features-*.safetensors), so
the last sitting's table is one table. The peer samples with all 1000 of its steps, which takes longer than its
training: it keeps its trained weights and each batch of 16 clips it draws (OUT/peer-work), so a sitting stopped
while it samples goes on drawing in the next. Its 1000 steps cost 530 to 600 seconds a clip here (64 clips: 9 to
11 hours); --peer-steps 50 draws from the same trained peer by DDIM on its own schedule, as the same author's
denoising-diffusion-pytorch samples (more network calls than diffusely's 35).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusely.checkpoint import load_autoencoder, load_run
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.data import Dataset, to_tensor, to_uint8
from diffusely.data.moving_shapes import CLASSES, render_moving_shapes
from diffusely.data.video import write_video
from diffusely._files import load_tensors, save_tensors
from diffusely.metrics import feature_statistics, fit_domain_features, frechet_distance
from diffusely.metrics.domain import load_domain_features, save_domain_features
from diffusely.metrics.coherence import mean_coherence
from diffusely.nets import UNetConfig
from diffusely.nets.autoencoder import per_frame
from diffusely.pipelines import generate
from diffusely.train import train
from diffusely.train.autoencoder import reconstruct, train_autoencoder
from diffusely.train.latents import own_autoencoder_config

ROOT = Path(__file__).resolve().parent
PEER_ENV = ROOT.parent / ".venv-peer-video"
# torchvision's CUDA wheels load their operators only beside the torch they were built with: this pair does
PEER_PACKAGES = ["video-diffusion-pytorch==0.7.0", "torch==2.11.0", "torchvision==0.26.0", "numpy"]
ROWS = ("3-D", "factorised", "latent", "image", "peer")


# ------------------------------------------------------------------------------ features


class ClipClassifier(nn.Module):
    """A small 3-D convolutional classifier of (shape, motion) on clips (B, 3, T, S, S); `body` gives 128-d
    features."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        block = lambda cin, cout: [nn.Conv3d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]  # noqa: E731
        self.body = nn.Sequential(*block(3, width), nn.AvgPool3d((1, 2, 2)), *block(width, 2 * width),
                                  nn.AvgPool3d(2), *block(2 * width, 4 * width), nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def fit_clip_features(clips: np.ndarray, labels: np.ndarray, steps: int, seed: int = 0) -> ClipClassifier:
    """Train ClipClassifier on uint8 clips (N, T, S, S, 3) and their labels with AdamW, batch 32."""
    torch.manual_seed(seed)
    net, x, y = ClipClassifier(len(CLASSES)), to_tensor(clips), torch.as_tensor(labels)
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (32,), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def clip_features(net: ClipClassifier, clips: np.ndarray) -> np.ndarray:
    return torch.cat([net.body(to_tensor(clips[i:i + 64])) for i in range(0, len(clips), 64)]).numpy()


def fd(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def features(args, train_clips: np.ndarray, labels: np.ndarray, fit: bool = True) -> tuple:
    """The frame and clip feature networks, trained on the training clips (about 9 minutes at the full settings) or
    read back from OUT/features-*.safetensors, kept by an earlier sitting into this --out from the same clips. With
    fit False, kept ones that do not match are refused, not fitted again over those every kept row was measured in."""
    kept = {"clips": args.clips, "frames": args.frames, "quick": args.quick}
    frames_path, clips_path = args.out / "features-frames.safetensors", args.out / "features-clips.safetensors"
    if frames_path.exists() and clips_path.exists():
        frames_net = load_domain_features(frames_path)
        tensors, meta = load_tensors(clips_path)
        if frames_net.info["reference"] == kept and meta == kept:
            clip_net = ClipClassifier(len(CLASSES))
            clip_net.load_state_dict(tensors)
            print(f"features: read back from {frames_path.parent}", flush=True)
            return frames_net, clip_net.eval()
    if not fit:
        raise SystemExit(f"{args.out} keeps no feature networks of its rows' clips: run benchmarks/video.py there")
    start = time.time()
    frames_net = fit_domain_features(train_clips.reshape(-1, 32, 32, 3), labels.repeat(args.frames) // 3, 4,
                                     steps=150 if args.quick else 600, reference=kept)
    clip_net = fit_clip_features(train_clips, labels, steps=100 if args.quick else 600)
    save_domain_features(frames_path, frames_net)
    save_tensors(clips_path, clip_net.state_dict(), kept)
    print(f"features: {time.time() - start:.0f} s", flush=True)
    return frames_net, clip_net


# ------------------------------------------------------------------------------ models


def video_config(args, factorised: bool) -> RunConfig:
    model = UNetConfig(dims=3, channels=args.channels, attention_levels=(len(args.channels) - 1,), factorised=factorised)
    data = DataConfig(source="moving-shapes", image_size=32, frames=args.frames, modality="video", classes=False,
                      flip=True)
    return RunConfig(model=model, data=data, train=_schedule(args))


def latent_row(args, run_dir: Path, train_clips: np.ndarray, seconds: float) -> tuple[np.ndarray, float, int]:
    """Train an image autoencoder on the training clips' frames, then the 3-D U-Net on their latents for the rest of
    `seconds`; its drawn clips (decoded), seconds per clip and diffusion steps."""
    ae_dir, deadline, config = run_dir / "autoencoder", time.time() + seconds, video_config(args, factorised=False)
    ae_config = own_autoencoder_config(config, steps=args.ae_steps)
    ae_config.data = DataConfig(source="moving-shapes frames", image_size=32)
    frames = Dataset(train_clips.reshape(-1, 32, 32, 3), None, None, None, None, "moving-shapes frames")
    psnr = train_autoencoder(ae_config, ae_dir, progress=False, data=frames)["psnr"]
    spent = seconds - (deadline - time.time())
    print(f"latent: autoencoder {args.ae_steps} steps, {psnr:.1f} dB, {spent:.0f} s", flush=True)
    config.use_autoencoder(ae_dir)
    step = train_for(config, run_dir, Dataset(train_clips, None, None, None, None, "moving-shapes"),
                     deadline - time.time())
    return (*draw(run_dir, args.samples, args.steps), step)


def image_config(args) -> RunConfig:
    model = UNetConfig(dims=2, channels=args.channels, attention_levels=(len(args.channels) - 1,))
    return RunConfig(model=model, data=DataConfig(source="moving-shapes frames", image_size=32, flip=True),
                     train=_schedule(args))


def _schedule(args) -> TrainConfig:
    # a wall clock, not a step count, ends the run: the learning rate stays at 2e-3 after its warm-up (decay_from 1)
    return TrainConfig(steps=10 ** 6, batch_size=args.batch_size, lr=2e-3, warmup_steps=50, checkpoint_every=10 ** 6,
                       sample_every=10 ** 6, log_every=10, decay_from=1.0, ema_halflife_images=args.batch_size * 100)


def train_for(config: RunConfig, run_dir: Path, data: Dataset, seconds: float) -> int:
    """Train `config` on `data` until `seconds` have passed; the step it stopped at."""
    deadline = time.time() + seconds
    return train(config, run_dir, data=data, progress=False, should_stop=lambda: time.time() > deadline)["step"]


def draw(run_dir: Path, n: int, steps: int, seed: int = 0, frames: int | None = None) -> tuple[np.ndarray, float]:
    """n samples of a run as uint8 (N, *spatial, C) from noise seeds seed onwards, and seconds per sample; with
    frames, an image run's n * frames images as n clips (N, frames, H, W, C), and seconds per clip."""
    run, count = load_run(run_dir), n * (frames or 1)
    start = time.time()
    x = to_uint8(torch.cat(list(generate(run, count, seed=seed, steps=steps, batch_size=16, progress=False))))
    return (x if frames is None else x.reshape(n, frames, *x.shape[1:])), (time.time() - start) / n


def peer_clips(args, clips: np.ndarray, out: Path) -> tuple[np.ndarray, float, int]:
    """Train and sample video-diffusion-pytorch in its own environment (made here on first use)."""
    python = args.peer_python or PEER_ENV / "bin" / "python"
    if not python.exists():
        if args.peer_python:
            raise SystemExit(f"--peer-python {python} does not exist")
        subprocess.run([sys.executable, "-m", "venv", str(PEER_ENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    np.save(out / "peer-train.npy", clips)
    subprocess.run([str(python), str(ROOT / "_video_peer.py"), "--clips", str(out / "peer-train.npy"),
                    "--out", str(out / "peer-samples.npy"), "--seconds", str(args.minutes * 60),
                    "--samples", str(args.samples), "--dim", str(args.channels[0]),
                    "--batch-size", str(args.batch_size), "--sampling-steps", str(args.peer_steps),
                    "--settings", settings(args, "peer training")], check=True)
    result = json.loads((out / "peer-samples.json").read_text())
    return np.load(out / "peer-samples.npy"), result["seconds_per_clip"], result["steps"]


# ------------------------------------------------------------------------------ the table


def measure(name: str, clips: np.ndarray, real: np.ndarray, frames_net, clip_net, video: bool = True) -> dict:
    """One row: frame FD, video FD and coherence of clips (N, T, S, S, 3) against the held-out real clips."""
    flat = lambda c: c.reshape(-1, *c.shape[2:])  # noqa: E731
    row = {"model": name, "frame FD": fd(frames_net(flat(clips)), frames_net(flat(real)))}
    if video:
        row["video FD"] = fd(clip_features(clip_net, clips), clip_features(clip_net, real))
        row.update(mean_coherence(clips))
    return row


COLUMNS = ("model", "frame FD", "video FD", "coherence", "identity", "smoothness", "flicker", "train s", "steps",
           "s/clip")


def table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    cell = lambda v: "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save_gif(clips: np.ndarray, path: Path, columns: int = 4) -> None:
    """Clips (N, T, S, S, 3) tiled columns wide into one looping GIF, enlarged 3x, a 2-pixel gap between tiles."""
    n, t, s = clips.shape[:3]
    rows = -(-n // columns)
    sheet = np.full((t, rows * (s + 2) + 2, columns * (s + 2) + 2, 3), 255, np.uint8)
    for i, clip in enumerate(clips):
        r, c = divmod(i, columns)
        sheet[:, 2 + r * (s + 2):2 + r * (s + 2) + s, 2 + c * (s + 2):2 + c * (s + 2) + s] = clip
    write_video(path, sheet.repeat(3, 1).repeat(3, 2), fps=6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="diffusely's 3-D and image rows, ~1 minute each")
    parser.add_argument("--minutes", type=float, default=60.0, help="training minutes per model")
    parser.add_argument("--clips", type=int, default=2000, help="training clips")
    parser.add_argument("--samples", type=int, default=64, help="clips drawn per model (and held-out real clips)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--channels", type=lambda s: tuple(map(int, s.split(","))), default=(32, 64, 64))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=18, help="Heun steps when sampling")
    parser.add_argument("--ae-steps", type=int, default=800, help="the latent row's autoencoder steps (in its minutes)")
    parser.add_argument("--rows", help=f"comma-separated, of {','.join(ROWS)} (default: all; --quick: 3-D,image)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/video (--quick: video-quick)")
    parser.add_argument("--peer-python", type=Path, help="the peer's Python, in an environment with "
                                                            f"{' '.join(PEER_PACKAGES)} (default: made on first use)")
    parser.add_argument("--peer-steps", type=int, default=1000, help="the peer's sampling steps: 1000 is its own "
                        "ancestral sampler; fewer, DDIM on its schedule (its training is kept across the two)")
    parser.add_argument("--gif", type=Path, help="also write the 3-D model's first 8 clips here as one GIF")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.clips, args.samples, args.steps, args.ae_steps = 1.0, 400, 16, 12, 100
    args.rows = args.rows or ("3-D,image" if args.quick else ",".join(ROWS))
    args.out = args.out or ROOT / "results" / ("video-quick" if args.quick else "video")
    check_kept(args)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    args.out.mkdir(parents=True, exist_ok=True)
    data = render_moving_shapes(args.clips + args.samples, size=32, frames=args.frames, seed=0)
    train_clips, real = data.images[:args.clips], data.images[args.clips:]
    labels = data.labels[:args.clips]
    frames_net, clip_net = features(args, train_clips, labels)
    rows = [{**measure("real", real, data.images[:args.samples], frames_net, clip_net), "train s": None}]
    asked = args.rows.split(",")
    unknown = [name for name in asked if name not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    for name in ROWS:  # the rows asked, and those an earlier sitting into this --out finished
        if name in asked or (args.out / f"{name}.npz").exists():
            clips, per_clip, step = row_clips(name, args, train_clips)
            if name == "3-D" and args.gif:
                save_gif(clips[:8], args.gif)
            label = f"peer (DDIM {args.peer_steps})" if name == "peer" and args.peer_steps < 1000 else name
            row = measure(label, clips, real, frames_net, clip_net, video=name != "image")
            rows.append({**row, "train s": args.minutes * 60, "steps": step, "s/clip": per_clip})
            print(table(rows), flush=True)
            (args.out / "results.json").write_text(json.dumps(rows, indent=1))
        if name == "latent" and (args.out / "latent" / "autoencoder").is_dir():  # the latent row's ceiling
            decoded = autoencoded(args.out / "latent" / "autoencoder", train_clips[:len(real)])
            rows.append({**measure("latent AE", decoded, real, frames_net, clip_net), "train s": None})
    (args.out / "table.md").write_text(table(rows) + "\n")


def autoencoded(ae_dir: Path, clips: np.ndarray) -> np.ndarray:
    """Real clips (N, T, S, S, 3) through an image autoencoder, frame by frame (posterior means, decoded): measured as
    the real row is, what the latent row could reach with a perfect model of the latents."""
    ae = load_autoencoder(ae_dir).autoencoder
    return to_uint8(per_frame(lambda x: reconstruct(ae, x), to_tensor(clips), ae.config.dims))


def settings(args, row: str) -> str:
    """What a row's clips depend on besides its model: a kept row is reused only under the same (the peer's
    work does not depend on diffusely's sampling steps; only the latent row on its autoencoder's steps)."""
    keys = ("minutes", "clips", "samples", "frames", "channels", "batch_size") + (() if "peer" in row else ("steps",))
    keys += ("ae_steps",) if row == "latent" else ()
    keys += ("peer_steps",) if row == "peer" else ()  # its drawing, not its training ("peer training")
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(args, k)) for k in keys)})


def check_kept(args) -> None:
    """Refuse, before any work, an --out whose kept rows were drawn under other settings."""
    for name in ROWS:
        if (args.out / f"{name}.npz").exists():
            with np.load(args.out / f"{name}.npz") as got:
                then, now = json.loads(str(got["settings"])), json.loads(settings(args, name))
            differ = [f"--{k.replace('_', '-')} {then.get(k)} (now {now[k]})" for k in now if then.get(k) != now[k]]
            if differ:
                raise SystemExit(f"{args.out / name}.npz was drawn with {', '.join(differ)}: give those, use another "
                                 f"--out, or delete it to train that row again")


def row_clips(name: str, args, train_clips: np.ndarray) -> tuple[np.ndarray, float, int | None]:
    """A row's drawn clips (N, T, S, S, 3), seconds per clip and training steps: kept from an earlier sitting into
    the same --out (OUT/NAME.npz, drawn at the same --minutes and --samples), else trained and drawn now."""
    kept = args.out / f"{name}.npz"
    if kept.exists():
        with np.load(kept) as got:
            return got["clips"], float(got["per_clip"]), (int(got["step"]) if got["step"] >= 0 else None)
    run_dir, seconds = args.out / name, args.minutes * 60
    shutil.rmtree(run_dir, ignore_errors=True)  # a sitting stopped mid-row trains that row again, in one span
    if name in ("3-D", "factorised"):
        config = video_config(args, factorised=name == "factorised")
        step = train_for(config, run_dir, Dataset(train_clips, None, None, None, None, "moving-shapes"), seconds)
        clips, per_clip = draw(run_dir, args.samples, args.steps)
    elif name == "latent":
        clips, per_clip, step = latent_row(args, run_dir, train_clips, seconds)
    elif name == "image":
        frames = Dataset(train_clips.reshape(-1, 32, 32, 3), None, None, None, None, "moving-shapes frames")
        step = train_for(image_config(args), run_dir, frames, seconds)
        clips, per_clip = draw(run_dir, args.samples, args.steps, frames=args.frames)
    else:
        clips, per_clip, step = peer_clips(args, train_clips, args.out)
    tmp = kept.with_suffix(".tmp.npz")  # whole or absent
    np.savez(tmp, clips=clips, per_clip=per_clip, step=-1 if step is None else step, settings=settings(args, name))
    tmp.replace(kept)
    return clips, per_clip, step


if __name__ == "__main__":
    main()
