"""Post-hoc EMA (EDM2, Karras et al. 2024, sec. 3.2 and app. C.3): an EMA of any length, chosen after training, as a
weighted sum of the power-function EMA snapshots a run stored (train.posthoc_ema, train/ema.py's PowerEMA).

A snapshot of exponent gamma taken after t steps is the run's weights averaged under the profile
p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]. A sum of snapshots sum_i x_i snapshot_i is the weights
averaged under sum_i x_i p_i, so we choose x to bring that sum closest, in L2 over tau, to the profile of the EMA
asked for: the normal equations G x = b with G_ij = <p_i, p_j> and b_i = <p_i, p_target>, all in closed form
(EDM2 eq. 151, Algorithm 3), then x scaled to sum to 1 so a constant weight stays itself.

    RUN/posthoc/ema-<sigma_rel>-<step>.safetensors   one power-function EMA's weights after `step` steps
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .._files import RunError, Unreadable, load_tensors, read_meta, run_lock, save_tensors
from ..checkpoint import CHECKPOINT, MODEL, LoadedRun, load_run, read_config, refuse_nonfinite
from ..nets.fast import FastNet
from ..state import step_of
from .ema import POSTHOC, SIGMA_REL_MAX, SNAPSHOT_FORMAT, gamma_of

HOW_TO_STORE = "train a run with `diffusely train DATA --posthoc-ema 0.05,0.1` (docs/ema.md)"


@dataclass
class Snapshot:
    path: Path
    sigma_rel: float
    gamma: float
    step: int


@dataclass
class Reconstruction:
    """An EMA of relative width `sigma_rel` after `step` steps: its weights, the snapshots summed and their
    coefficients, and `error`, the L2 distance of the summed profile from the one asked for, relative to its norm."""

    weights: dict[str, torch.Tensor]
    sigma_rel: float
    step: int
    snapshots: list[Snapshot]
    coefficients: np.ndarray
    error: float


def profile_products(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<p_a, p_b>, the integral over tau of the product of two power-function profiles (after t_a and t_b steps, of
    exponents gamma_a and gamma_b), broadcast over the arguments (EDM2 eq. 151): on [0, min(t_a, t_b)] it is
    (gamma_a + 1)(gamma_b + 1) / (gamma_a + gamma_b + 1) / max(t_a, t_b) x (t_a/t_b)^gamma_b if t_a < t_b, else
    x (t_b/t_a)^gamma_a."""
    t_a, gamma_a, t_b, gamma_b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b,
                                                                                                   gamma_b)))
    shorter = np.minimum(t_a, t_b) / np.maximum(t_a, t_b)
    power = np.where(t_a < t_b, gamma_b, gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * shorter ** power / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_coefficients(steps, gammas, step: float, gamma: float) -> np.ndarray:
    """The coefficients x (n,), summing to 1, of the snapshots (after `steps` (n,), of exponents `gammas` (n,)) whose
    sum best approximates the profile of exponent `gamma` after `step` steps (least squares in L2, float64)."""
    steps, gammas = np.asarray(steps, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    gram = profile_products(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    x = np.linalg.solve(gram, profile_products(steps, gammas, step, gamma))
    return x / x.sum()


def profile_error(steps, gammas, step: float, gamma: float, x: np.ndarray) -> float:
    """||p_target - sum_i x_i p_i|| / ||p_target||: how far the summed profile is from the one asked for. For any
    weights trajectory theta (held constant over each step), Cauchy-Schwarz bounds the reconstruction's error in
    each weight by this times ||p_target|| times the L2 norm of that weight's trajectory."""
    steps, gammas = np.asarray(steps, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    gram = profile_products(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    b = profile_products(steps, gammas, step, gamma)
    target = profile_products(step, gamma, step, gamma)
    return float(np.sqrt(max(target - 2 * x @ b + x @ gram @ x, 0.0) / target))


def snapshots(run_dir: str | Path) -> list[Snapshot]:
    """The run's post-hoc EMA snapshots, by step then sigma_rel; a RunError saying how to store them if it has none."""
    folder = Path(run_dir) / POSTHOC
    found = []
    for path in sorted(folder.glob("ema-*.safetensors")) if folder.is_dir() else []:
        try:
            meta = read_meta(path)
            if meta.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"its format is {meta.get('format')!r}, not {SNAPSHOT_FORMAT}")
            found.append(Snapshot(path, float(meta["sigma_rel"]), float(meta["gamma"]), int(meta["step"])))
        except (Unreadable, KeyError, TypeError, ValueError) as e:
            raise RunError(f"the post-hoc EMA snapshot {path} cannot be read ({e}): delete it") from None
    if not found:
        raise RunError(f"{run_dir} has no post-hoc EMA snapshots ({folder}/ema-*.safetensors): to store them, "
                       f"{HOW_TO_STORE}")
    return sorted(found, key=lambda s: (s.step, s.sigma_rel))


def _target_step(run_dir: Path, found: list[Snapshot]) -> int:
    """The last snapshot step at or before the run's checkpoint: later ones are of steps a resume would train again
    (a kill after them), or of a branch rolled back."""
    ckpt = run_dir / CHECKPOINT
    limit = step_of(ckpt) if ckpt.is_file() else max(s.step for s in found)
    steps = [s.step for s in found if s.step <= limit]
    if not steps:
        raise RunError(f"{run_dir}'s post-hoc EMA snapshots are all past its checkpoint's step {limit}: resume the run")
    return max(steps)


def reconstruct(run_dir: str | Path, sigma_rel: float, device="cpu") -> Reconstruction:
    """The EMA of relative width `sigma_rel` of the run's weights at its last snapshot step, summed from its
    snapshots (those of that step and before), in float64 and returned in the weights' own dtypes."""
    if not 0 < sigma_rel <= SIGMA_REL_MAX:
        raise ValueError(f"--length (sigma_rel) must be in (0, {SIGMA_REL_MAX}], got {sigma_rel}; EDM2's best lie "
                         f"around 0.05 to 0.15")
    run_dir = Path(run_dir)
    found = snapshots(run_dir)
    step = _target_step(run_dir, found)
    used = [s for s in found if s.step <= step]
    steps, gammas, gamma = [s.step for s in used], [s.gamma for s in used], gamma_of(sigma_rel)
    x = solve_coefficients(steps, gammas, step, gamma)
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for snapshot, coefficient in zip(used, x.tolist()):
        tensors = load_tensors(snapshot.path, device)[0]
        for k, v in tensors.items():
            dtypes[k] = v.dtype
            if v.is_floating_point():
                total[k] = total.get(k, 0) + coefficient * v.double()
            else:
                total[k] = v  # integer buffers are not averaged: the newest
    weights = {k: v.to(dtypes[k]) for k, v in total.items()}
    return Reconstruction(weights, sigma_rel, step, used, x, profile_error(steps, gammas, step, gamma, x))


def write_reconstruction(run_dir: str | Path, sigma_rel: float, out: Optional[str | Path] = None) -> tuple[Path,
                                                                                                           Reconstruction]:
    """Reconstruct the EMA of `sigma_rel` and write it, atomically, to `out`, or by default as the run's sampling
    weights (model.safetensors: what `sample`, `eval` and the rest then use, until training writes it again).
    Returns where it went and the reconstruction."""
    run_dir = Path(run_dir)
    read_config(run_dir)  # a RunError for a directory that is no run, before its lock is taken
    with run_lock(run_dir, f"ema --length {sigma_rel}"):  # training beside it would overwrite model.safetensors
        r = reconstruct(run_dir, sigma_rel)
        refuse_nonfinite(r.weights, r.snapshots[-1].path)
        ckpt = run_dir / CHECKPOINT
        if out is None and ckpt.is_file() and step_of(ckpt) != r.step:
            raise RunError(f"the run's checkpoint is at step {step_of(ckpt)} but its last post-hoc EMA snapshot at "
                           f"step {r.step}, so sampling would not read {MODEL} of step {r.step}: write the weights "
                           f"elsewhere with --out FILE, or train the run to a snapshot step")
        path = Path(out) if out is not None else run_dir / MODEL
        save_tensors(path, r.weights, {"step": r.step, "format": "diffusely-weights-1", "weights": "posthoc-ema",
                                       "sigma_rel": sigma_rel})
    return path, r


def load_posthoc_run(run_dir: str | Path, sigma_rel: float, device="cpu") -> LoadedRun:
    """The run as load_run gives it (float32, ready to sample), its network holding the EMA of `sigma_rel`
    reconstructed from the snapshots, written nowhere; its step the snapshots'."""
    r = reconstruct(run_dir, sigma_rel, device)  # first: a run without snapshots says so before anything loads
    refuse_nonfinite(r.weights, r.snapshots[-1].path)
    run = load_run(run_dir, device)
    net = run.denoiser.net.net if isinstance(run.denoiser.net, FastNet) else run.denoiser.net
    net.load_state_dict(r.weights)
    run.step = r.step
    return run
