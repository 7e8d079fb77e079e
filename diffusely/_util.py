"""Small helpers shared by the math core: broadcasting, per-sample noise."""

from __future__ import annotations

from typing import Sequence, Union

import torch

Generator = Union[torch.Generator, Sequence[torch.Generator], None]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to `v` until it has `ndim` dims (per-sample value -> broadcastable)."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of {v.ndim} dims to {ndim} dims")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def as_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Turn a float, a 0-d tensor or a (B,) tensor into a (B,) tensor on x's device and dtype."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a float or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma


def randn(shape: Sequence[int], generator: Generator = None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of `shape` (batch first).

    `generator` is one torch.Generator for the whole batch or a list with one per sample, so that
    a sample depends on its own seed and not on the batch it was drawn in. Noise is drawn on the
    generator's device, then moved: CPU seeds give the same samples on any device.
    """
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]).to(device)


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Standard normal noise shaped like `x`, on its device and dtype (see `randn` for generators)."""
    return randn(x.shape, generator, x.device, x.dtype)


def generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One seeded generator per sample."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
