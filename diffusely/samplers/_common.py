"""What every sampler does at each step: ask the denoiser, tell the callback."""

from __future__ import annotations

import torch


def denoise(denoiser, x: torch.Tensor, sigma: float, cond: dict) -> torch.Tensor:
    """D(x, sigma) with one sigma for the whole batch: one denoiser evaluation."""
    return denoiser(x, x.new_full((x.shape[0],), sigma), **cond)


def report(callback, i: int, x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> None:
    """Tell the callback (if any) about step i: its noisy x, noise level and the denoiser's x0 estimate."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
