"""Run directories: config.json, the training checkpoint and the weights to sample with, read back into a model.

A run directory holds
    config.json              RunConfig: everything needed to rebuild the model and resume
    tokenizer.json           the word tokenizer of a text run whose encoder was trained from scratch
    checkpoint.safetensors   tensors "model.*", "ema.*", "optim.*" (and "phema0.*".. under train.posthoc_ema);
                             metadata: step, optimizer groups (for resume)
    checkpoint-STEP.safetensors  the `keep - 1` checkpoints before it, to roll back to (diffusely.state)
    model.safetensors        the EMA weights alone and their step: what `load_run` samples with
    .lock                    the lock a process writing the run holds (its PID and command inside)
    log.csv, loss.png        the training curve
    samples/                 sample grids written during training
    posthoc/                 power-function EMA snapshots for `diffusely ema` (train/posthoc.py, docs/ema.md)
    schedules.json           sigma schedules optimised for this model (`diffusely optimize-schedule`)
    latents.safetensors      a latent run's training set, encoded once (see train/latents.py)
An autoencoder run (`diffusely train-autoencoder`) is a directory of the same kind: config.json
(AutoencoderRunConfig, "kind": "autoencoder"), checkpoint.safetensors ("model.*", the discriminator's
"disc.*", "optim.*", "disc_optim.*") and its kept checkpoint-STEP.safetensors, log.csv, loss.png and
reconstructions/. Nothing here unpickles: safetensors holds tensors only, and the rest is JSON. No checkpoint
or weights file is ever written holding NaN or inf, and none is sampled from.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ._files import (RunError, Unreadable, atomic_write_text, check_writable, file_digest, load_tensors, merging,
                     read_meta, save_tensors)
from .audio import network_output
from .config import AutoencoderRunConfig, ConfigError, JsonConfig, RunConfig
from .denoisers import Denoiser
from .distill.consistency import ConsistencyDenoiser
from .nets import UNet
from .nets.autoencoder import Autoencoder, LatentSpace
from .nets.fast import fast_net
from .text import ScratchTextEncoder, TextEncoder, TextUNet, TokenProjection, load_text_encoder
from .state import (CHECKPOINT, NonFiniteError, State, count_nonfinite, kept_steps, load_state, roll_back,  # noqa: F401
                    save_run_state, save_state, step_of)

CONFIG = "config.json"
OWN_AUTOENCODER = "autoencoder"  # RUN_DIR/autoencoder: the one a run trains for itself (text runs)
MODEL = "model.safetensors"
SCHEDULES = "schedules.json"
SIGMA_FLOOR = 1e-5  # below this a sigma underflows float32 arithmetic (sigma², log sigma) into black images


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
    except (ValueError, AttributeError, RecursionError):
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


def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, step: int, keep: int = 2,
                    more: Optional[dict[str, torch.nn.Module]] = None) -> Path:
    """Write model, EMA and optimizer state and the step into checkpoint.safetensors (keeping the last `keep`,
    older ones as checkpoint-STEP.safetensors; see diffusely.state), then the EMA weights alone into
    model.safetensors for sampling, each atomically. NonFiniteError, writing nothing, if any tensor is NaN or inf.
    `more`: other modules a resume needs, by name (a student's target network)."""
    run_dir = Path(run_dir)
    path = save_run_state(run_dir, step=step, modules={"model": model, "ema": ema, **(more or {})},
                          optimizers={"optim": optimizer}, keep=keep)
    save_tensors(run_dir / MODEL, ema.state_dict(), {"step": step, "format": "diffusely-weights-1", "weights": "ema"})
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
        encoder = ScratchTextEncoder(t.vocab_size, t.max_tokens, t.width, t.layers, t.heads, t.ngram)
    else:
        encoder = TokenProjection(t.embed_dim, t.width)
    return TextUNet(UNet(config.model), encoder)


def build_denoiser(config: RunConfig, net: torch.nn.Module) -> Denoiser:
    """The run's network as a denoiser: its parameterization, or a student's consistency function (diffusely.distill)."""
    d = config.diffusion
    # a latent run's low-res channels are pixels, not a base of the latents' shape (train.data sets it off there)
    residual = "lowres" if d.residual and "lowres" in config.conditions and config.latent is None else None
    if config.distill is not None:
        return ConsistencyDenoiser(net, sigma_data=d.sigma_data, sigma_min=d.sigma_min, schedule=d.discrete_schedule(),
                                   residual=residual)
    return Denoiser(net, d.parameterization, sigma_data=d.sigma_data, schedule=d.discrete_schedule(), residual=residual)


def read_schedules(run_dir: str | Path) -> dict[str, dict[str, list[float]]]:
    """The run's optimised sigma schedules, {sampler: {steps: [sigma_max, ..., sigma_min, 0]}}; {} if none.
    A file of the wrong shape, or a sequence no sampler can use, is a RunError naming the entry."""
    path = Path(run_dir) / SCHEDULES
    if not path.is_file():
        return {}
    fix = "delete it or run `diffusely optimize-schedule` again"
    try:
        schedules = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise RunError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:120]}); {fix}") from None
    if not isinstance(schedules, dict):
        raise RunError(f"{path} must hold an object {{sampler: {{steps: [sigmas]}}}}, not "
                       f"{type(schedules).__name__}; {fix}")
    for sampler, by_steps in schedules.items():
        if not isinstance(by_steps, dict):
            raise RunError(f"{path}: {sampler!r} must be an object {{steps: [sigmas]}}, not "
                           f"{type(by_steps).__name__}; {fix}")
        for steps, sigmas in by_steps.items():
            problem = _sigmas_problem(steps, sigmas)
            if problem:
                raise RunError(f"{path}: {sampler!r} {steps!r} {problem}; {fix}")
    return schedules


