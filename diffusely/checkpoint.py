"""Run directories: config.json, one safetensors checkpoint (model, EMA, optimizer, step), atomic writes.

A run directory holds
    config.json              RunConfig: everything needed to rebuild the model and resume
    tokenizer.json           the word tokenizer of a text run whose encoder was trained from scratch
    checkpoint.safetensors   tensors "model.*", "ema.*", "optim.*"; metadata: step, optimizer groups
    log.csv, loss.png        the training curve
    samples/                 sample grids written during training
    schedules.json           sigma schedules optimised for this model (`diffusely optimize-schedule`)
    latents.safetensors      a latent run's training set, encoded once (see train/latents.py)
An autoencoder run (`diffusely train-autoencoder`) is a directory of the same kind: config.json
(AutoencoderRunConfig, "kind": "autoencoder"), checkpoint.safetensors ("model.*", the discriminator's
"disc.*", "optim.*", "disc_optim.*"), log.csv, loss.png and reconstructions/.
Nothing here unpickles: safetensors holds tensors only, and the rest is JSON.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._files import atomic_write, atomic_write_text, file_digest
from .config import AutoencoderRunConfig, ConfigError, JsonConfig, RunConfig
from .denoisers import Denoiser
from .nets import UNet
from .nets.autoencoder import Autoencoder, LatentSpace
from .nets.fast import fast_net
from .text import ScratchTextEncoder, TextEncoder, TextUNet, TokenProjection, load_text_encoder

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
SCHEDULES = "schedules.json"


class RunError(ValueError):
    """A run directory that cannot be read; the message says what to fix."""


def write_config(run_dir: str | Path, config: JsonConfig) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, config.to_json() + "\n")


def read_config(run_dir: str | Path, cls: type[JsonConfig] = RunConfig):
    """The config.json of a diffusion run (RunConfig) or, with cls=AutoencoderRunConfig, of an autoencoder run."""
    run_dir = Path(run_dir)
    command = "train-autoencoder" if cls is AutoencoderRunConfig else "train"
    if not run_dir.is_dir():
        raise RunError(f"no such run directory: {run_dir}; train one with `diffusely {command} DATA --out {run_dir}`")
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} has no {CONFIG}: is it a run directory made by `diffusely {command}`?")
    try:
        kind = json.loads(path.read_text()).get("kind", "diffusion")
    except (ValueError, AttributeError):
        kind = None  # the loader below says what is wrong with the file
    if cls is RunConfig and kind == "autoencoder":
        raise RunError(f"{run_dir} is an autoencoder run, not a diffusion run: train latent diffusion on it with "
                       f"`diffusely train DATA --autoencoder {run_dir} --out RUN_DIR`")
    if cls is AutoencoderRunConfig and kind == "diffusion":
        raise RunError(f"{run_dir} is a diffusion run, not an autoencoder: train one with "
                       f"`diffusely train-autoencoder DATA --out AE_DIR`")
    try:
        return cls.load(path)
    except ConfigError as e:
        raise RunError(f"{path} cannot be used: {e}. Fix the file or train the run again.") from None


def _flatten_optimizer(state: dict, name: str = "optim") -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, s in state["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"{name}.{idx}.{k}"] = v
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


def _optimizer_key(name: str) -> str:
    """Where an optimizer's JSON state lives in the metadata: optim -> optimizer, disc_optim -> disc_optimizer."""
    if not name.endswith("optim"):
        raise ValueError(f"optimizer names end in 'optim' (optim, disc_optim), got {name!r}")
    return name + "izer"


def save_state(path: str | Path, *, step: int, modules: dict[str, torch.nn.Module],
               optimizers: dict[str, torch.optim.Optimizer]) -> Path:
    """Write modules, optimizers and the step into one safetensors file, atomically: tensors
    "<module>.<key>" and "<optimizer>.<param index>.<key>", the optimizers' groups and scalars as JSON metadata."""
    tensors = {f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()}
    metadata = {"step": str(step), "format": "diffusely-checkpoint-1"}
    for name, optimizer in optimizers.items():
        optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict(), name)
        tensors |= optim_tensors
        metadata[_optimizer_key(name)] = json.dumps(optim_meta)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return Path(path)


