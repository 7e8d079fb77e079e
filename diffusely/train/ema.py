"""Exponential moving averages of weights: EDM's, with a half-life in images and its ramp-up, and EDM2's
power-function averages, stored as snapshots for post-hoc EMA (diffusely.train.posthoc)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._files import save_tensors
from ..config import SIGMA_REL_MAX
from ..state import count_nonfinite


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


# ------------------------------------------------------------------------------ EDM2's power-function EMA
# Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 3 and app. C:
# after t steps the average weighs the weights of step tau by a power function, p_t(tau) = (gamma + 1) tau^gamma /
# t^(gamma + 1) on [0, t]; its width relative to t, sigma_rel, names it independently of the run's length.

POSTHOC = "posthoc"  # the run's folder of snapshots
SNAPSHOT_FORMAT = "diffusely-posthoc-ema-1"


def sigma_rel_of(gamma: float) -> float:
    """The relative standard deviation of the power-function profile of exponent gamma (EDM2 eq. 123)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of(sigma_rel: float) -> float:
    """The exponent whose profile has relative width `sigma_rel` in (0, SIGMA_REL_MAX] (EDM2 eq. 126): the largest
    real root of gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2). EDM2's 0.05 -> 16.97."""
    if not 0 < sigma_rel <= SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {SIGMA_REL_MAX}], got {sigma_rel}")
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def power_beta(gamma: float, t: int) -> float:
    """The decay of the step that makes t steps done (EDM2 eq. 127, in steps): (1 - 1/t)^(gamma + 1). It is 0 at
    t = 1, so the average forgets the random init, and the product over steps k+1..t, (k/t)^(gamma + 1), gives step
    k exactly the profile's mass on (k-1, k]: the discrete average is the continuous one of the weights held
    constant over each step."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def snapshot_name(sigma_rel: float, step: int) -> str:
    """The file of the sigma_rel average after `step` steps: ema-0.05-0001000.safetensors."""
    return f"ema-{sigma_rel:g}-{step:07d}.safetensors"


class PowerEMA:
    """The power-function EMAs of a model, one per sigma_rel (none: nothing is tracked or stored). `modules` go into
    the training checkpoint, so a resumed run continues them exactly; `store` writes each one's weights for
    diffusely.train.posthoc to combine into an EMA of any length after training."""

    def __init__(self, model: nn.Module, sigma_rels: tuple[float, ...] = ()):
        self.sigma_rels = tuple(sigma_rels)
        self.gammas = [gamma_of(s) for s in self.sigma_rels]
        self.emas = [make_ema(model) for _ in self.sigma_rels]

    @property
    def modules(self) -> dict[str, nn.Module]:
        """The averages by their names in the checkpoint ("phema0", "phema1", ... in config order)."""
        return {f"phema{i}": ema for i, ema in enumerate(self.emas)}

    def update(self, model: nn.Module, t: int) -> None:
        """Fold in the model's weights after its t-th step (t >= 1)."""
        for gamma, ema in zip(self.gammas, self.emas):
            update_ema(ema, model, power_beta(gamma, t))

    def bytes_to_store(self, start: int, every: int, last: int) -> int:
        """What `store` will write after steps start + 1 .. last (every `every` steps and at the last), in bytes."""
        times = last // every - start // every + int(last % every != 0 and start < last)
        return times * sum(t.numel() * t.element_size() for ema in self.emas for t in ema.state_dict().values())

    def store(self, run_dir: Path, t: int, every: int, last: int) -> list[Path]:
        """After step t, every `every` steps and at the `last`: write each average as
        RUN/posthoc/ema-<sigma_rel>-<t>.safetensors, atomically. Called before the step's checkpoint, so a run killed
        between the two writes the same snapshot again when it resumes. A diverged (non-finite) average is not
        written: the step's own checks (the loss, the checkpoint) stop the run and say why."""
        if t % every and t != last:
            return []
        paths = []
        for sigma_rel, gamma, ema in zip(self.sigma_rels, self.gammas, self.emas):
            state = ema.state_dict()
            if count_nonfinite(state):
                return paths
            paths.append(Path(run_dir) / POSTHOC / snapshot_name(sigma_rel, t))
            save_tensors(paths[-1], state, {"step": t, "sigma_rel": sigma_rel, "gamma": gamma,
                                            "format": SNAPSHOT_FORMAT})
        return paths