def _sigmas_problem(steps: str, sigmas) -> Optional[str]:
    """What is wrong with one stored sequence (steps + 1 sigmas, finite, strictly decreasing, ending in 0), or None."""
    if not steps.isdigit() or int(steps) < 1:
        return "is not a step count: the keys under a sampler are whole numbers >= 1"
    if not isinstance(sigmas, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sigmas):
        return "must be a list of numbers (sigmas)"
    if len(sigmas) != int(steps) + 1:
        return f"must hold steps + 1 = {int(steps) + 1} sigmas, not {len(sigmas)}"
    if not all(math.isfinite(s) for s in sigmas):
        return "holds a sigma that is not finite (NaN or Infinity)"
    if sigmas[-1] != 0:
        return f"must end in 0, not {sigmas[-1]}"
    if min(sigmas[:-1]) < SIGMA_FLOOR:
        return f"holds sigma {min(sigmas[:-1]):g}: before the final 0 every sigma must be at least {SIGMA_FLOOR:g}"
    if any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        return "must be strictly decreasing"
    return None


def write_schedule(run_dir: str | Path, sampler: str, steps: int, sigmas) -> Path:
    """Store (or replace) the schedule for (sampler, steps) in the run's schedules.json, atomically."""
    check_writable(run_dir)
    path = Path(run_dir) / SCHEDULES
    with merging(run_dir):  # another optimize-schedule may be merging its entry: read what it wrote
        schedules = read_schedules(run_dir)
        schedules.setdefault(sampler, {})[str(steps)] = [float(s) for s in sigmas]
        atomic_write_text(path, json.dumps(schedules, indent=2) + "\n")
    return path


def refuse_nonfinite(weights: dict[str, torch.Tensor], source: Path) -> None:
    """NonFiniteError if any weight holds NaN or inf: sampling from them gives black images."""
    bad = count_nonfinite(weights)
    if bad:
        raise NonFiniteError(f"{source} holds non-finite weights ({bad} of {len(weights)} tensors hold NaN or inf), "
                             f"from a run that diverged: roll back to a kept checkpoint (rename checkpoint-STEP."
                             f"safetensors to {CHECKPOINT}) or train again with a lower learning rate")


def sampling_weights(run_dir: str | Path, device="cpu", weights: str = "ema") -> tuple[dict[str, torch.Tensor], int]:
    """The weights to sample with and their step: model.safetensors where it is the EMA of the training
    checkpoint's step (or stands alone), else the training checkpoint's EMA (or raw, weights='model') weights:
    runs from before model.safetensors, or rolled back. Refuses non-finite weights."""
    run_dir = Path(run_dir)
    model_path, ckpt_path = run_dir / MODEL, run_dir / CHECKPOINT
    if weights == "ema" and model_path.is_file():
        try:
            step = int(read_meta(model_path)["step"])
            if not ckpt_path.is_file() or step_of(ckpt_path) == step:
                state = load_tensors(model_path, device)[0]
                refuse_nonfinite(state, model_path)
                return state, step
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, NonFiniteError):
                raise
            why = str(e) if isinstance(e, Unreadable) else f"{model_path} holds no step"
            raise RunError(f"{why}; delete it to sample from {CHECKPOINT}") from None
    ckpt = load_checkpoint(run_dir, device)
    state = ckpt.ema if weights == "ema" else ckpt.model
    refuse_nonfinite(state, ckpt_path)
    return state, ckpt.step


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
        """What the denoiser produces, as samples: decoded in a latent run, companded in an audio run whose network
        sees linear amplitudes (diffusely.audio.network_output), unchanged otherwise."""
        return network_output(x, self.config) if self.latent is None else self.latent.decode(x)

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


