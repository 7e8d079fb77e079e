"""Audio settings, measured where audio models go wrong: how well the model removes low noise, and what it draws.

The study behind the audio defaults (docs/audio.md). For each --variants entry (settings of the run's config, as
model.patch_size=4, several joined by commas) a U-Net trains on the quick clips of benchmarks/audio.py (0.256 s at
8 kHz, 600 clips, channels 32,64,128, batch 16, classes) for the same --minutes on the CPU (its steps from a 20-step
timing run, as there), then is probed on 240 held-out clips under benchmarks/audio.py's classifier:
  mse/σ²    the denoiser's error at noise level σ over σ², given the clip's class: 1 removes nothing, 0 all of it
  restored  the held-out clips noised to σ = 0.1 (the noise level is 0.6 of the clips' spread) and sampled back to
            0 with Heun, 18 steps, their class, no guidance: FD and accuracy (the clips themselves: FD ~0.3, 1.0)
  drawn     120 conditional samples from pure noise as benchmarks/audio.py draws them (guidance 2, Heun 18)

    python benchmarks/audio_study.py --out bench/audio-patch      # patches 16, 4 and 2, 5 minutes each: ~25 min
    python benchmarks/audio_study.py --out bench/audio-sigmas --minutes 11 \\
        --variants diffusion.P_std=1.2 diffusion.P_std=1.8 diffusion.P_mean=-3.09

A model already trained in OUT is probed again, not retrained. Prints the table and writes OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import audio as bench  # benchmarks/audio.py: its config, classifier and scores
from _settings import apply, settings

SIGMAS = (0.02, 0.1)


def train_for(args, variant: str, data, out: Path) -> tuple[Path, int, float]:
    """A model of this variant trained for --minutes (kept once done): its run directory, steps, seconds."""
    from diffusely.train import train

    run_dir, changes = out / variant.replace(",", "+"), settings(variant)

    def config(steps: int):
        c = apply(bench.diffusely_config(bench.parse(["--out", str(out), "--quick"]), args.length), changes)
        c.train.steps, c.train.schedule_search = steps, 0.0
        c.train.warmup_steps = min(c.train.warmup_steps, steps // 10)
        return c

    done = run_dir / "done.json"  # written last: a run killed before it, or made with other settings, trains again
    made = json.loads(config(1).to_json())  # the run asked for, its steps aside
    if done.exists():
        facts = json.loads(done.read_text())
        if (facts.get("minutes"), facts.get("config")) == (args.minutes, made):
            return run_dir, facts["steps"], facts["seconds"]
    steps = bench.steps_in(args.minutes, config(20), out / f"{run_dir.name}-timing", data)
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    train(config(steps), run_dir, progress=False, data=data)
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"minutes": args.minutes, "config": made, "steps": steps, "seconds": seconds}))
    return run_dir, steps, seconds


def probe(run_dir: Path, net, reference: dict, held, class_names) -> dict:
    from diffusely import audio
    from diffusely.checkpoint import load_run
    from diffusely.data import to_tensor
    from diffusely.pipelines import generate
    from diffusely.samplers.ode import sample_heun
    from diffusely.schedules import karras_sigmas

    run = load_run(run_dir)
    clean = audio.network_input(to_tensor(held.images), run.config)  # what the network sees
    labels = torch.from_numpy(held.labels).long()
    g = torch.Generator().manual_seed(0)
    row = {}
    with torch.no_grad():
        for sigma in SIGMAS:
            noisy = clean + sigma * torch.randn(clean.shape, generator=g)
            denoised = run.denoiser(noisy, torch.full((len(clean),), sigma), class_labels=labels)
            row[f"mse/σ² at {sigma}"] = ((denoised - clean) ** 2).mean().item() / sigma ** 2
        noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
        restored = sample_heun(run.denoiser, noisy, karras_sigmas(18, run.config.diffusion.sigma_min, 0.1),
                               cond={"class_labels": labels})
    got = bench.scores(*bench.embed(net, audio.network_output(restored, run.config)[:, 0].numpy(), 8000), reference,
                       held.labels)
    row.update({"restored FD": got["FD"], "restored accuracy": got["accuracy"]})
    asked = np.arange(120) % len(class_names)
    drawn = torch.cat(list(generate(run, 120, steps=18, guidance=2.0, classes=[class_names[i] for i in asked],
                                    batch_size=60, progress=False)))[:, 0].numpy()
    got = bench.scores(*bench.embed(net, drawn, 8000), reference, asked)
    row.update({"drawn FD": got["FD"], "drawn IS": got["IS"], "drawn accuracy": got["accuracy"]})
    return row


def main(args) -> None:
    from diffusely.data import Dataset
    from diffusely.data.sounds import render_sounds

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    train_set = render_sounds(600, args.length, 8000, seed=0)
    held = render_sounds(240, args.length, 8000, seed=1)
    net, _, _, reference = bench.classifier(train_set, 8000, 150)
    data = Dataset(train_set.images, train_set.labels, train_set.class_names, None, None, "sounds")
    columns = [f"mse/σ² at {s}" for s in SIGMAS] + ["restored FD ↓", "restored accuracy ↑", "drawn FD ↓",
                                                     "drawn IS ↑", "drawn accuracy ↑"]
    head = "| variant | steps | train s | " + " | ".join(columns) + " |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for variant in args.variants:
        run_dir, steps, seconds = train_for(args, variant, data, out)
        row = probe(run_dir, net, reference, held, train_set.class_names)
        lines.append(f"| {variant} | {steps} | {seconds:.0f} | " + " | ".join(
            f"{v:.3f}" if "mse" in k or "accuracy" in k else f"{v:.2f}" for k, v in row.items()) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--variants", nargs="+", type=lambda v: settings(v) and v,
                   default=["model.patch_size=16", "model.patch_size=4", "model.patch_size=2"])
    p.add_argument("--minutes", type=float, default=5.0, help="Training minutes a model (default 5).")
    p.add_argument("--length", type=int, default=2048, help="Clip length in samples at 8 kHz (default 2048).")
    p.add_argument("--threads", type=int, default=2)
    main(p.parse_args())
