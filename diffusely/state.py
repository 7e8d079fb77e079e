"""A training state in one safetensors file (modules, optimizers, step), never written non-finite, kept K deep.

A run directory keeps its newest training state as checkpoint.safetensors and the `keep - 1` before it as
checkpoint-STEP.safetensors, so a run that goes bad late can be rolled back (`roll_back`, or by hand: rename
checkpoint-STEP.safetensors to checkpoint.safetensors, then resume).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ._files import (NotWritable, RunError, Unreadable, atomic_write, atomic_write_text, load_tensors, read_meta,
                     run_lock, save_tensors)

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "diffusely-checkpoint-1"
_KEPT = re.compile(r"checkpoint-(\d+)\.safetensors")
STOPPED = "stopped.txt"  # why training stopped before its steps (a diverged loss): one line, for `diffusely info`
_AGAIN = "roll back to a kept checkpoint-STEP.safetensors (diffusely.state.roll_back) or train the run again"


class NonFiniteError(RunError):
    """Weights or optimizer state holding NaN or inf: a diverged run. Nothing non-finite is ever written."""


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


def count_nonfinite(tensors: dict[str, torch.Tensor]) -> int:
    """How many of the tensors hold a NaN or an inf (one pass over each)."""
    return sum(1 for v in tensors.values() if v.is_floating_point() and not torch.isfinite(v).all())


def step_of(path: str | Path) -> int:
    """The step of a state file, from its header alone; Unreadable if it is damaged."""
    try:
        return int(read_meta(path)["step"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, Unreadable):
            raise
        raise Unreadable(f"{path} holds no step: it is not a diffusely checkpoint") from None


def _refuse_nonfinite(tensors: dict[str, torch.Tensor], step: int, path: Path) -> None:
    bad = count_nonfinite(tensors)
    if bad:
        try:
            kept = f"{path.name} still holds step {step_of(path)}"
        except Unreadable:
            kept = f"{path.name} was left as it was"
        raise NonFiniteError(f"training diverged: at step {step}, {bad} of {len(tensors)} tensors hold NaN or inf, so "
                             f"no checkpoint was written ({kept}); lower the learning rate (--lr) and resume")


def _gather(step: int, modules: dict[str, torch.nn.Module],
            optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors "<module>.<key>" and "<optimizer>.<param index>.<key>"; the metadata: step, optimizer groups."""
    tensors = {f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()}
    meta = {"step": step, "format": FORMAT}
    for name, optimizer in optimizers.items():
        optim_tensors, meta[_optimizer_key(name)] = _flatten_optimizer(optimizer.state_dict(), name)
        tensors |= optim_tensors
    return tensors, meta


def save_state(path: str | Path, *, step: int, modules: dict[str, torch.nn.Module],
               optimizers: dict[str, torch.optim.Optimizer]) -> Path:
    """Write modules, optimizers and the step into one safetensors file, atomically: tensors
    "<module>.<key>" and "<optimizer>.<param index>.<key>", the optimizers' groups and scalars as JSON metadata.
    Raises NonFiniteError, writing nothing, when any tensor holds NaN or inf."""
    path = Path(path)
    tensors, meta = _gather(step, modules, optimizers)
    _refuse_nonfinite(tensors, step, path)
    save_tensors(path, tensors, meta)
    return path


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
        tensors, meta = load_tensors(path, device)
    except Unreadable as e:
        raise RunError(f"{e}; {_AGAIN}") from None
    try:
        step = int(meta["step"])
        # files written before save_tensors hold each optimizer's state as a JSON string
        optim_meta = {k[:-len("izer")]: json.loads(v) if isinstance(v, str) else v
                      for k, v in meta.items() if k.endswith("optimizer")}
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path} is damaged or not a diffusely checkpoint ({e}); {_AGAIN}") from None
    modules: dict[str, dict[str, torch.Tensor]] = {}
    optim_tensors: dict[str, dict[str, torch.Tensor]] = {name: {} for name in optim_meta}
    for k, v in tensors.items():
        prefix, rest = k.split(".", 1)
        if prefix in optim_tensors:
            optim_tensors[prefix][k] = v
        else:
            modules.setdefault(prefix, {})[rest] = v
    return State(step, modules, {name: _unflatten_optimizer(optim_tensors[name], m) for name, m in optim_meta.items()})


