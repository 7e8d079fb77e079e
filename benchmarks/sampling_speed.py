"""Images per second of a trained run's sampler: float32 against bf16 autocast, eager against CUDA graphs.

Each variant loads the run with `load_run(..., precision=, cuda_graphs=)`, as `diffusely sample --precision
--cuda-graphs` does, and draws the same samples (same seeds) with the run's sampler. The variants take turns
over --repeats rounds, so a noisy machine slows them alike; it prints images per second, the ratio to float32
eager (median and spread), and how far each variant's images are from float32 eager's (mean absolute
difference in 8-bit levels). CUDA graphs are timed only on a CUDA GPU.

    python benchmarks/sampling_speed.py runs/shapes -n 512 --batch-size 256 --steps 18
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

from diffusely.checkpoint import load_run
from diffusely.pipelines import generate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import timed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=256, help="samples per round")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    p.add_argument("--sampler", help="default: the run's")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graphs = (False, True) if device.type == "cuda" else (False,)
    variants = {f"{precision}{' graphs' if g else ''}": load_run(args.run_dir, device, precision=precision, cuda_graphs=g)
                for g in graphs for precision in ("fp32", "bf16")}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    run = next(iter(variants.values()))
    print(f"device {name}, torch {torch.__version__}; run at step {run.step}, {run.config.diffusion.sampler} sampler, "
          f"{args.n} samples a round in batches of {args.batch_size}")

    def draw(run):
        return torch.cat(list(generate(run, args.n, steps=args.steps, sampler=args.sampler, batch_size=args.batch_size,
                                       progress=False)))

    images = {k: draw(r) for k, r in variants.items()}  # warm-up: graph capture, cuDNN's choices
    rates = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, r in variants.items():
            rates[k].append(args.n / timed(lambda: draw(r), 1, device))
    base = "fp32"
    levels = {k: ((x - images[base]).abs() * 127.5).mean().item() for k, x in images.items()}
    print(f"{'variant':12s} {'img/s':>9s} {'vs fp32':>8s} {'spread':>12s} {'mean |diff| (8-bit levels)':>28s}")
    for k in variants:
        ratios = [a / b for a, b in zip(rates[k], rates[base])]
        print(f"{k:12s} {statistics.median(rates[k]):9.1f} {statistics.median(ratios):8.2f} "
              f"{min(ratios):5.2f}..{max(ratios):<5.2f} {levels[k]:28.3f}")


if __name__ == "__main__":
    main()
