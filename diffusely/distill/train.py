"""The distillation job: a teacher run in, a student run directory out (`diffusely distill`).

The student is a normal run: the teacher's config.json with a `distill` section, its network initialised from the
teacher's EMA weights and trained by consistency distillation (distill/consistency.py) on the teacher's training
data and conditions. Everything around the steps is the training loop's (train/common.py): the lock on the
student's directory, config.json and log.csv, resume, the room check, the non-finite stop, checkpoints. Each
step's batch, noise and grid indices are functions of (seed, step, rank, sample), so a job killed and resumed
trains exactly the weights of one that ran through.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from .._files import atomic_write
from ..checkpoint import (CHECKPOINT, CONFIG, RunError, build_denoiser, build_model, load_run, read_config,
                          sampling_weights, save_checkpoint, write_schedule)
from ..config import RunConfig
from ..train.common import (Tracker, adamw, autocast, check_room, locked, lr_at, optimize, resume_state,
                            run_config, seeded_generator, set_lr, setup_distributed, start_log)
from ..train.data import TrainingSet
from ..train.ema import ema_beta, make_ema, update_ema
from ..train.loop import _device, prepare_run, training_net
from .config import DistillConfig
from .consistency import consistency_loss, distill_grid, student_sigmas

LOG_FIELDS = ["step", "loss", "lr", "images_per_second", "seconds"]
# files of the teacher a student needs as they are: the text run's tokenizer, the layout run's layouts
SHARED_FILES = ("tokenizer.json", "layouts.json")
# a student's training unless told otherwise: a fine-tune of the teacher (CM sec. 6: Adam at 4e-4 to 1e-5, constant)
STUDENT_TRAIN = {"steps": 2000, "lr": 1e-4, "warmup_steps": 0, "decay_from": 1.0}


def student_config(teacher_dir: str | Path, nfe: int, grid_steps: int = 18, target_decay: float = 0.95,
                   **train) -> RunConfig:
    """The config of a new student of the run in `teacher_dir` sampling in `nfe` evaluations: the teacher's, with
    the distill section, the consistency sampler at nfe steps as the default, and `train` (field: value, None
    for the default) over STUDENT_TRAIN and the teacher's train settings."""
    teacher_dir = Path(teacher_dir)
    config = read_config(teacher_dir)
    if config.distill is not None:
        raise RunError(f"{teacher_dir} is itself a student (of {config.distill.teacher}); distill its teacher instead")
    d = config.diffusion
    if d.parameterization != "edm":  # the student starts as its teacher's network, read through c_skip, c_out
        raise RunError(f"{teacher_dir} predicts {d.parameterization}, and a student begins from its teacher's network "
                       f"read through EDM-like coefficients (an {d.parameterization} network would start far from its "
                       f"teacher): distill a run of the edm recipe (the default)")
    step = sampling_weights(teacher_dir)[1]
    config.distill = DistillConfig(teacher=str(teacher_dir.resolve()), teacher_step=step, nfe=nfe,
                                   sigmas=tuple(student_sigmas(nfe, d.sigma_min, d.sigma_max)), grid_steps=grid_steps,
                                   target_decay=target_decay)
    d.sampler, d.sample_steps = "consistency", nfe
    for name, value in {**STUDENT_TRAIN, **{k: v for k, v in train.items() if v is not None}}.items():
        setattr(config.train, name, value)
    return RunConfig.from_dict(config.to_dict())  # checked, field by field


def grid_indices(batches: TrainingSet, step: int, grid_steps: int, seed: int) -> torch.Tensor:
    """Each sample's pair of adjacent grid levels at `step` (B,), from its own generator: (seed, position, 13)."""
    positions = batches.batches.positions(step)
    return torch.cat([torch.randint(grid_steps, (1,), generator=seeded_generator("cpu", seed, p, 13))
                      for p in positions]).to(batches.device)


def _teacher(config: RunConfig, device) -> torch.nn.Module:
    """The teacher's denoiser, refused if its weights moved on since the student began from them."""
    dc = config.distill
    if not (Path(dc.teacher) / CONFIG).is_file():
        raise RunError(f"the teacher run {dc.teacher} is gone (moved or deleted?): put it back, or set distill.teacher "
                       f"in the student's {CONFIG} to where it is now")
    teacher = load_run(dc.teacher, device)
    if teacher.step != dc.teacher_step:
        raise RunError(f"the teacher {dc.teacher} is at step {teacher.step}, but this student was distilled from its "
                       f"step {dc.teacher_step}: distill a new student from it")
    return teacher.denoiser


