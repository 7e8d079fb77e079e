"""The training loop, top to bottom: data, model, AdamW, EMA, checkpoints, sample grids, DDP.

Each step draws its batch (train/data.py: every sample's flip, sigma, conditions and noise from its own generator,
so a resumed run continues exactly as the uninterrupted one would have), takes the loss, steps AdamW and the EMA;
train/common.py logs it, stops at a non-finite loss and writes the checkpoints.
"""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import viz
from .._util import randn
from ..audio import data_dims, network_output
from ..checkpoint import build_denoiser, build_model, save_checkpoint
from ..conditions import Condition, conditions
from ..config import RunConfig
from ..data import MODALITIES, Dataset
from ..layout import pack_boxes
from ..layout.model import save_layouts
from ..loss import denoising_loss, weighting
from ..nets import UNet
from ..pipelines.schedule import schedules_after_training
from ..samplers import sample
from .common import (Dist, Tracker, adamw, autocast, check_room, locked, lr_at, optimize, resume_state, run_config,
                     seeded_generator, set_lr, setup_distributed, start_log)
from .data import TrainingSet, encode_captions, prepare_data
from .ema import PowerEMA, ema_beta, make_ema, update_ema
from .latents import Latents, prepare_latents

LOG_FIELDS = ["step", "loss", "lr", "images_per_second", "seconds"]


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          on_checkpoint: Optional[Callable[[int], None]] = None, data: Optional[Dataset] = None,
          should_stop: Optional[Callable[[], bool]] = None) -> dict:
    """Train `config` into `run_dir` (with resume=True continue the run saved there) on config.data.source, or on
    `data`: samples (N, *spatial, C) of the model's dims. Returns final stats. The run directory is locked for the
    whole job; a non-finite loss stops the run with a RunError, its last good checkpoint kept. `should_stop()`,
    asked after each step, ends the run early at a checkpoint of that step (resumable); "step" then says where."""
    run_dir, d = Path(run_dir), setup_distributed()
    device = _device(d)
    with locked(run_dir, "train", d):
        config = run_config(config, run_dir, resume)
        data, conds, latents = prepare_run(config, run_dir, device, d, resume=resume, progress=progress, data=data)
        tc = config.train
        torch.manual_seed(tc.seed)  # the initial weights
        model = build_model(config).to(device)
        ema, optimizer, phema = make_ema(model), adamw(model, tc, tc.lr, device), PowerEMA(model, tc.posthoc_ema)
        modules = {"model": model, "ema": ema, **phema.modules}  # phema: EDM2's post-hoc EMA, where asked for
        start = 0 if not resume else resume_state(run_dir, modules, {"optim": optimizer}, device, tc.steps)
        if d.main:
            check_room(run_dir, modules, {"optim": optimizer}, tc.keep,
                       more_bytes=phema.bytes_to_store(start, tc.posthoc_every, tc.steps))
            start_log(run_dir, config, start, LOG_FIELDS)
            if "layout" in config.conditions:
                save_layouts(run_dir, config.data.class_names, config.data.image_size, data.boxes)
        denoiser, ema_denoiser = build_denoiser(config, training_net(model, config, d)), build_denoiser(config, ema)
        weight_fn = weighting(config.diffusion.weighting)
        mixed_precision = autocast(tc.precision, device, config.model.dims)
        batches = TrainingSet(config, data, conds, latents, device, d)
        save = lambda step: save_checkpoint(run_dir, model=model, ema=ema, optimizer=optimizer, step=step,  # noqa: E731
                                            keep=tc.keep, more=phema.modules)
        tracker = Tracker(run_dir, LOG_FIELDS, tc, start, d, save, desc="training", progress=progress,
                          on_checkpoint=on_checkpoint, number="{:.6f}", should_stop=should_stop)
        model.train()
        for step in range(start, tc.steps):
            x0, sigma, noise, cond = batches.draw_batch(step)
            with mixed_precision:
                loss = denoising_loss(denoiser, x0, sigma, weight_fn(sigma, config.diffusion.sigma_data), noise,
                                      **cond).mean()
            set_lr([optimizer], lr_at(step, tc))
            optimize(optimizer, loss, model, tc.grad_clip)
            images_seen = (step + 1) * tc.batch_size * d.world
            update_ema(ema, model, ema_beta(tc.batch_size * d.world, images_seen, tc.ema_halflife_images, tc.ema_rampup))
            phema.update(model, step + 1)
            if d.main:
                phema.store(run_dir, step + 1, tc.posthoc_every, tc.steps)
            done = tracker.after(step, {"loss": loss.item()}, lr_at(step, tc))
            # after the checkpoint, so a failing grid never costs the steps before it
            if d.main and (done % tc.sample_every == 0 or done == tc.steps):
                sample_grid(ema_denoiser, config, run_dir / "samples" / f"step-{done:07d}.png", conds,
                            decode=latents.space.decode if latents is not None else None)
            if tracker.stopped:
                break
        last = tracker.close()
        # the finished model's sigma schedules for the usual budgets (--nfe 5, 10, 20): a share of its compute
        searched = schedules_after_training(run_dir, device, tc.steps * tc.batch_size * d.world,
                                            tc.schedule_search) if d.main and not tracker.stopped else []
    return {"step": done if tracker.stopped else tc.steps, "loss": last.get("loss", float("nan")),
            "run_dir": str(run_dir), "images": len(data.images), "world_size": d.world,
            "effective_batch_size": tc.batch_size * d.world, "schedules": searched}


