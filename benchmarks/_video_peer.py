"""The peer of benchmarks/video.py: lucidrains' video-diffusion-pytorch trained for a fixed time on the same clips,
run inside its own environment (.venv-peer-video, which benchmarks/video.py makes), never imported by diffusely.

As its README trains it: Unet3D(dim, dim_mults=(1, 2, 4)) in GaussianDiffusion(image_size, num_frames, timesteps=1000,
loss_type="l1"), videos (B, 3, T, H, W) in [0, 1] (it normalises to [-1, 1] itself), Adam at 1e-4 as its Trainer
uses; sampled with its own ancestral sampler (all 1000 steps). Writes the samples as uint8 (N, T, H, W, 3) .npy and
a .json beside them with the steps trained and seconds per clip.

    .venv-peer-video/bin/python benchmarks/_video_peer.py --clips train.npy --out samples.npy --seconds 3600
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from video_diffusion_pytorch import GaussianDiffusion, Unet3D


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=Path, required=True, help="uint8 (N, T, H, W, 3) training clips")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    clips = torch.from_numpy(np.load(args.clips)).permute(0, 4, 1, 2, 3).float() / 255  # (N, 3, T, H, W) in [0, 1]
    n, _, frames, size = clips.shape[:4]
    model = Unet3D(dim=args.dim, dim_mults=(1, 2, 4))
    diffusion = GaussianDiffusion(model, image_size=size, num_frames=frames, timesteps=1000, loss_type="l1")
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    deadline, step = time.time() + args.seconds, 0
    while time.time() < deadline:
        batch = clips[torch.randint(n, (args.batch_size,), generator=g)]
        loss = diffusion(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    start, drawn = time.time(), []
    with torch.no_grad():
        for i in range(0, args.samples, 16):
            drawn.append(diffusion.sample(batch_size=min(16, args.samples - i)))
    per_clip = (time.time() - start) / args.samples
    videos = (torch.cat(drawn).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    np.save(args.out, videos)
    args.out.with_suffix(".json").write_text(json.dumps({"steps": step, "seconds_per_clip": per_clip}))


if __name__ == "__main__":
    main()
