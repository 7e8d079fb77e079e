"""What the diffusion and autoencoder training loops share: seeds, the batches of every step, DDP set-up,
the lr schedule, the bf16 choice, and the run directory's config and log.csv."""

from __future__ import annotations

import csv
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import CHECKPOINT, CONFIG, RunError, read_config, write_config
from ..config import JsonConfig
from ..nets.fast import autocast_dtype

LOG = "log.csv"
RESUMABLE = ("compile", "activation_checkpointing")  # train settings a resumed run may change


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


def autocast(precision: str, device: torch.device):
    """The autocast context of a training step (see autocast_dtype)."""
    dtype = autocast_dtype(precision, device)
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


def run_config(config: JsonConfig, run_dir: Path, resume: bool) -> JsonConfig:
    """The config to train: `config` for a new run (refusing a directory that holds one), or, resuming,
    the saved config with `config`'s step count (resuming may extend a run) and its RESUMABLE speed settings,
    which change how fast a step runs, not what it computes; all else comes from the run."""
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"nothing to resume in {run_dir}: it has no {CONFIG}")
        saved = read_config(run_dir, type(config))
        for name in ("steps", *RESUMABLE):
            if hasattr(saved.train, name):
                setattr(saved.train, name, getattr(config.train, name))
        return saved
    if (run_dir / CHECKPOINT).exists() or (run_dir / CONFIG).exists():
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    return config


def start_log(run_dir: Path, config: JsonConfig, start: int, fields: list[str]) -> None:
    """Write config.json, and log.csv with the rows up to `start` (those logged after the checkpoint we resume from go)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, config)
    log_rows = read_log(run_dir / LOG, start)
    with open(run_dir / LOG, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(log_rows)


def append_log(run_dir: Path, fields: list[str], row: dict) -> None:
    with open(run_dir / LOG, "a", newline="") as f:
        csv.DictWriter(f, fields).writerow(row)
