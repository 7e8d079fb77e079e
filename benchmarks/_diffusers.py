"""diffusers' UNet2DModel built to the shape of a diffusely UNetConfig, for the benchmarks that compare the two.

Same channels per level, blocks per level, attention levels (plus attention in the middle block, which
both always have), GroupNorm groups, head size, and FiLM (scale-shift) noise conditioning. Needs the
`bench` extra (pip install -e .[bench]).
"""

from __future__ import annotations

import torch

from diffusely.nets import UNetConfig


def require_diffusers() -> None:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise SystemExit("diffusers is not installed: pip install -e .[bench]")


def unet2d(config: UNetConfig, size: int) -> torch.nn.Module:
    """A UNet2DModel with the shape of `config` (2-D, unconditional, no patching) for size x size images."""
    from diffusers import UNet2DModel

    if config.dims != 2 or config.num_classes or config.context_dim or config.layout_channels or config.patch_size != 1:
        raise ValueError("only plain unconditional 2-D U-Nets have a UNet2DModel twin")
    levels = range(len(config.channels))
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in reversed(levels))
    return UNet2DModel(sample_size=size, in_channels=config.in_channels, out_channels=config.out_channels,
                       block_out_channels=config.channels, layers_per_block=config.blocks_per_level,
                       down_block_types=down, up_block_types=up, norm_num_groups=config.groups,
                       attention_head_dim=config.head_channels, resnet_time_scale_shift="scale_shift",
                       dropout=config.dropout)


class TensorOutput(torch.nn.Module):
    """A UNet2DModel as a network F(x, noise_label) -> tensor (it returns an output object), for diffusely's
    Denoiser and FastNet."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, noise_label):
        return self.net(x, noise_label).sample


def parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
