"""Run directories: config.json, one safetensors checkpoint (model, EMA, optimizer, step), atomic writes.

A run directory holds
    config.json              RunConfig: everything needed to rebuild the model and resume
    checkpoint.safetensors   tensors "model.*", "ema.*", "optim.*"; metadata: step, optimizer groups
    log.csv, loss.png        the training curve
    samples/                 sample grids written during training
Nothing here unpickles: safetensors holds tensors only, and the rest is JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._files import atomic_write, atomic_write_text
from .config import ConfigError, RunConfig
from .denoisers import Denoiser
from .nets import UNet

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"


class RunError(ValueError):
    """A run directory that cannot be read; the message says what to fix."""


def write_config(run_dir: str | Path, config: RunConfig) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, config.to_json() + "\n")


def read_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"no such run directory: {run_dir}; train one with `diffusely train DATA --out {run_dir}`")
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} has no {CONFIG}: is it a run directory made by `diffusely train`?")
    try:
        return RunConfig.load(path)
    except ConfigError as e:
        raise RunError(f"{path} cannot be used: {e}. Fix the file or train the run again.") from None


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, s in state["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    # JSON turned tuples (AdamW's betas) into lists; give them back as the optimizer made them
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, step: int) -> Path:
    """Write model, EMA and optimizer state and the step into one safetensors file, atomically."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    tensors |= optim_tensors
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"step": str(step), "optimizer": json.dumps(optim_meta), "format": "diffusely-checkpoint-1"}
    path = Path(run_dir) / CHECKPOINT
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


@dataclass
class Checkpoint:
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict


def load_checkpoint(run_dir: str | Path, device="cpu") -> Checkpoint:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{run_dir} has no {CHECKPOINT} yet: train it (or let training reach its first checkpoint)")
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
        step = int(meta["step"])
        optim_meta = json.loads(meta["optimizer"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise RunError(f"{path} is damaged or not a diffusely checkpoint ({e}); train the run again") from None
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}}
    for k, v in tensors.items():
        prefix, rest = k.split(".", 1)
        parts[prefix][rest if prefix != "optim" else k] = v
    return Checkpoint(step, parts["model"], parts["ema"], _unflatten_optimizer(parts["optim"], optim_meta))


def build_model(config: RunConfig) -> UNet:
    return UNet(config.model)


def build_denoiser(config: RunConfig, net: torch.nn.Module) -> Denoiser:
    d = config.diffusion
    return Denoiser(net, d.parameterization, sigma_data=d.sigma_data, schedule=d.discrete_schedule())


@dataclass
class LoadedRun:
    config: RunConfig
    denoiser: Denoiser
    step: int


def load_run(run_dir: str | Path, device="cpu", weights: str = "ema") -> LoadedRun:
    """Rebuild a run's network from config.json and load its EMA (or raw) weights, ready for sampling."""
    config = read_config(run_dir)
    ckpt = load_checkpoint(run_dir, device)
    net = build_model(config).to(device)
    try:
        net.load_state_dict(ckpt.ema if weights == "ema" else ckpt.model)
    except RuntimeError as e:
        raise RunError(f"the weights in {run_dir} do not fit the model that config.json describes "
                       f"(was config.json edited?): {str(e).splitlines()[0]}") from None
    net.eval().requires_grad_(False)
    return LoadedRun(config, build_denoiser(config, net), ckpt.step)
