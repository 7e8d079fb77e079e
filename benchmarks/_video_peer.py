"""The peer of benchmarks/video.py: lucidrains' video-diffusion-pytorch trained for a fixed time on the same clips,
run inside its own environment (.venv-peer-video, which benchmarks/video.py makes), never imported by diffusely.

As its README trains it: Unet3D(dim, dim_mults=(1, 2, 4)) in GaussianDiffusion(image_size, num_frames, timesteps=1000,
loss_type="l1"), videos (B, 3, T, H, W) in [0, 1] (it normalises to [-1, 1] itself), and its Trainer's recipe: Adam
at 1e-4, and its EMA of decay 0.995 updated every 10 steps, a plain copy of the weights before step 2000; sampled from
the EMA weights, as its Trainer samples, with its own ancestral sampler (all 1000 steps), or with --sampling-steps
fewer, by DDIM (eta 0) on its own noise schedule as the same author's denoising-diffusion-pytorch samples with
sampling_timesteps (its predicted start clipped to [-1, 1] and the noise derived again from it; the same network
calls, so a clip costs steps/1000 of the ancestral one). Its Trainer itself cannot
run here (it moves every batch with .cuda()), so this loop repeats it, at the benchmark's batch size and without
gradient accumulation. Writes the samples as uint8 (N, T, H, W, 3) .npy and a .json beside them with the steps
trained and seconds per clip.

    .venv-peer-video/bin/python benchmarks/_video_peer.py --clips train.npy --out samples.npy --seconds 3600
"""

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.video_diffusion_pytorch import EMA


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=Path, required=True, help="uint8 (N, T, H, W, 3) training clips")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampling-steps", type=int, default=1000, help="fewer than 1000: DDIM (the training is kept)")
    parser.add_argument("--settings", default="", help="what the kept work depends on; other settings start over")
    args = parser.parse_args()
    clips = torch.from_numpy(np.load(args.clips)).permute(0, 4, 1, 2, 3).float() / 255  # (N, 3, T, H, W) in [0, 1]
    n, _, frames, size = clips.shape[:4]
    torch.manual_seed(args.seed)
    diffusion = GaussianDiffusion(Unet3D(dim=args.dim, dim_mults=(1, 2, 4)), image_size=size, num_frames=frames,
                                  timesteps=1000, loss_type="l1")
    work = args.out.parent / "peer-work"  # the trained EMA weights and each batch drawn, kept across sittings
    trained_under = {k: str(v) for k, v in vars(args).items() if k not in ("out", "sampling_steps")}
    kept_under = json.dumps({**trained_under, "clips": list(clips.shape)})
    if work.exists() and _read(work / "model.json").get("settings") != kept_under:
        print(f"{work} was made under other settings: starting over", flush=True)
        shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    if (work / "model.json").exists():
        diffusion.load_state_dict(torch.load(work / "model.pt", weights_only=True))  # written below, by this script
        step = _read(work / "model.json")["steps"]
        print(f"the peer's training of {step} steps is kept in {work}: sampling", flush=True)
    else:
        diffusion, step = train(diffusion, clips, args)
        torch.save(diffusion.state_dict(), work / "model.tmp.pt")
        (work / "model.tmp.pt").replace(work / "model.pt")
        _write(work / "model.json", {"steps": step, "settings": kept_under})
    drawn, seconds = [], 0.0
    for i in range(0, args.samples, 16):  # each batch of 16 is kept as it is drawn: 1000 steps take a while
        part = work / f"{'' if args.sampling_steps == 1000 else f'ddim{args.sampling_steps}-'}part-{i}.npy"
        if not part.exists():
            torch.manual_seed(args.seed + 1 + i)
            start = time.time()
            with torch.no_grad():
                b = min(16, args.samples - i)
                videos = diffusion.sample(batch_size=b) if args.sampling_steps == 1000 else \
                    ddim(diffusion, (b, 3, frames, size, size), args.sampling_steps)
            videos = (videos.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
            _write(part.with_suffix(".json"), {"seconds": time.time() - start})
            np.save(part.with_suffix(".tmp.npy"), videos)
            part.with_suffix(".tmp.npy").replace(part)
            print(f"drew clips {i + 1}-{i + len(videos)} of {args.samples}", flush=True)
        drawn.append(np.load(part))
        seconds += _read(part.with_suffix(".json"))["seconds"]
    np.save(args.out, np.concatenate(drawn))
    args.out.with_suffix(".json").write_text(json.dumps({"steps": step, "seconds_per_clip": seconds / args.samples,
                                                       "sampling_steps": args.sampling_steps}))


@torch.inference_mode()
def ddim(diffusion: GaussianDiffusion, shape: tuple, steps: int) -> torch.Tensor:
    """Deterministic DDIM in [0, 1] from the peer's own network and schedule: the times are those of
    denoising-diffusion-pytorch's ddim_sample (linspace(-1, T - 1, steps + 1) truncated, last one -1: the start)."""
    times = torch.linspace(-1, diffusion.num_timesteps - 1, steps + 1).int().tolist()[::-1]
    x = torch.randn(shape)
    for t, t_next in zip(times[:-1], times[1:]):
        at = torch.full((shape[0],), t, dtype=torch.long)
        eps = diffusion.denoise_fn.forward_with_cond_scale(x, at, cond=None, cond_scale=1.0)
        x0 = diffusion.predict_start_from_noise(x, t=at, noise=eps).clamp(-1, 1)
        eps = (diffusion.sqrt_recip_alphas_cumprod[t] * x - x0) / diffusion.sqrt_recipm1_alphas_cumprod[t]
        if t_next < 0:
            x = x0
            continue
        alpha = diffusion.alphas_cumprod[t_next]
        x = x0 * alpha.sqrt() + (1 - alpha).sqrt() * eps
    return (x + 1) / 2


def train(diffusion: GaussianDiffusion, clips: torch.Tensor, args) -> tuple[GaussianDiffusion, int]:
    """Its Trainer's loop on the clock: the EMA weights and the steps made."""
    opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
    ema, ema_model = EMA(0.995), copy.deepcopy(diffusion)  # Trainer(ema_decay=0.995), step_start_ema 2000, every 10
    g = torch.Generator().manual_seed(args.seed)
    deadline, step = time.time() + args.seconds, 0
    while time.time() < deadline:
        loss = diffusion(clips[torch.randint(len(clips), (args.batch_size,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:  # Trainer.step_ema
            if step < 2000:
                ema_model.load_state_dict(diffusion.state_dict())
            else:
                ema.update_model_average(ema_model, diffusion)
        step += 1
    print(f"the peer trained {step} steps", flush=True)
    return ema_model, step


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write(path: Path, value: dict) -> None:
    path.with_suffix(".tmp").write_text(json.dumps(value))
    path.with_suffix(".tmp").replace(path)


if __name__ == "__main__":
    main()
