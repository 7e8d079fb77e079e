"""Factorised space-time layers for video (Ho et al. 2022, "Video Diffusion Models", sec. 3): 2-D layers applied to
each frame alike, and temporal layers that mix the frames at each pixel.

A clip is (B, C, T, H, W). `PerFrame` folds the frames into the batch, so a spatial layer sees every frame as an
image of its own (same weights, no frame sees another); `TemporalMix` then mixes frames at each pixel with a
3-tap convolution along time (which knows frame order) and, at attention levels, `TemporalAttention` attends over
the frames with a learned embedding of each frame's position. Both temporal layers start as the identity (their
last projection zeroed), so a factorised network begins as a per-frame image model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import group_norm, zero_module

MAX_FRAMES = 64  # the frame positions TemporalAttention learns (its weights' shape: a run's clips are no longer)


class PerFrame(nn.Module):
    """A 2-D layer over each frame of (B, C, T, H, W); per-sample arguments (B, ...) are repeated for each frame."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        b, c, t = x.shape[:3]
        h = x.transpose(1, 2).reshape(b * t, c, *x.shape[3:])
        args = [a.repeat_interleave(t, 0) if torch.is_tensor(a) and len(a) == b else a for a in args]
        h = self.layer(h, *args)
        return h.reshape(b, t, *h.shape[1:]).transpose(1, 2)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B H W, C, T): each pixel's sequence of frames."""
    b, c, t, h, w = x.shape
    return x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)


def _unpixels(y: torch.Tensor, shape) -> torch.Tensor:
    b, c, t, h, w = shape
    return y.reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2)


class TemporalMix(nn.Module):
    """x + conv1d_3(SiLU(norm(x))) along time at each pixel: the frames' neighbours, zero-initialised."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.conv = zero_module(nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + _unpixels(self.conv(F.silu(_pixels(self.norm(x)))), x.shape)


class TemporalAttention(nn.Module):
    """Self-attention over the frames at each pixel, each frame's position added (learned, up to `max_frames`)."""

    def __init__(self, channels: int, head_channels: int = 64, groups: int = 32, max_frames: int = MAX_FRAMES):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels, groups)
        self.position = nn.Parameter(torch.zeros(max_frames, channels))
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(self, x):
        b, c, t = x.shape[:3]
        tokens = _pixels(self.norm(x)).transpose(1, 2) + self.position[:t]  # (BHW, T, C)
        q, k, v = self.qkv(tokens).reshape(len(tokens), t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(len(tokens), t, c)
        return x + _unpixels(self.proj(h).transpose(1, 2), x.shape)
