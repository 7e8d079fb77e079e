"""lucidrains' denoising-diffusion-pytorch as a contender of benchmarks/race.py, in an environment of its own.

It imports torchvision, which diffusely does not install, so race.py makes a second virtual environment for it
(`ensure_env`, once: PACKAGES) and runs this file there as a subprocess (`run_worker`), as benchmarks/_yolo.py does
for Ultralytics. The top half (env_path, ensure_env, worker_env, run_worker) runs in diffusely's environment; the
worker below it (`python _race_peer.py SPEC.json`) runs in the peer's and imports nothing of diffusely.

PACKAGES are those of benchmarks/_yolo.py's environment: torch 2.14.1 and the torchvision built for it (PyPI's
torchvision wheels are CUDA builds, whose operators do not load under the CPU torch of diffusely's environment, so the
peer cannot share diffusely's torch 2.13.0). The peer so runs a newer torch than the other contenders, on the same
oneDNN CPU kernels; note it beside any timing that looks like a kernel difference.

The worker's tasks (SPEC["task"]):
  train   the README's Trainer recipe on an image folder (Unet of dim_mults (1, 2, 4, 8) at the `dim` whose
          parameter count is nearest SPEC["target_params"]; GaussianDiffusion with its defaults: 1000 steps,
          pred_v, sigmoid betas; Trainer with the README's batch 32, gradient accumulation 2, lr 8e-5, EMA decay
          0.995, flips on), changed only where a CPU demands: amp off (fp16 autocast is a GPU feature), no FID
          during training (its Inception weights come from the network; 50000 samples a check), and DDIM at 20
          steps (`sampling_timesteps`, the README's fast path) for its periodic sample grids as for ours. Its own
          Trainer.train() loop runs unchanged; a wrapper around its EMA update, called once after every optimizer
          step, reads the clock, saves the EMA weights at each mark (the clock paused) and at the last mark ends
          the loop (train_num_steps set to the step reached). Writes OUT/peer-train.json.
  sample  n images from a mark's EMA weights with its DDIM sampler at 20 steps (20 network calls), image i from
          torch seed SEED + i's batch, as uint8 (N, S, S, C) in an .npz.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _venv import ensure_venv

PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "denoising-diffusion-pytorch==2.3.4")
ENV_VARIABLE = "DIFFUSELY_RACE_ENV"
DEFAULT_ENV = Path.home() / ".cache" / "diffusely-bench" / "race-env"
SAMPLING_STEPS = 20  # DDIM steps: one network call each


def env_path(option: Path | None) -> Path:
    """Where the peer environment lives: --peer-env, else $DIFFUSELY_RACE_ENV, else ~/.cache/diffusely-bench."""
    return Path(option or os.environ.get(ENV_VARIABLE) or DEFAULT_ENV).expanduser()


def ensure_env(path: Path) -> Path:
    """The python of a virtual environment at `path` holding PACKAGES; made (minutes) when missing."""
    return ensure_venv(path, PACKAGES, "torch, torchvision, denoising_diffusion_pytorch", worker_env(),
                       "the peer environment", "5 GB")


def worker_env() -> dict:
    """The worker's environment: nothing of diffusely's leaks in, no hub access, no sampling progress bars (the
    Trainer's own bar stays: it sets `disable` itself), and OpenMP threads that sleep when idle (a busy-waiting one
    steals a core)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.pop("PYTHONPATH", None)
    return env


def run_worker(python: Path, spec: dict, spec_path: Path) -> None:
    """Run one worker task in the peer environment; SystemExit naming the spec if it fails."""
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1))
    done = subprocess.run([str(python), str(Path(__file__).resolve()), str(spec_path)], env=worker_env())
    if done.returncode != 0:
        raise SystemExit(f"Error: the lucidrains worker failed (exit {done.returncode}); its spec: {spec_path}")


# ------------------------------------------------------------------------------ the worker (peer environment)


def build(spec: dict, dim: int):
    """Unet at `dim` inside the README's GaussianDiffusion (its defaults; DDIM at SAMPLING_STEPS)."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    net = Unet(dim=dim, dim_mults=(1, 2, 4, 8), channels=spec["channels"])
    return GaussianDiffusion(net, image_size=spec["image_size"], timesteps=1000, sampling_timesteps=SAMPLING_STEPS)


def matched_dim(spec: dict) -> tuple[int, int]:
    """(dim, parameters) of the Unet whose parameter count is nearest the target, dim even (its sinusoidal time
    embedding's width)."""
    counts = {}
    for dim in range(8, 513, 2):
        counts[dim] = sum(p.numel() for p in build(spec, dim).model.parameters())
        if counts[dim] > spec["target_params"]:  # counts grow with dim: no nearer one lies beyond
            break
    dim = min(counts, key=lambda d: abs(counts[d] - spec["target_params"]))
    return dim, counts[dim]


def train(spec: dict) -> None:
    import torch
    from denoising_diffusion_pytorch import Trainer
    from safetensors.torch import save_file

    out, marks = Path(spec["out"]), list(spec["marks"])
    dim, params = matched_dim(spec)
    print(f"lucidrains: Unet dim {dim}, {params:,} parameters (target {spec['target_params']:,})", flush=True)
    torch.manual_seed(0)
    spent, started = 0.0, time.perf_counter()  # the clock runs from the Trainer's set-up (its data scan) on
    (out / "results").mkdir(parents=True, exist_ok=True)
    trainer = Trainer(build(spec, dim), spec["folder"], train_batch_size=32, gradient_accumulate_every=2,
                      train_lr=8e-5, train_num_steps=700_000, ema_decay=0.995, amp=False, calculate_fid=False,
                      results_folder=str(out / "results"))
    reached, update = {}, trainer.ema.update

    def clocked_update():
        nonlocal spent, started
        update()
        minutes = (spent + time.perf_counter() - started) / 60
        passed = [m for m in marks[len(reached):] if minutes >= m]  # a slow step can pass several: they share it
        if not passed:
            return
        spent += time.perf_counter() - started  # the snapshot is off the clock
        first = f"{passed[0]:g}"
        save_file({k: v.contiguous() for k, v in trainer.ema.ema_model.state_dict().items()},
                  str(out / f"ema-{first}.safetensors"))
        for i, mark in enumerate(passed):
            reached[f"{mark:g}"] = {"step": trainer.step, "minutes": minutes, **({"snapshot": first} if i else {})}
        print(f"lucidrains: {', '.join(f'{m:g}' for m in passed)} min at step {trainer.step}", flush=True)
        if len(reached) == len(marks):
            trainer.train_num_steps = trainer.step  # its loop ends after this step
        started = time.perf_counter()

    trainer.ema.update = clocked_update
    trainer.train()
    for milestone in (out / "results").glob("model-*.pt"):  # its periodic full states: only a resume needs them
        milestone.unlink()
    (out / "peer-train.json").write_text(json.dumps({"dim": dim, "params": params, "marks": reached}, indent=1))


def sample(spec: dict) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    diffusion = build(spec, spec["dim"])
    diffusion.load_state_dict(load_file(spec["weights"]))
    diffusion.eval()
    n, batch, chunks = spec["n"], spec["batch_size"], []
    for first in range(0, n, batch):
        torch.manual_seed(spec["seed"] + first)  # its sampler draws from torch's global generator
        x = diffusion.sample(batch_size=min(batch, n - first))  # in [0, 1]
        chunks.append((x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    np.savez(spec["out"], images=np.concatenate(chunks))


if __name__ == "__main__":
    task = json.loads(Path(sys.argv[1]).read_text())
    {"train": train, "sample": sample}[task["task"]](task)