@dataclass
class State:
    """A file save_state wrote: its step, module state dicts by name, optimizer state dicts by name."""

    step: int
    modules: dict[str, dict[str, torch.Tensor]]
    optimizers: dict[str, dict]


def load_state(path: str | Path, device="cpu") -> State:
    """Read a file save_state wrote (a RunError names it if it is damaged)."""
    path = Path(path)
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
        step = int(meta["step"])
        names = {k for k in meta if k.endswith("optimizer")}
        optim_meta = {k[:-len("izer")]: json.loads(meta[k]) for k in names}
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise RunError(f"{path} is damaged or not a diffusely checkpoint ({e}); train the run again") from None
    modules: dict[str, dict[str, torch.Tensor]] = {}
    optim_tensors: dict[str, dict[str, torch.Tensor]] = {name: {} for name in optim_meta}
    for k, v in tensors.items():
        prefix, rest = k.split(".", 1)
        if prefix in optim_tensors:
            optim_tensors[prefix][k] = v
        else:
            modules.setdefault(prefix, {})[rest] = v
    return State(step, modules, {name: _unflatten_optimizer(optim_tensors[name], m) for name, m in optim_meta.items()})


def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, step: int) -> Path:
    """Write model, EMA and optimizer state and the step into one safetensors file, atomically."""
    return save_state(Path(run_dir) / CHECKPOINT, step=step, modules={"model": model, "ema": ema},
                      optimizers={"optim": optimizer})


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
    state = load_state(path, device)
    if "optim" not in state.optimizers:
        raise RunError(f"{path} is damaged or not a diffusely checkpoint (no optimizer state); train the run again")
    return Checkpoint(state.step, state.modules.get("model", {}), state.modules.get("ema", {}), state.optimizers["optim"])


def build_model(config: RunConfig) -> UNet | TextUNet:
    """The run's network: a U-Net, behind its text encoder (trained, or a projection of a frozen one) for text runs."""
    t = config.text
    if not t.enabled:
        return UNet(config.model)
    if config.model.context_dim != t.width:
        raise ConfigError(f"model.context_dim ({config.model.context_dim}) must equal text.width ({t.width}) in a text run")
    if t.encoder == "scratch":
        encoder = ScratchTextEncoder(t.vocab_size, t.max_tokens, t.width, t.layers, t.heads)
    else:
        encoder = TokenProjection(t.embed_dim, t.width)
    return TextUNet(UNet(config.model), encoder)


def build_denoiser(config: RunConfig, net: torch.nn.Module) -> Denoiser:
    d = config.diffusion
    return Denoiser(net, d.parameterization, sigma_data=d.sigma_data, schedule=d.discrete_schedule())


def read_schedules(run_dir: str | Path) -> dict[str, dict[str, list[float]]]:
    """The run's optimised sigma schedules, {sampler: {steps: [sigma_max, ..., sigma_min, 0]}}; {} if none."""
    path = Path(run_dir) / SCHEDULES
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise RunError(f"{path} is not valid JSON ({e}); delete it or run `diffusely optimize-schedule` again") from None


def write_schedule(run_dir: str | Path, sampler: str, steps: int, sigmas) -> Path:
    """Store (or replace) the schedule for (sampler, steps) in the run's schedules.json, atomically."""
    schedules = read_schedules(run_dir)
    schedules.setdefault(sampler, {})[str(steps)] = [float(s) for s in sigmas]
    path = Path(run_dir) / SCHEDULES
    atomic_write_text(path, json.dumps(schedules, indent=2) + "\n")
    return path


@dataclass
class LoadedRun:
    config: RunConfig
    denoiser: Denoiser
    step: int
    schedules: dict = field(default_factory=dict)  # read_schedules(run_dir)
    run_dir: Optional[str] = None
    _text: Optional[TextEncoder] = field(default=None, repr=False)
    latent: Optional[LatentSpace] = None  # a latent run's autoencoder, which `decode` applies

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """What the denoiser produces, as images: decoded in a latent run, unchanged otherwise."""
        return x if self.latent is None else self.latent.decode(x)

    @property
    def text(self) -> Optional[TextEncoder]:
        """The prompt encoder of a text run (its tokenizer, or its frozen model, loaded when first asked for)."""
        if self._text is None and self.config.text.enabled:
            try:
                self._text = load_text_encoder(self.config.text, self.run_dir, self.device)
            except ValueError as e:
                raise RunError(str(e)) from None
        return self._text

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device