def _device(d: Dist) -> torch.device:
    device = torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def prepare_run(config: RunConfig, run_dir: Path, device, d: Dist, *, resume: bool, progress: bool,
                data: Optional[Dataset] = None) -> tuple[Dataset, list[Condition], Optional[Latents]]:
    """The run's data, its conditions on the device (config.conditions, on the data's labels, captions and boxes)
    and a latent run's latents; fits config.model (and config.latent's scale) to them before config.json is
    written."""
    if not resume:  # derived from the data (a config taken from another run may hold that run's)
        config.model.layout_channels = 0
    data = prepare_data(config, data)
    sources = {}
    if config.text.enabled:  # before the model: the encoder fixes the vocabulary and token counts in the config
        sources["text"] = encode_captions(config, data.captions, run_dir, device, save=d.main, resume=resume,
                                          progress=progress and d.main)
    if data.labels is not None and config.model.num_classes:
        sources["class"] = torch.from_numpy(data.labels).to(device)
    if data.boxes is not None and config.model.layout_channels:
        sources["layout"] = pack_boxes(data.boxes).to(device)
    latents = None
    if config.latent is not None:  # before config.json is written: encoding measures the latents' scale
        latents = prepare_latents(config, data.images, run_dir, device, resume=resume, save=d.main,
                                  progress=progress and d.main)
    return data, conditions(config, sources), latents


def training_net(model: torch.nn.Module, config: RunConfig, d: Dist) -> torch.nn.Module:
    """The network the training forward runs: the model with activation checkpointing as configured, under DDP
    with several processes, compiled if asked (checkpoints, the EMA and sampling use the plain module)."""
    for module in model.modules():  # the U-Net itself, also inside a text model's wrapper
        if isinstance(module, UNet):
            module.checkpointing = config.train.activation_checkpointing
    net, device = model, next(model.parameters()).device
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.train.compile and _can_compile(device):
        net = torch.compile(net)
    return net


def _can_compile(device: torch.device) -> bool:
    """Whether torch.compile can build kernels for `device`: on a CPU inductor compiles C++ and needs a compiler
    (without one the first step would fail deep inside torch); a run asked to compile warns and trains eager."""
    if device.type != "cpu":
        return True
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
        return True
    except Exception as error:  # InvalidCxxCompiler, or an inductor that moved the function: train eager
        warnings.warn(f"training without torch.compile: it needs a C++ compiler on a CPU ({error}); install one "
                      f"(g++ or clang++, or name it in CXX) to train compiled, or pass --no-compile", stacklevel=2)
        return False


def sample_grid(denoiser, config: RunConfig, path: Path, conds: list[Condition], n: int = 16, seed: int = 0,
                decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
    """A picture of `n` samples from fixed noise, so pictures from different steps compare like for like, each
    condition's examples as the conditions (class runs cycle through the classes, text and layout runs take the
    captions and layouts of n training images). `decode` turns a latent run's samples into images. Images make a
    grid; other modalities picture theirs through their writer module (data.MODALITIES: audio a waveform over a
    spectrogram per clip, video a film strip per clip), as `diffusely sample --grid` does. Samples of no modality's
    shape (data given in memory, say (C, L) clips under an image config) get no picture."""
    kind = MODALITIES[config.data.modality]
    if kind.dims != data_dims(config):
        return
    device = next(denoiser.parameters()).device
    g = seeded_generator("cpu", seed, 12345)
    noise = randn((n, *config.sample_shape), g, device)
    cond: dict[str, torch.Tensor] = {}
    for condition in conds:
        cond.update(condition.examples(n, device))
    d = config.diffusion
    with torch.inference_mode():
        x = sample(denoiser, noise, method=d.sampler, steps=d.sample_steps, sigma_min=d.sigma_min,
                   sigma_max=d.sigma_max, generator=g, cond=cond)
        x = decode(x) if decode is not None else network_output(x, config)  # audio: linear -> companded
    x = x.clamp(-1, 1).cpu()
    if kind.writer:
        importlib.import_module(kind.writer).save_grid(x, path, config.data.sample_rate)
    else:
        viz.save_grid(x, path, nrow=int(math.ceil(math.sqrt(n))))
