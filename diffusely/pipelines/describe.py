"""What a run is, in facts a person (`diffusely info`) or a UI can show: data, size, conditions, recipe, steps,
parameters, last loss."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from .._files import read_json
from ..checkpoint import CONFIG, LoadedRun, load_run
from ..data.video import DEFAULT_FPS
from ..interop import is_diffusers_run
from ..layout import has_lines
from ..state import stop_fact

LOG = "log.csv"


def last_loss(run_dir: str | Path) -> Optional[float]:
    """The loss of log.csv's last row, or None for a run that has logged nothing yet."""
    log = Path(run_dir) / LOG
    if not log.is_file():
        return None
    with open(log, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["loss"]) if rows else None


def describe_run(run_dir: str | Path, run: Optional[LoadedRun] = None) -> dict:
    """The facts of the run in `run_dir` as {name: value} in reading order, values JSON-serialisable
    (`run`: the run already loaded, else it is loaded on the CPU)."""
    run = run or load_run(run_dir)
    if is_diffusers_run(run_dir):
        return _imported(run_dir, run)
    cfg = run.config
    return {
        "run_dir": str(run_dir),
        "data": cfg.data.source,
        **_sample_facts(cfg),
        **_task(cfg),
        **_conditions(cfg),
        "text_encoder": cfg.text.encoder,
        "parameterization": cfg.diffusion.parameterization,
        "schedule": cfg.diffusion.schedule or "continuous (EDM)",
        "steps_trained": run.step,
        "steps_planned": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "parameters": sum(p.numel() for p in run.denoiser.parameters()),
        "unet_channels": list(cfg.model.channels),
        "sampler": f"{cfg.diffusion.sampler}, {cfg.diffusion.sample_steps} steps",
        **_student(cfg),
        "last_loss": last_loss(run_dir),
        **stop_fact(run_dir),  # a run that diverged says so, and which checkpoint it kept
    }


def _imported(run_dir: str | Path, run: LoadedRun) -> dict:
    """The facts of a run made by `diffusely import-diffusers`: the network and scheduler it wraps, not a
    training recipe (it was trained elsewhere)."""
    stored = read_json(Path(run_dir) / CONFIG, "import the diffusers model again (diffusely import-diffusers)")
    scheduler, d = stored["scheduler"], run.config.diffusion
    betas = "trained" if scheduler.get("trained_betas") else scheduler.get("beta_schedule", "linear")
    return {
        "run_dir": str(run_dir),
        "imported_from": stored.get("source", ""),
        "network": f"diffusers {stored.get('network', 'UNet2DModel')} (diffusely import-diffusers)",
        "image_size": run.config.data.image_size,
        "channels": run.config.data.channels,
        "parameterization": f"{d.parameterization} ({scheduler.get('prediction_type', 'epsilon')})",
        "schedule": f"{scheduler.get('_class_name', 'DDPMScheduler')}: {betas} betas over {d.timesteps} timesteps "
                    f"(sigma {d.sigma_min:.4g} to {d.sigma_max:.4g})",
        "parameters": sum(p.numel() for p in run.denoiser.parameters()),
        "unet_channels": list(run.config.model.channels),
        "sampler": f"{d.sampler}, {d.sample_steps} steps",
    }


def _network_sees(cfg) -> str:
    """What an audio run's network learns (data.amplitude), in words."""
    if cfg.data.amplitude == "spectrogram":
        return "log-magnitude spectrogram ({} x {}), Griffin-Lim back to sound".format(*cfg.sample_shape[1:])
    return {"linear": "the waveform (linear amplitudes)", "mu-law": "the mu-law companded waveform"}[cfg.data.amplitude]


def _sample_facts(cfg) -> dict:
    """What one sample is, in its modality's units: an image's side, a clip's length and sample rate, a video's
    frames, their size and rate."""
    data = cfg.data
    if data.modality == "audio":
        rate = data.sample_rate  # an audio config has one (audio.check_audio_network)
        return {"clip_length": f"{data.image_size:,} samples ({data.image_size / rate:.4g} s)",
                "sample_rate": f"{rate:,} Hz", "channels": data.channels, "network_sees": _network_sees(cfg)}
    if data.modality == "video":
        frames, height, width = data.spatial(3)
        return {"frames": frames, "frame_size": f"{height} x {width}",
                "frame_rate": f"{data.sample_rate or DEFAULT_FPS:g} frames a second", "channels": data.channels}
    return {"image_size": data.image_size, "channels": data.channels}


def _task(cfg) -> dict:
    """What the model learns besides generating from noise: an upscale run's factor and the sizes it maps."""
    data = cfg.data
    if data.task == "generate":
        return {}
    low = data.image_size // data.scale
    return {"task": f"{data.task} (super-resolution, {low} x {low} to {data.image_size} x {data.image_size})",
            "scale": data.scale}


def _student(cfg) -> dict:
    """A student run's (diffusely distill) teacher and the few sigmas it samples at."""
    dc = cfg.distill
    if dc is None:
        return {}
    return {"teacher": f"{dc.teacher} (its step {dc.teacher_step}; {dc.method} distillation)", "nfe": dc.nfe,
            "student_sigmas": ", ".join(f"{s:.4g}" for s in dc.sigmas)}


def _conditions(cfg) -> dict:
    """The facts only some runs have: a latent space, classes, a layout, patches."""
    facts = {}
    if cfg.latent:
        facts["latent"] = "{} x {} from the autoencoder {} (scale {:.4g}, shift {:.4g})".format(
            cfg.model.in_channels, " x ".join(map(str, cfg.sample_shape[1:])), cfg.latent.autoencoder,
            cfg.latent.scale_factor, cfg.latent.shift_factor)
    facts["classes"] = cfg.model.num_classes
    if cfg.data.class_names:
        facts["class_names"] = ", ".join(cfg.data.class_names)
    if cfg.model.layout_channels:
        lines = has_lines(cfg.model.layout_channels, len(cfg.data.class_names))
        facts["layout"] = (f"boxes of {len(cfg.data.class_names)} classes as masks"
                           f"{', directions as lines' if lines else ''} (diffusely synth)")
    if cfg.model.patch_size > 1:
        facts["patch_size"] = cfg.model.patch_size
    return facts
