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


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Standard normal noise shaped like `x`.

    `generator` is one torch.Generator for the whole batch or a list with one per sample, so that
    a sample depends on its own seed and not on the batch it was drawn in.
    """
    # noise is drawn on the generator's device, then moved: CPU generators give the same samples on any device
    if generator is None:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]).to(x.device)


def generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One seeded generator per sample."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