# ------------------------------------------------------------------------------------- the last K checkpoints


def kept_steps(run_dir: str | Path) -> list[int]:
    """The steps of the older checkpoints a run keeps (checkpoint-STEP.safetensors), newest first."""
    return sorted((int(m[1]) for p in Path(run_dir).iterdir() if (m := _KEPT.fullmatch(p.name))), reverse=True)


def _kept(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoint-{step}.safetensors"


def _keep_previous(path: Path, keep: int, step: int) -> None:
    """Before `path` is replaced by the state of `step`: keep the file there as checkpoint-ITS_STEP.safetensors
    (a hard link: no copy, no space; a copy where the file system has no links)."""
    if keep < 2 or not path.is_file():
        return
    try:
        previous = step_of(path)
    except Unreadable:
        return  # a damaged file is not worth keeping
    if previous == step:
        return
    target = _kept(path.parent, previous)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write(target, lambda t: Path(t).write_bytes(path.read_bytes()))


def _prune(run_dir: Path, keep: int, step: int) -> None:
    """Remove kept checkpoints beyond the `keep - 1` newest before `step` (and any of a later step: a branch
    abandoned by a roll-back)."""
    older = [s for s in kept_steps(run_dir) if s < step][:keep - 1]
    for s in kept_steps(run_dir):
        if s not in older:
            _kept(run_dir, s).unlink(missing_ok=True)


def save_run_state(run_dir: str | Path, *, step: int, modules: dict[str, torch.nn.Module],
                   optimizers: dict[str, torch.optim.Optimizer], keep: int = 2) -> Path:
    """save_state into run_dir/checkpoint.safetensors, keeping the last `keep` states: the one it replaces
    becomes checkpoint-STEP.safetensors and those beyond `keep` are removed. Non-finite: NonFiniteError, nothing
    written or removed."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoints a run keeps), got {keep}")
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    tensors, meta = _gather(step, modules, optimizers)
    # a diverged state must neither be written nor push a good one out: check before touching anything
    _refuse_nonfinite(tensors, step, path)
    _keep_previous(path, keep, step)
    save_tensors(path, tensors, meta)
    _prune(run_dir, keep, step)
    return path


def roll_back(run_dir: str | Path, step: int | None = None) -> int:
    """Make the kept checkpoint-STEP.safetensors (the newest when step is None) the run's checkpoint again, for a
    run that went bad late; the checkpoint it replaces is kept as checkpoint-ITS_STEP.safetensors until the next
    save. `load_run` then samples from it and `--resume` continues from it. Returns the step rolled back to."""
    run_dir = Path(run_dir)
    with run_lock(run_dir, "roll back"):  # a training saving beside it would prune the checkpoint rolled back to
        kept = kept_steps(run_dir)
        if not kept:
            raise RunError(f"{run_dir} keeps no older checkpoint (checkpoint-STEP.safetensors) to roll back to")
        step = kept[0] if step is None else step
        if step not in kept:
            raise RunError(f"{run_dir} keeps no checkpoint of step {step}; it keeps steps {', '.join(map(str, kept))}")
        path = run_dir / CHECKPOINT
        if path.is_file():
            try:
                os.replace(path, _kept(run_dir, step_of(path)))
            except Unreadable:
                pass  # a damaged current checkpoint is simply replaced
        os.replace(_kept(run_dir, step), path)
    return step


def note_stop(run_dir: str | Path, why: str) -> None:
    """Keep why the run stopped early in RUN/stopped.txt (the next checkpoint clears it), so `diffusely info` says
    where the run stands; a disk too full for the note loses only the note."""
    try:
        atomic_write_text(Path(run_dir) / STOPPED, why + "\n")
    except NotWritable:
        pass


def stop_fact(run_dir: str | Path) -> dict:
    """{"stopped": why} for a run that stopped early (see note_stop), else {}: a fact of describe_run."""
    path = Path(run_dir) / STOPPED
    return {"stopped": path.read_text(errors="replace").strip()} if path.is_file() else {}
