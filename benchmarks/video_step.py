"""What one training step of the video U-Net costs on this machine, by layout and space (docs/video.md).

A forward, backward and Adam step on random clips, batch 8 of 8 frames, the benchmark's widths (32,64,64, attention
at the last level); the fastest of 4 timed steps after one warm-up. Rows: 3-D convolutions on 32 x 32 pixels, the same
with channels-last 3-D tensors, the factorised blocks, and the 3-D U-Net on 8 x 8 x 4 latents (the latent row's).

    python benchmarks/video_step.py          # about 2 minutes on the 2-core CPU; run it alone
"""

from __future__ import annotations

import time

import torch

from diffusely.nets import UNet, UNetConfig


def step_seconds(factorised: bool, channels_last: bool, in_channels: int, size: int, reps: int = 4) -> tuple:
    torch.manual_seed(0)
    net = UNet(UNetConfig(dims=3, in_channels=in_channels, out_channels=in_channels, channels=(32, 64, 64),
                          attention_levels=(2,), factorised=factorised))
    x, sigma = torch.randn(8, in_channels, 8, size, size), torch.rand(8)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last_3d), x.contiguous(memory_format=torch.channels_last_3d)
    opt, times = torch.optim.Adam(net.parameters()), []
    for _ in range(reps + 1):
        start = time.perf_counter()
        net(x, sigma).square().mean().backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return sum(p.numel() for p in net.parameters()), min(times[1:])


def main() -> None:
    print("| variant | parameters | s/step |\n|---|---|---|")
    for name, args in (("3-D, pixels", (False, False, 3, 32)), ("3-D, channels-last 3-D", (False, True, 3, 32)),
                       ("factorised, pixels", (True, False, 3, 32)), ("3-D, 8 x 8 x 4 latents", (False, False, 4, 8))):
        params, seconds = step_seconds(*args)
        print(f"| {name} | {params / 1e6:.2f} M | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
