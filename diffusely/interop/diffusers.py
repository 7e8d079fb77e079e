"""A local diffusers UNet2DModel as a diffusely run: its network behind our denoiser wrapper, in sigma space.

diffusers keeps a model as a folder: `unet/` (config.json and diffusion_pytorch_model.safetensors) and
`scheduler/` (scheduler_config.json: the training betas and what the network predicts). Its network is a
raw F(x_vp, t) over DDPM timesteps, exactly what `Denoiser` wraps with a discrete schedule: sigma maps to
a fractional timestep by log-sigma interpolation over the scheduler's own alphas_cumprod table, and the
prediction type picks the coefficients (epsilon -> eps, v_prediction -> v, sample -> x0, sigma_data 1:
the VP forms). So every sampler, spacing and step count runs on it.

`import_diffusers(folder, run_dir)` writes a run directory

    config.json   {"kind": "diffusers", "network": "UNet2DModel", "unet": "unet", "scheduler": {...}, ...}
    unet/         the network's config.json and safetensors weights, copied unchanged

that `load_diffusers_run` (and `checkpoint.load_run`, which dispatches here) reads back. diffusers itself
(`pip install diffusers`) is needed to build the network; nothing is fetched, and .bin pickles are refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .._files import RunError, atomic_write, atomic_write_text, check_writable, load_tensors, run_lock
from ..checkpoint import CONFIG, LoadedRun, read_schedules, refuse_nonfinite
from ..config import DataConfig, DiffusionConfig, RunConfig
from ..denoisers import Denoiser
from ..nets.fast import fast_net
from ..nets.unet import UNetConfig
from ..schedules import DiscreteSchedule

DIFFUSERS_KIND = "diffusers"
WEIGHTS = "diffusion_pytorch_model.safetensors"
# diffusers' prediction_type -> our parameterization (sigma_data 1 makes v and x0 the VP forms)
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise RunError("a diffusers model needs the diffusers package: pip install 'diffusers>=0.42'") from None
    return diffusers


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise RunError(f"{path} is not readable JSON ({type(e).__name__}); is this a diffusers model folder?") from None
    if not isinstance(value, dict):
        raise RunError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def find_unet(folder: str | Path) -> tuple[Path, Optional[Path]]:
    """(the unet folder, the scheduler_config.json or None) of a pipeline folder or of a bare unet folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"no such folder: {folder}; give a local diffusers pipeline folder or its unet/ folder")
    unet = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (unet / "config.json").is_file():
        raise RunError(f"{folder} holds no unet/config.json nor config.json: not a diffusers UNet2DModel folder")
    if not (unet / WEIGHTS).is_file():
        pickle = " (only a .bin pickle, which is never loaded: convert it to safetensors)" if any(
            unet.glob("*.bin")) else ""
        raise RunError(f"{unet} has no {WEIGHTS}{pickle}")
    for candidate in (unet.parent / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if candidate.is_file():
            return unet, candidate
    return unet, None


def check_unet_config(config: dict, where: Path) -> None:
    """Refuse a network this wrapper cannot drive: another class, class-conditional, or non-square."""
    name = config.get("_class_name")
    if name != "UNet2DModel":
        raise RunError(f"{where}: _class_name is {name!r}; only a diffusers UNet2DModel can be imported")
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise RunError(f"{where}: a class-conditional UNet2DModel (num_class_embeds/class_embed_type) is not "
                       f"supported; import an unconditional one")
    if config.get("time_embedding_type", "positional") != "positional":
        raise RunError(f"{where}: time_embedding_type {config['time_embedding_type']!r} is a score-SDE network of "
                       f"noise levels, not of DDPM timesteps; only 'positional' UNet2DModels can be imported")
    channels, out = config.get("in_channels", 3), config.get("out_channels", 3)
    if out not in (channels, 2 * channels):
        raise RunError(f"{where}: out_channels {out} is neither in_channels {channels} nor twice it (learned variance)")
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(set(size)) != 1:
        raise RunError(f"{where}: sample_size {size} is not square; diffusely runs sample square images")


def discrete_schedule(scheduler: dict) -> DiscreteSchedule:
    """The scheduler's training alphas_cumprod as our DiscreteSchedule, computed by diffusers itself (its float32
    betas: linear, scaled_linear, squaredcos_cap_v2 or trained_betas), so our sigmas are the scheduler's."""
    diffusers = _diffusers()
    cls = getattr(diffusers, str(scheduler.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        cls = diffusers.DDPMScheduler
    try:
        alphas_cumprod = cls.from_config(scheduler).alphas_cumprod.double()
    except (ValueError, NotImplementedError, TypeError) as e:
        raise RunError(f"the scheduler config cannot be read by diffusers' {cls.__name__}: {e}") from None
    if not 0 < float(alphas_cumprod[-1]) < float(alphas_cumprod[0]) < 1:
        raise RunError("the scheduler's last timestep is pure noise (zero terminal SNR: sigma_max infinite), which a "
                       "sigma-space sampler cannot start from; use a schedule without rescale_betas_zero_snr")
    return DiscreteSchedule(alphas_cumprod)


def parameterization(scheduler: dict) -> str:
    kind = scheduler.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise RunError(f"scheduler prediction_type {kind!r} is not supported; one of: {', '.join(PREDICTIONS)}")
    return PREDICTIONS[kind]


class DiffusersUNet(nn.Module):
    """F(x, t) -> (B, channels, H, W): a UNet2DModel's output at the (fractional) timesteps t, (B,).
    A learned-variance network's extra output channels (the variance) are dropped."""

    def __init__(self, unet: nn.Module, channels: int):
        super().__init__()
        self.unet, self.channels = unet, channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample[:, :self.channels]


def build_unet(unet_dir: Path, device="cpu") -> DiffusersUNet:
    """The UNet2DModel of a unet folder with its safetensors weights (refused if non-finite), in eval mode."""
    config = _read_json(unet_dir / "config.json")
    check_unet_config(config, unet_dir / "config.json")
    state = load_tensors(unet_dir / WEIGHTS, device)[0]
    refuse_nonfinite(state, unet_dir / WEIGHTS)
    unet = _diffusers().UNet2DModel.from_config(config)
    try:
        unet.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(f"the weights in {unet_dir} do not fit its config.json: {str(e).splitlines()[0]}") from None
    return DiffusersUNet(unet.to(device).eval().requires_grad_(False), int(config.get("in_channels", 3)))


def import_diffusers(folder: str | Path, run_dir: str | Path, *, sampler: str = "dpmpp_2m",
                     sample_steps: int = 25) -> Path:
    """Write a run directory that wraps the diffusers UNet2DModel in `folder` (a pipeline folder with unet/ and
    scheduler/, or a bare unet folder: then the DDPM default scheduler, linear betas and epsilon, is assumed).
    The network is built once to check it loads. Returns run_dir."""
    unet_dir, scheduler_path = find_unet(folder)
    scheduler = _read_json(scheduler_path) if scheduler_path else {"_class_name": "DDPMScheduler"}
    parameterization(scheduler)
    discrete_schedule(scheduler)
    build_unet(unet_dir)
    run_dir = Path(run_dir)
    check_writable(run_dir, (unet_dir / WEIGHTS).stat().st_size)
    with run_lock(run_dir, f"import-diffusers --out {run_dir}"):  # two imports into one folder: the second refused
        if (run_dir / CONFIG).exists():
            raise RunError(f"{run_dir} already holds a run ({CONFIG}); choose a new --out folder")
        (run_dir / "unet").mkdir(parents=True, exist_ok=True)
        for name in ("config.json", WEIGHTS):
            atomic_write(run_dir / "unet" / name, lambda tmp, name=name: shutil.copyfile(unet_dir / name, tmp))
        config = {"kind": DIFFUSERS_KIND, "network": "UNet2DModel", "unet": "unet", "scheduler": scheduler,
                  "sampler": sampler, "sample_steps": sample_steps, "source": str(Path(folder).resolve()),
                  "version": 1}
        atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")
    return run_dir


def is_diffusers_run(run_dir: str | Path) -> bool:
    """Whether run_dir's config.json says it wraps a diffusers network (cheap: reads the JSON only)."""
    path = Path(run_dir) / CONFIG
    try:
        return json.loads(path.read_text()).get("kind") == DIFFUSERS_KIND
    except (OSError, ValueError, AttributeError, RecursionError):
        return False  # load_run's own reading says what is wrong


def run_config(unet: dict, scheduler: dict, schedule: DiscreteSchedule, stored: dict) -> RunConfig:
    """The RunConfig the sampling commands read (shape, sigma range, default sampler) of an imported network."""
    size = unet.get("sample_size", 32)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    channels = int(unet.get("in_channels", 3))
    diffusion = DiffusionConfig(parameterization=parameterization(scheduler), schedule=None,
                                timesteps=schedule.num_timesteps, sigma_data=1.0, sigma_min=schedule.sigma_min,
                                sigma_max=schedule.sigma_max, weighting="eps",
                                sampler=stored.get("sampler", "dpmpp_2m"),
                                sample_steps=int(stored.get("sample_steps", 25)))
    model = UNetConfig(dims=2, in_channels=channels, out_channels=channels,
                       channels=tuple(unet.get("block_out_channels", (64,))), attention_levels=())
    return RunConfig(model=model, diffusion=diffusion, data=DataConfig(source=stored.get("source", ""),
                                                                       image_size=size, channels=channels))


def load_diffusers_run(run_dir: str | Path, device="cpu", precision: str = "fp32",
                       cuda_graphs: Optional[bool] = False) -> LoadedRun:
    """A run written by import_diffusers, ready for sampling as `load_run` returns one (step 0: not trained here)."""
    run_dir = Path(run_dir)
    stored = _read_json(run_dir / CONFIG)
    unet_dir = run_dir / str(stored.get("unet", "unet"))
    scheduler = stored.get("scheduler")
    if not isinstance(scheduler, dict):
        raise RunError(f"{run_dir / CONFIG}: 'scheduler' must be the diffusers scheduler config (an object)")
    schedule = discrete_schedule(scheduler)
    net = build_unet(unet_dir, device)
    config = run_config(_read_json(unet_dir / "config.json"), scheduler, schedule, stored)
    denoiser = Denoiser(fast_net(net, precision, cuda_graphs), config.diffusion.parameterization, sigma_data=1.0,
                        schedule=schedule)
    return LoadedRun(config, denoiser, 0, read_schedules(run_dir), run_dir=str(run_dir))
