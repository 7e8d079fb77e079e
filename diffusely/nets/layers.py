"""Building blocks for networks over 1-D, 2-D and 3-D data (guided-diffusion's conv_nd idea)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """Conv1d, Conv2d or Conv3d."""
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= `groups` that divides `channels`."""
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels, eps=1e-6)


def sinusoidal_embedding(label: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style embedding of a (B,) noise label (a timestep, or EDM's ln(sigma)/4) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=label.device, dtype=torch.float32) / half)
    args = label.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, *S) -> (B, C p^d, *S / p): each p^d patch of pixels becomes channels (pixel_unshuffle for any d)."""
    if p == 1:
        return x
    b, c, *size = x.shape
    d = len(size)
    x = x.reshape(b, c, *[n for s in size for n in (s // p, p)])
    # (B, C, S1/p, p, S2/p, p, ...) -> (B, C, p, p, ..., S1/p, S2/p, ...)
    x = x.permute(0, 1, *range(3, 2 + 2 * d, 2), *range(2, 2 + 2 * d, 2))
    return x.reshape(b, c * p ** d, *[s // p for s in size])


def depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of space_to_depth: (B, C p^d, *S) -> (B, C, *S p)."""
    if p == 1:
        return x
    b, cp, *size = x.shape
    d = len(size)
    c = cp // p ** d
    x = x.reshape(b, c, *[p] * d, *size)
    # (B, C, p, ..., S1, S2, ...) -> (B, C, S1, p, S2, p, ...)
    x = x.permute(0, 1, *[i for k in range(d) for i in (2 + d + k, 2 + k)])
    return x.reshape(b, c, *[s * p for s in size])


class Downsample(nn.Module):
    """Strided 3x3 conv halving every spatial dim."""

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv, computed as the stride-2 transposed conv it equals.

    Along one axis, output 2i of the 3x3 conv over the doubled input is w0 x[i-1] + (w1 + w2) x[i], and output
    2i+1 is (w0 + w1) x[i] + w2 x[i+1]: a transposed conv with stride 2, padding 1 and the 4-tap kernel
    (w2, w1 + w2, w0 + w1, w0), built from the same 3x3 weights on each axis. That is 2^dims taps an output
    pixel instead of 3^dims (4 against 9 in 2D), with no doubled copy of the input to write and keep for the
    backward pass (2D on a CPU: 1.4-2.4x faster forward and backward, see benchmarks/NOTES.md). Checkpoints
    are unchanged.
    """

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, padding=1)
        self.transposed = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]

    def forward(self, x):
        return self.transposed(x, upsampling_kernel(self.conv.weight), self.conv.bias, stride=2, padding=1)


def upsampling_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, 3, ...) conv weights -> the (in, out, 4, ...) transposed-conv weights of nearest x2 then that conv."""
    for axis in range(2, weight.ndim):
        w0, w1, w2 = weight.movedim(axis, -1).unbind(-1)
        weight = torch.stack([w2, w1 + w2, w0 + w1, w0], -1).movedim(-1, axis)
    return weight.transpose(0, 1)


class ResBlock(nn.Module):
    """ADM's residual block (Dhariwal & Nichol 2021): GroupNorm, SiLU, conv, then the noise embedding
    as FiLM scale and shift on the second normalisation, dropout, and a zero-initialised conv.
    emb_dim 0: a plain residual block without an embedding (the autoencoder's)."""

    def __init__(self, dims: int, channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0,
                 groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(channels, groups)
        self.conv1 = conv_nd(dims, channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels) if emb_dim else None
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(conv_nd(dims, out_channels, out_channels, 3, padding=1))
        self.skip = conv_nd(dims, channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x, emb=None):
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.emb is not None:
            scale, shift = self.emb(F.silu(emb)).unsqueeze(-1).chunk(2, dim=1)
            scale, shift = (t.reshape(*t.shape[:2], *[1] * (h.ndim - 2)) for t in (scale, shift))
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over all positions, through scaled_dot_product_attention (fused where available)."""

    def __init__(self, dims: int, channels: int, head_channels: int = 64, groups: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = group_norm(channels, groups)
        self.qkv = conv_nd(dims, channels, 3 * channels, 1)
        self.proj = zero_module(conv_nd(dims, channels, channels, 1))

    def forward(self, x):
        b, c = x.shape[:2]
        # positions as tokens (b, positions, c) and the 1x1 convs as matrix products on them, as diffusers does:
        # q, k, v then have unit stride along head_channels, which SDPA's fused kernels need (a channel-major
        # layout sends CPU SDPA to its unfused math path), and torch.compile fuses around them better on GPUs
        qkv = _pointwise(self.qkv, self.norm(x).flatten(2).transpose(1, 2))  # (b, positions, 3c)
        q, k, v = qkv.reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (b, heads, positions, hc)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        return x + _pointwise(self.proj, h).transpose(1, 2).reshape(x.shape)


class CrossAttention(nn.Module):
    """Multi-head attention from every position of x to the tokens of a context (text), with a key padding mask,
    as latent diffusion's cross-attention (Rombach et al. 2022, sec. 3.3), through scaled_dot_product_attention.

    x: (B, channels, *spatial); context: (B, tokens, context_dim); mask: (B, tokens) bool, True for real tokens
    (each row needs at least one). The zero-initialised output projection makes a new block the identity.
    positions: each query also carries where it is (a learned projection of `coordinates`), so a word can ask for
    a place ("above", "left of"), which a convolution's features know only near the borders.
    """

    def __init__(self, dims: int, channels: int, context_dim: int, head_channels: int = 64, groups: int = 32,
                 positions: bool = False):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = group_norm(channels, groups)
        self.q = conv_nd(dims, channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_module(conv_nd(dims, channels, channels, 1))
        self.positions = nn.Linear(dims * 2 * FREQUENCIES, channels) if positions else None

    def forward(self, x, context, mask=None):
        b, c = x.shape[:2]
        h = self.norm(x).flatten(2).transpose(1, 2)  # (b, positions, c): see Attention
        if self.positions is not None:
            h = h + self.positions(coordinates(x.shape[2:], x.device, h.dtype))
        q = _pointwise(self.q, h)
        q = q.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)  # (b, heads, positions, hc)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # broadcast over heads and query positions
        h = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_mask)
        return x + _pointwise(self.proj, h.transpose(1, 2).reshape(b, -1, c)).transpose(1, 2).reshape(x.shape)


FREQUENCIES = 4  # of coordinates' features: 1, 2, 4 and 8 half-turns across the image


def coordinates(spatial: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """(prod(spatial), 2 x axes x FREQUENCIES): the sines and cosines of each position's coordinates, every axis
    mapped to [-1, 1] whatever its size (a single position at 0), times pi/2, pi, 2 pi and 4 pi, rows in
    x.flatten(2)'s order. Made on the device without a host copy, so a CUDA graph can capture it."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device) for n in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(spatial))
    frequencies = torch.exp2(torch.arange(FREQUENCIES, device=device, dtype=torch.float32))
    angles = (grid[..., None] * frequencies * math.pi / 2).flatten(1)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def _pointwise(conv: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to (B, positions, in) tokens as the matrix product it is -> (B, positions, out)."""
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, D) tokens, (B, L) bool mask -> (B, D): the mean over the real tokens (sentence-transformers' pooling)."""
    if mask is None:
        return tokens.mean(1)
    w = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(1) / w.sum(1).clamp(min=1)
