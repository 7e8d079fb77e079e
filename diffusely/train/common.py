"""What the diffusion and autoencoder training loops share: seeds, the batches of every step, DDP set-up,
the lr schedule, the bf16 choice, the run directory (its lock, config, resume and log.csv), and what happens
after each step (the non-finite check, log rows, checkpoints)."""

from __future__ import annotations

import csv
import io
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .. import viz
from .._files import atomic_write_text, check_writable, run_lock
from ..checkpoint import CHECKPOINT, CONFIG, RunError, load_state, read_config, relocate_autoencoder, write_config
from ..state import STOPPED, note_stop
from ..config import JsonConfig
from ..nets.fast import autocast_dtype

LOG = "log.csv"
TEXT_LOG = "train.log"  # a line each time training starts or resumes: what it trains with
# train settings a resumed run may change: how long it runs, how fast a step runs and how often it writes, never
# what a step computes
RESUMABLE = ("compile", "activation_checkpointing", "checkpoint_every", "sample_every", "log_every", "keep")


def seed_from(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seeded_generator(device, *parts: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed_from(*parts))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Under torchrun (WORLD_SIZE > 1): join the process group, NCCL on GPUs and gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class Batches:
    """The batch of every step as a pure function of (seed, step): each epoch is a fresh permutation,
    and the global batch of a step is split among ranks. Sample j of the run (its global position)
    also owns a generator for its flip, sigma and noise, so a step on N processes draws exactly what
    one process draws for the joined batch, and a resumed run draws what the uninterrupted one did."""

    def __init__(self, num_images: int, batch_size: int, seed: int, d: Dist):
        self.n, self.batch_size, self.seed, self.d = num_images, batch_size, seed, d
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(self.n, generator=seeded_generator("cpu", self.seed, epoch, 7))
        return self._perms[epoch]

    def positions(self, step: int) -> list[int]:
        b = self.batch_size
        first = step * b * self.d.world + self.d.rank * b
        return list(range(first, first + b))

    def indices(self, positions: list[int]) -> torch.Tensor:
        return torch.stack([self._perm(p // self.n)[p % self.n] for p in positions])

    def generators(self, positions: list[int], device) -> list[torch.Generator]:
        return [seeded_generator(device, self.seed, p, 11) for p in positions]


def autocast(precision: str, device: torch.device, dims: int = 2):
    """The autocast context of a training step (see autocast_dtype). 'auto' trains a 3-D (video) network on a CPU in
    float32: under bf16 oneDNN's Conv3d weight gradients came back NaN at the first step on a 2-core AMD EPYC with
    AVX512-BF16 (torch 2.13; networks of widths 8,16 and 16,32: not 32,32 or the video default). `--precision bf16`
    still asks for it; a NaN then stops the run before a checkpoint is written."""
    dtype = autocast_dtype(precision, device)
    if precision == "auto" and dims == 3 and device.type == "cpu":
        dtype = None
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def adamw(module: torch.nn.Module, tc, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the schedule's betas and weight decay, as one fused kernel per step where torch has one for the
    device (CUDA; CPUs from torch 2.4: 2.6-2.8x faster than the default per-tensor loop, see benchmarks/NOTES.md)."""
    return torch.optim.AdamW(module.parameters(), lr=lr, betas=tc.betas, weight_decay=tc.weight_decay,
                             **({"fused": True} if fused_adamw(device) else {}))


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state but keep this optimizer's kernel (fused, foreach): load_state_dict would put
    back the saver's, so a run saved before AdamW was fused on CPUs would resume on the slow loop, and one saved
    fused would fail to step under a torch without the fused kernel. Set before loading, because the saved
    groups' settings decide where the step counters are put."""
    kernel = {k: optimizer.defaults.get(k) for k in ("fused", "foreach")}
    optimizer.load_state_dict({**state, "param_groups": [{**g, **kernel} for g in state["param_groups"]]})


def fused_adamw(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for the device."""
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return device.type == "cuda" or (device.type == "cpu" and version >= (2, 4))


def lr_at(step: int, tc) -> float:
    """Linear warm-up, constant, then (from decay_from x steps on) a linear fall to 0 at the last step."""
    lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else tc.lr
    decay_start = tc.decay_from * tc.steps
    if step >= decay_start and tc.decay_from < 1:
        lr *= max(0.0, (tc.steps - step) / (tc.steps - decay_start))
    return lr


def read_log(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= up_to_step]


def locked(run_dir: Path, command: str, d: Dist):
    """The run directory's lock (see _files.run_lock), held by the main process for the whole job: a second job
    into the directory is refused with the holder's PID instead of mixing two runs in it."""
    return run_lock(run_dir, f"{command} --out {run_dir}") if d.main else nullcontext()


def run_config(config: JsonConfig, run_dir: Path, resume: bool, command: str = "train") -> JsonConfig:
    """The config to train, checked (a ConfigError naming a field): `config` for a new run (refusing a directory
    that holds one), or, resuming, the saved config with `config`'s step count (resuming may extend a run) and its
    RESUMABLE settings; all else comes from the run. A student run (diffusely.distill) resumes only under
    `command` distill: another loss would undo it. Call it holding the run's lock."""
    config.check()
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"nothing to resume in {run_dir}: it has no {CONFIG}")
        saved = relocate_autoencoder(read_config(run_dir, type(config)), run_dir)  # a moved run's own
        if getattr(saved, "distill", None) is not None and command != "distill":
            raise RunError(f"{run_dir} is a student run (diffusely distill): continue it with `diffusely distill "
                           f"--out {run_dir} --resume`")
        for name in ("steps", *RESUMABLE):
            if hasattr(saved.train, name):
                setattr(saved.train, name, getattr(config.train, name))
        return saved
    if (run_dir / CHECKPOINT).exists() or (run_dir / CONFIG).exists():
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    return config


def augmentations(config: JsonConfig) -> str:
    """The random changes training makes to its images, in words ("horizontal flips", "none")."""
    done = ["horizontal flips"] if config.data.flip else []
    crop = getattr(config.train, "crop_size", 0)  # an autoencoder run's
    if crop:
        done.append(f"random {crop} x {crop} crops")
    if config.data.paraphrases and getattr(config, "text", None) is not None and config.text.enabled:
        done.append(f"caption paraphrases ({config.data.paraphrases} a caption)")
    return ", ".join(done) or "none"


def start_log(run_dir: Path, config: JsonConfig, start: int, fields: list[str]) -> None:
    """Write config.json, log.csv with the rows up to `start` (those logged after the checkpoint we resume from go),
    and a line in TEXT_LOG saying what this start trains with."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, config)
    with open(run_dir / TEXT_LOG, "a") as f:  # a line a start, never rewritten: appending cannot lose the others
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {'resumed at' if start else 'started at'} step {start}; "
                f"augmentations: {augmentations(config)}\n")
    log_rows = read_log(run_dir / LOG, start)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fields)
    w.writeheader()
    w.writerows(log_rows)
    atomic_write_text(run_dir / LOG, text.getvalue())  # a kill or a full disk here leaves the old log whole


def append_log(run_dir: Path, fields: list[str], row: dict) -> None:
    with open(run_dir / LOG, "a", newline="") as f:
        csv.DictWriter(f, fields).writerow(row)


def resume_state(run_dir: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 device, steps: int, network: str = "model") -> int:
    """Load the run's checkpoint into `modules` and `optimizers` (by their names in the file) and return its step;
    0 when the run stopped before its first checkpoint. A checkpoint past `steps`, the steps asked, is refused."""
    if not (run_dir / CHECKPOINT).exists():
        return 0
    state = load_state(run_dir / CHECKPOINT, device)
    try:
        for name, module in modules.items():
            module.load_state_dict(state.modules[name])
        for name, optimizer in optimizers.items():
            load_optimizer(optimizer, state.optimizers[name])
    except (RuntimeError, ValueError, KeyError) as e:
        raise RunError(f"the checkpoint in {run_dir} does not fit the {network} that config.json describes "
                       f"(was config.json edited?): {str(e).splitlines()[0]}") from None
    if state.step > steps:
        raise RunError(f"the run in {run_dir} is at step {state.step}, past the {steps} steps asked; ask for more "
                       f"steps to train it further")
    return state.step


def check_room(run_dir: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
               keep: int, more_bytes: int = 0) -> None:
    """Before the first step: refuse a run directory that cannot be written or lacks room for its checkpoints, so a
    read-only or full disk is found before the training, not after it. A training state holds the modules'
    tensors and AdamW's two moments of each parameter it steps; the run keeps `keep` of them while writing one more
    (and the sampling weights, smaller than a state). `more_bytes`: what else the run will write (post-hoc EMA
    snapshots, which are all kept)."""
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    state = sum(nbytes(m.state_dict().values()) for m in modules.values()) + sum(
        2 * nbytes(p for group in o.param_groups for p in group["params"]) for o in optimizers.values())
    check_writable(run_dir, need_bytes=(keep + 1) * state + more_bytes)


def set_lr(optimizers, lr: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def optimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: torch.nn.Module, grad_clip: float) -> None:
    """One AdamW step on `loss`, the gradients clipped to norm `grad_clip` (0: not clipped)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()


class Tracker:
    """What both trainers do after each step: stop at the first non-finite loss (keeping the last good checkpoint),
    average the step's values over log_every steps into log.csv (over all ranks under DDP) and the progress bar,
    and at checkpoint steps `save(step)` (the main process), plot loss.png and call on_checkpoint(step).
    `should_stop()`, asked after each step (a UI's stop button), makes that step a checkpoint step and sets
    `stopped`: the trainer then leaves its loop with the run resumable from that step (one process: under DDP
    every rank would have to answer alike)."""

    def __init__(self, run_dir: Path, fields: list[str], tc, start: int, d: Dist, save: Callable[[int], None], *,
                 desc: str, progress: bool, shown: tuple[str, ...] = ("loss",),
                 on_checkpoint: Optional[Callable[[int], None]] = None, number: str = "{:.6g}",
                 should_stop: Optional[Callable[[], bool]] = None):
        self.run_dir, self.fields, self.tc, self.d, self.save = run_dir, fields, tc, d, save
        self.should_stop, self.stopped = should_stop, False
        self.shown, self.on_checkpoint, self.number = shown, on_checkpoint, number
        self.saved = start if (run_dir / CHECKPOINT).exists() else None  # the step of the last good checkpoint
        self.bar = tqdm(total=tc.steps, initial=start, desc=desc, unit="step", disable=not (progress and d.main),
                        dynamic_ncols=True)
        self.rows: list[dict[str, float]] = []
        self.last: dict[str, float] = {}
        self.t_last = self.t0 = time.perf_counter()

    def after(self, step: int, values: dict[str, float], lr: float) -> int:
        """Record step `step`'s values (their "loss" checked finite); returns the steps done (step + 1)."""
        self._check_finite(step, values["loss"], lr)
        self.rows.append(values)
        done = step + 1
        self.bar.update(1)
        self.stopped = done < self.tc.steps and self.should_stop is not None and bool(self.should_stop())
        at_checkpoint = done % self.tc.checkpoint_every == 0 or done == self.tc.steps or self.stopped
        if done % self.tc.log_every == 0 or at_checkpoint:
            self._log(done, lr)
        if at_checkpoint:
            self._checkpoint(done)
        return done

    def _check_finite(self, step: int, loss: float, lr: float) -> None:
        bad = not math.isfinite(loss)
        if self.d.world > 1:  # every rank stops together, or the others would wait for it forever
            flag = torch.tensor([float(bad)], device=self.device)
            dist.all_reduce(flag)
            bad = flag.item() > 0
        if not bad:
            return
        self.bar.close()
        kept = (f"the last good checkpoint, of step {self.saved}, is kept in {self.run_dir}" if self.saved is not None
                else f"no checkpoint was written to {self.run_dir}")
        why = (f"the training loss is not finite ({loss}) at step {step + 1}: the run diverged and stopped; "
               f"{kept}. Train again with a lower --lr (this run's is {self.tc.lr:g}; at step {step + 1}, {lr:.3g})")
        if self.d.main:
            note_stop(self.run_dir, why)
        raise RunError(why)

    @property
    def device(self):
        return torch.device(f"cuda:{self.d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")

    def _log(self, done: int, lr: float) -> None:
        self.last = {k: sum(r[k] for r in self.rows) / len(self.rows) for k in self.rows[0]}
        if self.d.world > 1:  # the values of the whole (global) batch, not this rank's share
            mean = torch.tensor(list(self.last.values()), dtype=torch.float64, device=self.device)
            dist.all_reduce(mean)
            self.last = {k: v / self.d.world for k, v in zip(self.last, mean.tolist())}
        now = time.perf_counter()
        rate = len(self.rows) * self.tc.batch_size * self.d.world / (now - self.t_last)
        self.bar.set_postfix(**{k: f"{self.last[k]:.4f}" for k in self.shown}, img_s=f"{rate:.0f}")
        if self.d.main:
            append_log(self.run_dir, self.fields, {"step": done, **{k: self.number.format(v) for k, v in self.last.items()},
                                                   "lr": f"{lr:.3g}", "images_per_second": f"{rate:.1f}",
                                                   "seconds": f"{now - self.t0:.1f}"})
        self.rows, self.t_last = [], now

    def _checkpoint(self, done: int) -> None:
        if self.d.main:
            self.save(done)
            self.saved = done
            (self.run_dir / STOPPED).unlink(missing_ok=True)  # past the stop: the run stands at this checkpoint
            try:
                viz.plot_loss(self.run_dir / LOG, self.run_dir / "loss.png")
            except ValueError:
                pass  # nothing plottable: log.csv shows it, the checkpoint matters more
            if self.on_checkpoint is not None:
                self.on_checkpoint(done)
        if self.d.world > 1:
            dist.barrier()

    def close(self) -> dict[str, float]:
        """The values last logged."""
        self.bar.close()
        return self.last
