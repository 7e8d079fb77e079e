"""Exponential moving average of weights, with EDM's half-life in images and its ramp-up."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch_images: int, images_seen: int, halflife_images: float, rampup: float | None) -> float:
    """Decay per step so the average's half-life is `halflife_images` (EDM, training/training_loop.py),
    capped at `rampup` x images seen: early in a run the average must not remember the random init."""
    halflife = halflife_images
    if rampup is not None:
        halflife = min(halflife, images_seen * rampup)
    return 0.5 ** (batch_images / max(halflife, 1e-8))


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