def _misfit(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> str:
    """How weights differ from a model's state dict, in one line (torch's own message lists every key)."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} for {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and weights[k].shape != v.shape]
    parts = [f"{len(found)} {what} (e.g. {found[0]})" for found, what in
             ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")) if found]
    return "; ".join(parts) or "they do not load"


def load_run(run_dir: str | Path, device="cpu", weights: str = "ema", precision: str = "fp32",
             cuda_graphs: Optional[bool] = False) -> LoadedRun:
    """Rebuild a run's network from config.json and load its EMA (or raw) weights, ready for sampling.
    precision ('auto', 'fp32', 'bf16') and cuda_graphs (None: where the device is CUDA) choose how the
    network runs when sampling (nets.fast); the defaults run it as trained, in float32."""
    from .interop.diffusers import is_diffusers_run, load_diffusers_run  # a run made by `diffusely import-diffusers`
    if is_diffusers_run(run_dir):
        return load_diffusers_run(run_dir, device, precision, cuda_graphs)
    config = read_config(run_dir)
    latent = load_latent_space(config, device, run_dir) if config.latent else None
    state, step = sampling_weights(run_dir, device, weights)
    net = build_model(config).to(device)
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise RunError(f"the weights in {run_dir} do not fit the model that config.json describes "
                       f"(was config.json edited?): {_misfit(net.state_dict(), state)}") from None
    net.eval().requires_grad_(False)
    denoiser = build_denoiser(config, fast_net(net, precision, cuda_graphs))
    return LoadedRun(config, denoiser, step, read_schedules(run_dir), run_dir=str(run_dir), latent=latent)


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
    refuse_nonfinite(state.modules.get("model", {}), path)
    autoencoder = Autoencoder(config.model).to(device)
    try:
        autoencoder.load_state_dict(state.modules.get("model", {}))
    except RuntimeError as e:
        raise RunError(f"the weights in {ae_dir} do not fit the autoencoder that its config.json describes "
                       f"(was config.json edited?): {str(e).splitlines()[0]}") from None
    return LoadedAutoencoder(config, autoencoder.eval().requires_grad_(False), state.step, file_digest(path))


def _found_autoencoder(config: RunConfig, run_dir: str | Path | None) -> Optional[Path]:
    """Where a latent run's autoencoder is: its config's path, else (a run that trained its own, RUN_DIR/autoencoder,
    the text default, and was moved or copied since) the one it carries; None where neither holds one."""
    path = Path(config.latent.autoencoder)
    holds = lambda p: (p / CONFIG).is_file() and (p / CHECKPOINT).is_file()  # noqa: E731
    if not holds(path) and run_dir is not None and path.name == OWN_AUTOENCODER and holds(Path(run_dir) / path.name):
        return Path(run_dir) / path.name  # the digest check in load_latent_space still warns if it is another one
    return path if holds(path) else None


def autoencoder_dir(config: RunConfig, run_dir: str | Path | None = None) -> Path:
    """The autoencoder directory of a latent run (see _found_autoencoder); a RunError in one line if it is not there."""
    found = _found_autoencoder(config, run_dir)
    if found is None:
        where = f"{run_dir}/{CONFIG}" if run_dir is not None else "the run's config.json"
        raise RunError(f"this latent diffusion run needs its autoencoder, and {config.latent.autoencoder} holds none "
                       f"(moved or deleted?): put the autoencoder run back there, or set latent.autoencoder in {where} "
                       f"to where it is now")
    return found


def relocate_autoencoder(config, run_dir: str | Path):
    """A latent run being resumed: its config pointed at the autoencoder it carries when it was moved (see
    _found_autoencoder), so training, and the config.json it writes, name that place. Other configs, and a run
    whose autoencoder is nowhere (loading its latents says so), are left alone."""
    found = _found_autoencoder(config, run_dir) if getattr(config, "latent", None) is not None else None
    if found is not None and found != Path(config.latent.autoencoder):
        config.latent.autoencoder = str(found.resolve())
    return config


def load_latent_space(config: RunConfig, device="cpu", run_dir: str | Path | None = None) -> LatentSpace:
    """A latent run's autoencoder with the run's scale and shift, ready to decode samples."""
    loaded = load_autoencoder(autoencoder_dir(config, run_dir), device)
    lc = config.latent
    if lc.autoencoder_digest and loaded.digest != lc.autoencoder_digest:
        warnings.warn(f"the autoencoder in {lc.autoencoder} changed after this run encoded its data (step "
                      f"{lc.autoencoder_step} then, {loaded.step} now): samples are decoded with the new one", stacklevel=2)
    return LatentSpace(loaded.autoencoder, lc.scale_factor, lc.shift_factor).to(device)
