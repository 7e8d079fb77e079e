"""How sure a restoration is: draw K posterior samples, keep their per-pixel mean and spread.

A measurement leaves part of the image undetermined (the masked pixels, the unmeasured k-space lines,
the detail a downsampling averaged away); posterior samples agree where y determines the image and
differ where it does not, so their per-pixel standard deviation maps where not to trust a reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .operators import MeasurementError


@dataclass
class Spread:
    """K samples summarised: mean and std (B, C, *spatial) per pixel, `first` the first sample (a single
    draw, for display beside the mean), k how many were drawn."""

    mean: torch.Tensor
    std: torch.Tensor
    first: torch.Tensor
    k: int


def posterior_spread(draw: Callable[[int], torch.Tensor], k: int) -> Spread:
    """Call draw(0), ..., draw(k - 1), each returning a batch of samples (B, C, *spatial) for the same
    inputs (draw i seeds its own noise, e.g. generators from seed * k + i), and return their per-pixel
    mean and unbiased standard deviation (k - 1 in the denominator).

    Cost: k draws. Memory: three images per input, whatever k (Welford's running mean and variance,
    accumulated in float64 so a large k loses nothing to cancellation).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise MeasurementError(f"k must be a whole number >= 2 to measure a spread, got {k!r}")
    first = draw(0)
    mean, m2 = first.to(torch.float64), torch.zeros_like(first, dtype=torch.float64)
    for i in range(1, k):
        x = draw(i).to(torch.float64)
        if x.shape != mean.shape:
            raise MeasurementError(f"draw({i}) returned shape {tuple(x.shape)}, draw(0) {tuple(mean.shape)}")
        delta = x - mean
        mean = mean + delta / (i + 1)
        m2 = m2 + delta * (x - mean)
    std = (m2 / (k - 1)).sqrt()
    return Spread(mean.to(first.dtype), std.to(first.dtype), first, k)