def load_run(run_dir: str | Path, device="cpu", weights: str = "ema", precision: str = "fp32",
             cuda_graphs: Optional[bool] = False) -> LoadedRun:
    """Rebuild a run's network from config.json and load its EMA (or raw) weights, ready for sampling.
    precision ('auto', 'fp32', 'bf16') and cuda_graphs (None: where the device is CUDA) choose how the
    network runs when sampling (nets.fast); the defaults run it as trained, in float32."""
    config = read_config(run_dir)
    latent = load_latent_space(config, device, run_dir) if config.latent else None
    ckpt = load_checkpoint(run_dir, device)
    net = build_model(config).to(device)
    try:
        net.load_state_dict(ckpt.ema if weights == "ema" else ckpt.model)
    except RuntimeError as e:
        raise RunError(f"the weights in {run_dir} do not fit the model that config.json describes "
                       f"(was config.json edited?): {str(e).splitlines()[0]}") from None
    net.eval().requires_grad_(False)
    denoiser = build_denoiser(config, fast_net(net, precision, cuda_graphs))
    return LoadedRun(config, denoiser, ckpt.step, read_schedules(run_dir), run_dir=str(run_dir), latent=latent)


# ---------------------------------------------------------------------------------------------- autoencoders


@dataclass
class LoadedAutoencoder:
    config: AutoencoderRunConfig
    autoencoder: Autoencoder
    step: int
    digest: str  # file_digest of its checkpoint


def load_autoencoder(ae_dir: str | Path, device="cpu") -> LoadedAutoencoder:
    """Rebuild an autoencoder run's network from its config.json and load its weights, in eval mode."""
    config = read_config(ae_dir, AutoencoderRunConfig)
    path = Path(ae_dir) / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{ae_dir} has no {CHECKPOINT} yet: train it (or let training reach its first checkpoint)")
    state = load_state(path, device)
    autoencoder = Autoencoder(config.model).to(device)
    try:
        autoencoder.load_state_dict(state.modules.get("model", {}))
    except RuntimeError as e:
        raise RunError(f"the weights in {ae_dir} do not fit the autoencoder that its config.json describes "
                       f"(was config.json edited?): {str(e).splitlines()[0]}") from None
    return LoadedAutoencoder(config, autoencoder.eval().requires_grad_(False), state.step, file_digest(path))


def autoencoder_dir(config: RunConfig, run_dir: str | Path | None = None) -> Path:
    """The autoencoder directory of a latent run; a RunError in one line if it is not there."""
    path = Path(config.latent.autoencoder)
    if not (path / CONFIG).is_file() or not (path / CHECKPOINT).is_file():
        where = f"{run_dir}/{CONFIG}" if run_dir is not None else "the run's config.json"
        raise RunError(f"this latent diffusion run needs its autoencoder, and {path} holds none (moved or deleted?): "
                       f"put the autoencoder run back there, or set latent.autoencoder in {where} to where it is now")
    return path


def load_latent_space(config: RunConfig, device="cpu", run_dir: str | Path | None = None) -> LatentSpace:
    """A latent run's autoencoder with the run's scale and shift, ready to decode samples."""
    loaded = load_autoencoder(autoencoder_dir(config, run_dir), device)
    lc = config.latent
    if lc.autoencoder_digest and loaded.digest != lc.autoencoder_digest:
        warnings.warn(f"the autoencoder in {lc.autoencoder} changed after this run encoded its data (step "
                      f"{lc.autoencoder_step} then, {loaded.step} now): samples are decoded with the new one", stacklevel=2)
    return LatentSpace(loaded.autoencoder, lc.scale_factor, lc.shift_factor).to(device)