def _start(config: RunConfig, run_dir: Path) -> None:
    """A new student's files: the teacher's tokenizer and layouts, and in schedules.json the sigmas of its nfe and of
    1, 2 and 4 evaluations, so `sample --steps K` draws from the same weights at those too."""
    dc = config.distill
    for name in SHARED_FILES:
        if (Path(dc.teacher) / name).is_file():
            atomic_write(run_dir / name, partial(shutil.copyfile, Path(dc.teacher) / name))
    d = config.diffusion
    for nfe in sorted({1, 2, 4} - {dc.nfe}):
        write_schedule(run_dir, "consistency", nfe, student_sigmas(nfe, d.sigma_min, d.sigma_max))
    write_schedule(run_dir, "consistency", dc.nfe, dc.sigmas)


def distill(config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
            on_checkpoint: Optional[Callable[[int], None]] = None) -> dict:
    """Distil the teacher named in config.distill into the student run `config` at `run_dir` (resume=True: go on
    with the one saved there, to config.train.steps). The student's directory is locked for the whole job; a
    non-finite loss stops it with a RunError, its last good checkpoint kept. Returns final stats."""
    run_dir, d = Path(run_dir), setup_distributed()
    device = _device(d)
    with locked(run_dir, "distill", d):
        config = run_config(config, run_dir, resume, "distill")
        if config.distill is None:
            raise RunError(f"{run_dir} is not a student run (its {CONFIG} has no distill section)")
        teacher = _teacher(config, device)
        tc, dc = config.train, config.distill
        model = build_model(config).to(device)
        # the teacher's EMA weights, on every rank; a resume loads the student's own, unless the job was stopped
        # before its first checkpoint
        if not resume or not (run_dir / CHECKPOINT).exists():
            model.load_state_dict(sampling_weights(dc.teacher, device)[0])
        if not resume and d.main:
            _start(config, run_dir)
        if d.world > 1:  # every rank reads the tokenizer that rank 0 has just copied
            torch.distributed.barrier()
        data, conds, latents = prepare_run(config, run_dir, device, d, resume=True, progress=progress)
        ema, target, optimizer = make_ema(model), make_ema(model), adamw(model, tc, tc.lr, device)
        modules = {"model": model, "ema": ema, "target": target}
        start = resume_state(run_dir, modules, {"optim": optimizer}, device, tc.steps) if resume else 0
        if d.main:
            check_room(run_dir, modules, {"optim": optimizer}, tc.keep)
            start_log(run_dir, config, start, LOG_FIELDS)
        student = build_denoiser(config, training_net(model, config, d))
        target_denoiser = build_denoiser(config, target)
        grid = distill_grid(dc.grid_steps, config.diffusion.sigma_min, config.diffusion.sigma_max)
        mixed_precision = autocast(tc.precision, device, config.model.dims)
        batches = TrainingSet(config, data, conds, latents, device, d)
        tracker = Tracker(run_dir, LOG_FIELDS, tc, start, d, _saver(run_dir, model, ema, target, optimizer, tc.keep),
                          desc="distilling", progress=progress, on_checkpoint=on_checkpoint, number="{:.6g}")
        model.train()
        for step in range(start, tc.steps):
            x0, _, noise, cond = batches.draw_batch(step)
            n = grid_indices(batches, step, dc.grid_steps, tc.seed)
            with mixed_precision:
                loss = consistency_loss(student, target_denoiser, teacher, x0, noise, n, grid, cond).mean()
            set_lr([optimizer], lr_at(step, tc))
            optimize(optimizer, loss, model, tc.grad_clip)
            update_ema(target, model, dc.target_decay)
            images = tc.batch_size * d.world
            update_ema(ema, model, ema_beta(images, (step + 1) * images, tc.ema_halflife_images, tc.ema_rampup))
            tracker.after(step, {"loss": loss.item()}, lr_at(step, tc))
        last = tracker.close()
    return {"step": tc.steps, "loss": last.get("loss", float("nan")), "run_dir": str(run_dir), "nfe": dc.nfe,
            "sigmas": list(dc.sigmas), "teacher": dc.teacher}


def _saver(run_dir: Path, model, ema, target, optimizer, keep: int) -> Callable[[int], None]:
    """Save the student's training state, its target network with it."""
    return lambda step: save_checkpoint(run_dir, model=model, ema=ema, optimizer=optimizer, step=step, keep=keep,
                                        more={"target": target})
