"""Quality per CPU minute (issue 22): diffusely against the peers a user would otherwise pick, on the clock.

Each contender trains on the same image folder for the same wall-clock budget (--minutes, 60) on this CPU, with
nothing else running, at diffusely's default U-Net parameter count where the contender lets us choose (each count
is printed), with its own recommended settings. At each of --marks (10, 30, 60 minutes: snapshots of ONE run) it
draws --samples (1000) images with its best sampler at 20 network evaluations, scored by the Fréchet distance of
domain features (diffusely.metrics.fit_domain_features, trained on the training images: a shape classifier on
shapes, a contrastive encoder on defects; comparable within one --out only, never with published FIDs) against
held-out real images; on labelled data also the share of samples the classifier puts in a class with probability
over 0.9 ("confident"; unconditional samples have no label to be accurate about, and the classifier's own held-out
accuracy is printed with the features).

Contenders:
  diffusers   diffusers' examples/unconditional_image_generation/train_unconditional.py recipe: UNet2DModel of
              diffusely's default U-Net's shape (benchmarks/_diffusers.py), DDPMScheduler (1000 linear betas, ε),
              MSE, batch 16, AdamW lr 1e-4 betas (0.95, 0.999) weight decay 1e-6, cosine schedule with 500 warm-up
              steps over 100 epochs, gradient clipping 1, EMAModel (warm-up, inv_gamma 1, power 3/4, max 0.9999),
              random flips (its README's --random_flip), fp32; the folder read once into memory (the script reads it
              through `datasets`, which diffusely does not install). Sampled by DPMSolverMultistepScheduler (DPM-Solver++
              order 2, diffusers' recommendation for ~20 steps) at 20 steps.
  lucidrains  denoising-diffusion-pytorch's Unet + GaussianDiffusion + Trainer with its README's settings, amp off
              (benchmarks/_race_peer.py says what and why); its own DDIM at 20 steps. Runs in an environment of its
              own (made on first use, ~5.7 GB: --peer-env, $DIFFUSELY_RACE_ENV, or ~/.cache/diffusely-bench/race-env),
              on torch 2.14.1 where the others run diffusely's 2.13.0 (see there why).
  default     `diffusely train FOLDER --image-size S` as it stands (diffusely.options.new_run_config: its step count,
              lr schedule and all), stopped on the clock; sampled as `diffusely sample RUN --nfe 20` samples it (the
              budget's default sampler, and the run's optimised schedule where training finished and wrote one). A run
              whose steps end before a mark is scored finished at that mark: that is what the user has by then.
  best        diffusely's best recipe found so far: the default plus EDM2's post-hoc EMA (train.posthoc_ema 0.05, 0.1),
              the EMA length (sigma_rel) picked at each mark from LENGTHS by the FD of --sweep-samples samples (another
              seed) against the training images, never the held-out ones; the picked length's samples are then scored
              like everyone's. No other recipe option was searched.
The diffusely runs stop at each mark (a checkpoint of that step), are copied, and resume bit for bit: the clock counts
their set-up again at each resume (a few seconds, against them). Every contender's clock starts before it reads the
folder and stops at the first step that ends past the last mark; sampling, snapshots and scoring are off the clock.

Data, each written once as a flat image folder under --out: `shapes32` (the built-in shapes, 10000 images, 32x32
RGB), `shapes16gray` (the same shapes rendered grayscale at 16x16: a one-channel folder, which diffusely detects and
the peers are given as one channel), `defects64` (the built-in defects, 4000 images, 64x64). Held-out reference: 2000
images of another seed. The table's "real" line per dataset is the FD of --samples training images: what a model
that copies its data scores at this N.

Output: the table of FD at each mark per dataset and contender, the minutes each contender needs to reach the best FD
any peer reaches at the last mark (linear between marks; "not reached"), the FD ratio default / best peer and best /
best peer at the last mark, OUT/race.png (FD against minutes, a panel per dataset, a curve per contender), a grid of
each mark's first samples (OUT/scores/<dataset>/<contender>/<mark>.png) and OUT/results.json (rewritten, atomically,
after every scored mark).

Piecewise: everything is cached under --out (data, features, runs, snapshots, samples' features, scores), a rerun skips
what is done, and --only DATASET:CONTENDER (repeatable) trains and scores just those. A wall-clock run cannot resume
exactly, so a contender's run stopped before its last mark restarts from scratch on the next invocation (it says so);
its scoring, which is per mark (and per EMA length in the sweep), resumes. --table prints the table and draws the plot
from the cache alone. One --out holds one set of settings (OUT/settings.json); others are refused.

How long, on two free cores: training is 3 datasets x 4 contenders x 60 min = 12 h; sampling 1000 images at 20
network calls costs about 2 min a mark at 16x16, 7 at 32x32 and 40 at 64x64 (plus half a mark for the best recipe's
sweep), so about 10 h more, most of it defects64. Run it piecewise:

    python benchmarks/race.py --out bench/race --only shapes32:default --only shapes32:best   # ~3 h
    python benchmarks/race.py --out bench/race --only shapes32:diffusers --only shapes32:lucidrains
    python benchmarks/race.py --out bench/race                     # all of it (what is cached is skipped): ~22 h
    python benchmarks/race.py --out bench/race --table             # the table and race.png of what is cached
    python benchmarks/race.py --out /tmp/race-quick --quick        # 1-minute runs, marks 0.5 and 1, 16 samples, tiny
                                                                   # features: shows every path runs, measures nothing;
                                                                   # ~30 min on one busy thread (+ the peer env once)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusely._files import atomic_write, atomic_write_text, load_tensors, save_tensors
from diffusely._util import generators, randn
from diffusely.checkpoint import CHECKPOINT, CONFIG, MODEL, SCHEDULES, load_run
from diffusely.data import load_dataset, to_grayscale, to_tensor, to_uint8
from diffusely.data.defects import render_defects
from diffusely.data.shapes import render_shapes
from diffusely.metrics import (FeatureStats, feature_statistics, fit_domain_features, frechet_distance,
                               load_domain_features, load_stats, save_domain_features, save_stats)
from diffusely.options import new_run_config
from diffusely.pipelines.generate import generate, recipe
from diffusely.state import load_state, step_of
from diffusely.train import train
from diffusely.train.ema import POSTHOC, SNAPSHOT_FORMAT, gamma_of, snapshot_name
from diffusely.train.posthoc import load_posthoc_run
from diffusely.viz import save_grid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _race_peer as peer  # noqa: E402
from _diffusers import parameters, require_diffusers, unet2d  # noqa: E402

CONTENDERS = ("diffusers", "lucidrains", "default", "best")
PEERS = ("diffusers", "lucidrains")
NFE = 20
SEED, SWEEP_SEED = 10_000, 20_000  # sampling seeds: the scored samples, and the EMA-length sweep's
LENGTHS = (0.025, 0.05, 0.1, 0.2)  # the post-hoc EMA lengths (sigma_rel) the best recipe picks from
POSTHOC_EMA = (0.05, 0.1)  # EDM2's two tracked averages
SAMPLE_BATCH = 125


@dataclass(frozen=True)
class Data:
    source: str  # a built-in dataset
    size: int
    channels: int
    count: int  # training images (the built-in set's size)


DATASETS = {"shapes32": Data("shapes", 32, 3, 10_000), "shapes16gray": Data("shapes", 16, 1, 10_000),
            "defects64": Data("defects", 64, 3, 4_000)}
FULL = dict(minutes=60.0, marks=(10.0, 30.0, 60.0), samples=1000, sweep_samples=128, heldout=2000, train_limit=None,
            feature_steps=None)
QUICK = dict(minutes=1.0, marks=(0.5, 1.0), samples=16, sweep_samples=8, heldout=128, train_limit=256,
             feature_steps=20)


class Clock:
    """Wall-clock seconds spent while running (start/pause), so snapshots and checks stay off the budget."""

    def __init__(self):
        self.spent, self.since = 0.0, None

    def start(self) -> None:
        self.since = time.perf_counter()

    def pause(self) -> None:
        self.spent += time.perf_counter() - self.since
        self.since = None

    def minutes(self) -> float:
        return (self.spent + (time.perf_counter() - self.since if self.since is not None else 0.0)) / 60


def label(mark: float) -> str:
    return f"{mark:g}"


def reached(passed: list[float], step: int, minutes: float) -> dict:
    """The facts of marks passed by one step: the first's weights are saved, the others name it as their snapshot."""
    return {label(m): {"step": step, "minutes": minutes, **({"snapshot": label(passed[0])} if i else {})}
            for i, m in enumerate(passed)}


# ------------------------------------------------------------------------------ data and features


def rendered(name: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray | None, int]:
    """The dataset's first `count` images of `seed` (N, S, S, C) uint8, their labels (or None) and the number of
    classes: seed 0 is the built-in set load_dataset gives (image i depends on (seed, i, size) alone)."""
    d = DATASETS[name]
    if d.source == "defects":
        return render_defects(count, d.size, seed=seed).images, None, 0
    data = render_shapes(count, d.size, seed=seed)
    images = data.images if d.channels == 3 else to_grayscale(data.images)
    return images, data.labels, len(data.class_names)


def training_set(name: str, s: dict) -> tuple[np.ndarray, np.ndarray | None, int]:
    return rendered(name, s["train_limit"] or DATASETS[name].count, seed=0)


def image_folder(out: Path, name: str, s: dict) -> Path:
    """OUT/data/<name>: the training images as PNGs, written once (a marker says the folder is whole)."""
    from PIL import Image

    folder, done = out / "data" / name, out / "data" / f"{name}.done"
    if not done.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        images = training_set(name, s)[0]
        for i, image in enumerate(images):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{i:05d}.png")
        done.write_text(str(len(images)))
    return folder


class Scorer:
    """A dataset's domain features (trained once, kept in OUT/features) and the statistics of its held-out images
    (the reported FD) and of its training images (the EMA-length sweep's FD)."""

    def __init__(self, out: Path, name: str, s: dict):
        root = out / "features"
        root.mkdir(parents=True, exist_ok=True)
        paths = {k: root / f"{name}-{k}" for k in ("net.safetensors", "heldout.npz", "train.npz", "facts.json")}
        if not all(p.is_file() for p in paths.values()):
            self._fit(name, s, paths)
        self.extractor = load_domain_features(paths["net.safetensors"])
        self.heldout, self.train = load_stats(paths["heldout.npz"]), load_stats(paths["train.npz"])
        self.facts = json.loads(paths["facts.json"].read_text())

    def _fit(self, name: str, s: dict, paths: dict) -> None:
        images, labels, classes = training_set(name, s)
        extractor = fit_domain_features(images, labels, classes, steps=s["feature_steps"], reference={"dataset": name})
        real, real_labels, _ = rendered(name, s["heldout"], seed=1)  # never trained on
        heldout = FeatureStats.of(extractor(real), extractor.name)
        facts = {"extractor": extractor.name,
                 # the FD of as many training images as samples: what a model that copies its data would score
                 "real_fd": fd_of(heldout, extractor(images[:s["samples"]]))}
        if real_labels is not None:
            with torch.inference_mode():
                logits = extractor.net(to_tensor(real))
            facts["heldout_accuracy"] = float((logits.argmax(1).numpy() == real_labels).mean())
        save_domain_features(paths["net.safetensors"], extractor)
        save_stats(paths["heldout.npz"], heldout)
        save_stats(paths["train.npz"], FeatureStats.of(extractor(images), extractor.name))
        atomic_write_text(paths["facts.json"], json.dumps(facts, indent=1))

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.extractor(images)

    def score(self, features: np.ndarray) -> dict:
        row = {"fd": fd_of(self.heldout, features)}
        if self.extractor.info["kind"] == "classifier":
            probs = self.extractor.net.head(torch.from_numpy(features).float()).softmax(-1).numpy()
            row["confident"] = float((probs.max(1) > 0.9).mean())
        return row


def save_npz(path: Path, **arrays) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
            np.savez(f, **arrays)
    atomic_write(path, write)


def fd_of(reference: FeatureStats, features: np.ndarray) -> float:
    return frechet_distance(reference.mu, reference.sigma, *feature_statistics(features))


# ------------------------------------------------------------------------------ diffusely: default and best


def diffusely_config(folder: Path, size: int, best: bool):
    """What `diffusely train FOLDER --image-size S [--posthoc-ema 0.05,0.1]` trains."""
    config = new_run_config(str(folder), {"image_size": size}, say=lambda line: print(f"diffusely: {line}"))
    if best:
        config.train.posthoc_ema = POSTHOC_EMA
    return config


def default_network(d: Data):
    """The U-Net `diffusely train` builds for this data by default, its channels set as training sets them (the
    built-in name stands for the folder: the network does not depend on where the images come from)."""
    model = new_run_config(d.source, {"image_size": d.size}).model
    model.in_channels = model.out_channels = d.channels
    return model


def network_parameters(d: Data) -> int:
    from diffusely.nets import UNet

    return parameters(UNet(default_network(d)))


def train_diffusely(folder: Path, run: Path, d: Data, s: dict, best: bool, progress: bool) -> dict:
    """Train on the clock, stopping at each mark (a checkpoint), copying what sampling needs to run/marks/<mark>, and
    resuming. A run whose steps all end before a mark is the finished run there (run/marks/finished, with the
    optimised sampling schedules its end writes), or, where the mark falls in that end's schedule search, its last
    step's weights without them (run/marks/last-step): what the user holds at that minute."""
    clock, marks, last_step = Clock(), {}, {}
    clock.start()  # `diffusely train`'s own set-up (a look at the folder's colours) is on the clock too
    config = diffusely_config(folder, d.size, best)
    posthoc = config.train.posthoc_ema

    def at_checkpoint(step: int) -> None:
        if step == config.train.steps:  # before the schedule search that ends training
            clock.pause()
            snapshot_run(run / "run", run / "marks" / "last-step", posthoc)
            last_step["minutes"] = clock.minutes()
            clock.start()

    pending = [float(m) for m in s["marks"]]
    while pending:
        if clock.since is None:
            clock.start()
        stats = train(config, run / "run", resume=bool(marks), progress=progress, on_checkpoint=at_checkpoint,
                      should_stop=lambda: clock.minutes() >= pending[0])
        clock.pause()
        step, minutes = stats["step"], clock.minutes()
        if step < config.train.steps:  # stopped at a mark (or past several: they share this step)
            passed = [m for m in pending if m <= minutes] or pending[:1]
            snapshot_run(run / "run", run / "marks" / label(passed[0]), posthoc)
            marks.update(reached(passed, step, minutes))
            pending = pending[len(passed):]
            print(f"{'best' if best else 'default'}: {', '.join(map(label, passed))} min at step {step}", flush=True)
            continue
        snapshot_run(run / "run", run / "marks" / "finished", posthoc)
        print(f"{'best' if best else 'default'}: finished its {step} steps at {minutes:.1f} min", flush=True)
        for mark in pending:
            late = mark < minutes
            marks[label(mark)] = {"step": step, "minutes": last_step["minutes"] if late else minutes,
                                  "snapshot": "last-step" if late else "finished"}
        pending = []
    return {"params": network_parameters(d), "marks": marks}


def snapshot_run(run_dir: Path, dest: Path, posthoc: tuple) -> None:
    """What sampling needs of the run as it stands: config, EMA weights, optimised schedules; with post-hoc EMA the
    averages of this step (from the checkpoint) stored among the run's snapshots, as training stores one at its last
    step, and all of them up to this step hard-linked (a snapshot is never rewritten)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in (CONFIG, MODEL, SCHEDULES):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    if not posthoc:
        return
    step = step_of(run_dir / CHECKPOINT)
    modules = load_state(run_dir / CHECKPOINT).modules
    for i, sigma_rel in enumerate(posthoc):
        path = run_dir / POSTHOC / snapshot_name(sigma_rel, step)
        if not path.exists():
            save_tensors(path, modules[f"phema{i}"], {"step": step, "sigma_rel": sigma_rel,
                                                      "gamma": gamma_of(sigma_rel), "format": SNAPSHOT_FORMAT})
    (dest / POSTHOC).mkdir()
    for path in sorted((run_dir / POSTHOC).glob("ema-*.safetensors")):
        if int(path.stem.rsplit("-", 1)[1]) <= step:  # ema-<sigma_rel>-<step>
            os.link(path, dest / POSTHOC / path.name)


def sample_diffusely(snapshot: Path, n: int, seed: int, ema_length: float | None = None) -> tuple[np.ndarray, str]:
    """n images as `diffusely sample --nfe 20` draws them (uint8), and the sampler it chose."""
    run = load_run(snapshot) if ema_length is None else load_posthoc_run(snapshot, ema_length)
    plan = recipe(run, nfe=NFE)
    x = torch.cat(list(generate(run, n, seed=seed, batch_size=SAMPLE_BATCH, progress=False, nfe=NFE)))
    return to_uint8(x), f"{plan.sampler.given} {plan.steps} steps" + (" (optimised schedule)" if plan.optimised else "")


def score_best(snapshot: Path, scorer: Scorer, s: dict, cache: Path) -> tuple[np.ndarray, dict]:
    """The EMA length of lowest FD against the training images (--sweep-samples samples of SWEEP_SEED; each length's
    FD cached as it comes), then --samples images with it."""
    sweep = json.loads(cache.read_text()) if cache.is_file() else {}
    for length in LENGTHS:
        if label(length) not in sweep:
            images, _ = sample_diffusely(snapshot, s["sweep_samples"], SWEEP_SEED, length)
            sweep[label(length)] = fd_of(scorer.train, scorer.features(images))
            atomic_write_text(cache, json.dumps(sweep, indent=1))
    length = float(min(sweep, key=sweep.get))
    images, sampler = sample_diffusely(snapshot, s["samples"], SEED, length)
    return images, {"sampler": sampler, "ema_length": length, "sweep_fd_train": sweep}


# ------------------------------------------------------------------------------ diffusers


DIFFUSERS_BATCH, DIFFUSERS_EPOCHS = 16, 100


def diffusers_network(d: Data):
    return unet2d(default_network(d), d.size)


def noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


def train_diffusers(folder: Path, run: Path, d: Data, s: dict) -> dict:
    """train_unconditional.py's loop on the clock, the EMA weights saved at each mark (off the clock)."""
    import copy

    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    clock, marks = Clock(), {}
    clock.start()
    images = to_tensor(load_dataset(str(folder), d.size, d.channels).images)
    torch.manual_seed(0)
    net, scheduler = diffusers_network(d), noise_scheduler()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    batches_per_epoch = math.ceil(len(images) / DIFFUSERS_BATCH)
    lr_schedule = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500,
                                num_training_steps=batches_per_epoch * DIFFUSERS_EPOCHS)
    ema = EMAModel(net.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    g, step = torch.Generator().manual_seed(0), 0
    while len(marks) < len(s["marks"]):
        for rows in torch.randperm(len(images), generator=g).split(DIFFUSERS_BATCH):  # an epoch, shuffled
            x = images[rows]
            x = torch.where((torch.rand(len(x), generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
            noise = torch.randn(x.shape, generator=g)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=g)
            loss = torch.nn.functional.mse_loss(net(scheduler.add_noise(x, noise, t), t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            ema.step(net.parameters())
            optimizer.zero_grad(set_to_none=True)
            step += 1
            passed = [m for m in s["marks"][len(marks):] if clock.minutes() >= m]
            if passed:
                clock.pause()
                averaged = copy.deepcopy(net)
                ema.copy_to(averaged.parameters())
                save_tensors(run / f"ema-{label(passed[0])}.safetensors", averaged.state_dict(), {"step": step})
                marks.update(reached(passed, step, clock.minutes()))
                print(f"diffusers: {', '.join(map(label, passed))} min at step {step}", flush=True)
                if len(marks) == len(s["marks"]):
                    break
                clock.start()
    return {"params": parameters(net), "marks": marks}


def sample_diffusers(run: Path, mark: str, d: Data, n: int) -> tuple[np.ndarray, str]:
    """n images by DPMSolverMultistepScheduler at NFE steps, image i from the noise of seed SEED + i."""
    from diffusers import DPMSolverMultistepScheduler

    net = diffusers_network(d)
    net.load_state_dict(load_tensors(run / f"ema-{mark}.safetensors")[0])
    net.eval()
    config, chunks = noise_scheduler().config, []
    for first in range(0, n, SAMPLE_BATCH):
        solver = DPMSolverMultistepScheduler.from_config(config)  # stateful: a fresh one for each batch
        solver.set_timesteps(NFE)
        x = randn((min(SAMPLE_BATCH, n - first), d.channels, d.size, d.size),
                  generators(range(SEED + first, SEED + min(n, first + SAMPLE_BATCH))))
        x = x * solver.init_noise_sigma
        with torch.inference_mode():
            for t in solver.timesteps:
                x = solver.step(net(solver.scale_model_input(x, t), t).sample, t, x).prev_sample
        chunks.append(to_uint8(x))
    return np.concatenate(chunks), f"DPMSolverMultistep {NFE} steps"


# ------------------------------------------------------------------------------ lucidrains


def train_lucidrains(folder: Path, run: Path, d: Data, s: dict, python: Path, target: int) -> dict:
    spec = {"task": "train", "folder": str(folder), "image_size": d.size, "channels": d.channels,
            "target_params": target, "marks": list(s["marks"]), "out": str(run)}
    peer.run_worker(python, spec, run / "train-spec.json")
    return json.loads((run / "peer-train.json").read_text())


def sample_lucidrains(run: Path, mark: str, d: Data, n: int, python: Path) -> tuple[np.ndarray, str]:
    info = json.loads((run / "peer-train.json").read_text())
    spec = {"task": "sample", "weights": str(run / f"ema-{mark}.safetensors"), "dim": info["dim"], "n": n,
            "seed": SEED, "batch_size": SAMPLE_BATCH, "image_size": d.size, "channels": d.channels,
            "out": str(run / f"samples-{mark}.npz")}
    peer.run_worker(python, spec, run / f"sample-{mark}-spec.json")
    with np.load(run / f"samples-{mark}.npz") as f:
        return f["images"], f"DDIM {peer.SAMPLING_STEPS} steps (its sampling_timesteps)"


# ------------------------------------------------------------------------------ the race


class Race:
    """The cache under --out: OUT/runs/<dataset>/<contender>/ (race.json once its run reached the last mark) and
    OUT/scores/<dataset>/<contender>/<mark>.json (+ .npz: the samples' features; .png: a grid of them)."""

    def __init__(self, out: Path, s: dict, args):
        self.out, self.s, self.args = out, s, args
        self._python = None

    def run_dir(self, dataset: str, contender: str) -> Path:
        return self.out / "runs" / dataset / contender

    def trained(self, dataset: str, contender: str) -> dict | None:
        path = self.run_dir(dataset, contender) / "race.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def python(self) -> Path:
        if self._python is None:
            self._python = peer.ensure_env(peer.env_path(self.args.peer_env))
        return self._python

    def train(self, dataset: str, contender: str) -> dict:
        """The contender's run on the dataset: cached, or trained now (from scratch: a clock cannot resume)."""
        info = self.trained(dataset, contender)
        if info is not None:
            return info
        run, d = self.run_dir(dataset, contender), DATASETS[dataset]
        if run.exists():
            print(f"{dataset}:{contender}: its run stopped before the last mark; a wall-clock budget cannot resume "
                  f"exactly, so it restarts from scratch", flush=True)
            shutil.rmtree(run)
        run.mkdir(parents=True)
        folder = image_folder(self.out, dataset, self.s)
        print(f"{dataset}:{contender}: training {self.s['minutes']:g} min, marks "
              f"{', '.join(map(label, self.s['marks']))}", flush=True)
        if contender == "diffusers":
            info = train_diffusers(folder, run, d, self.s)
        elif contender == "lucidrains":
            info = train_lucidrains(folder, run, d, self.s, self.python(), network_parameters(d))
        else:
            info = train_diffusely(folder, run, d, self.s, contender == "best", self.args.progress)
        print(f"{dataset}:{contender}: {info['params']:,} parameters (diffusely's default: "
              f"{network_parameters(d):,})", flush=True)
        atomic_write_text(run / "race.json", json.dumps(info, indent=1))
        return info

    def score(self, dataset: str, contender: str, scorer: Scorer) -> None:
        """Sample and score every mark not scored yet; results.json after each."""
        info, d = self.train(dataset, contender), DATASETS[dataset]
        run = self.run_dir(dataset, contender)
        scored = {}  # snapshot -> the first mark scored from it (a finished run stands for several marks)
        for mark, facts in info["marks"].items():
            path = self.out / "scores" / dataset / contender / f"{mark}.json"
            snapshot = facts.get("snapshot", mark)
            first = scored.setdefault(snapshot, mark)
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if first != mark:
                row = {**json.loads(path.with_name(f"{first}.json").read_text()), **facts}
            else:
                row = {**self.sample_and_score(contender, snapshot, run, d, scorer, path), **facts}
            atomic_write_text(path, json.dumps(row, indent=1))
            print(f"{dataset}:{contender} at {mark} min (step {facts['step']}): FD {row['fd']:.3g} "
                  f"({row['sampler']})", flush=True)
            write_results(self.out, self.s)

    def sample_and_score(self, contender: str, mark: str, run: Path, d: Data, scorer: Scorer, path: Path) -> dict:
        """The samples of the mark's weights (run/marks/<mark> for ours) drawn, pictured and embedded (features
        cached), then scored."""
        cache, extra = path.with_suffix(".npz"), {}
        if cache.is_file():
            with np.load(cache) as f:
                features, extra = f["features"], json.loads(str(f["facts"]))
        else:
            started, n = time.perf_counter(), self.s["samples"]
            if contender == "best":
                images, extra = score_best(run / "marks" / mark, scorer, self.s, path.with_suffix(".sweep.json"))
            else:
                images, sampler = (sample_diffusers(run, mark, d, n) if contender == "diffusers" else
                                   sample_lucidrains(run, mark, d, n, self.python()) if contender == "lucidrains" else
                                   sample_diffusely(run / "marks" / mark, n, SEED))
                extra = {"sampler": sampler}
            extra["sampling_seconds"] = time.perf_counter() - started
            save_grid(images[:64], path.with_suffix(".png"))
            features = scorer.features(images)
            save_npz(cache, features=features, facts=json.dumps(extra))
        return {**scorer.score(features), **extra}


# ------------------------------------------------------------------------------ the table and the plot


def collect(out: Path) -> dict:
    """Everything scored so far: {dataset: {contender: {mark: row}}} and the runs' parameter counts."""
    scores, params = {}, {}
    for path in sorted((out / "scores").glob("*/*/*.json")):
        if path.name.endswith(".sweep.json"):
            continue
        dataset, contender = path.parent.parent.name, path.parent.name
        scores.setdefault(dataset, {}).setdefault(contender, {})[path.stem] = json.loads(path.read_text())
    for path in (out / "runs").glob("*/*/race.json"):
        params.setdefault(path.parent.parent.name, {})[path.parent.name] = json.loads(path.read_text())["params"]
    real = {path.name[:-len("-facts.json")]: json.loads(path.read_text())
            for path in (out / "features").glob("*-facts.json")}
    return {"scores": scores, "params": params, "features": real}


def reach_minutes(marks: list[float], fds: list[float], target: float) -> str:
    """The minutes at which the FD curve (linear between marks) first reaches `target`."""
    if fds[0] <= target:
        return f"<= {marks[0]:g}"
    for (m0, f0), (m1, f1) in zip(zip(marks, fds), zip(marks[1:], fds[1:])):
        if f1 <= target:
            return f"{m0 + (f0 - target) / (f0 - f1) * (m1 - m0):.1f}"
    return "not reached"


def summary(out: Path, s: dict) -> tuple[str, dict]:
    """The table's text and, per dataset, the target (best peer FD at the last mark), minutes to it and ratios."""
    found, marks = collect(out), [label(m) for m in s["marks"]]
    lines, summaries = [], {}
    head = f"{'dataset':<14} {'contender':<11} {'params':>10} " + " ".join(f"{'FD@' + m:>9}" for m in marks)
    for dataset in (name for name in DATASETS if name in found["scores"]):  # the table's order, not the files'
        by_contender = found["scores"][dataset]
        last = {c: rows[marks[-1]]["fd"] for c, rows in by_contender.items() if marks[-1] in rows}
        peer_fds = {c: fd for c, fd in last.items() if c in PEERS}
        target = min(peer_fds.values()) if peer_fds else None
        facts = {"target": target, "minutes_to_target": {}, "ratio_to_best_peer": {}}
        lines += ["", f"{head} {'min to peers best':>18}"]
        for contender in CONTENDERS:
            rows = by_contender.get(contender, {})
            if not rows:
                continue
            cells = " ".join(f"{rows[m]['fd']:>9.3g}" if m in rows else f"{'-':>9}" for m in marks)
            reach = "-"
            if target is not None and all(m in rows for m in marks):
                reach = reach_minutes(s["marks"], [rows[m]["fd"] for m in marks], target)
                facts["minutes_to_target"][contender] = reach
            params = found["params"].get(dataset, {}).get(contender)
            lines.append(f"{dataset:<14} {contender:<11} {params or 0:>10,} {cells} {reach:>18}")
        for contender in ("default", "best"):
            if target and contender in last:
                facts["ratio_to_best_peer"][contender] = last[contender] / target
        if dataset in found["features"]:
            lines.append(f"  real training images: FD {found['features'][dataset]['real_fd']:.3g} (the floor at this N)")
        if target is not None:
            ratios = ", ".join(f"{c} / best peer {r:.2f}" for c, r in facts["ratio_to_best_peer"].items())
            lines.append(f"  best peer FD at {marks[-1]} min: {target:.3g}" + (f"; FD ratio {ratios}" if ratios else ""))
        summaries[dataset] = facts
    return "\n".join(lines), {**found, "summary": summaries}


def write_results(out: Path, s: dict) -> str:
    text, results = summary(out, s)
    atomic_write_text(out / "results.json", json.dumps({"settings": s, **results}, indent=1, default=str))
    return text


def plot(out: Path, s: dict) -> Path | None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, results = summary(out, s)
    if not results["scores"]:
        return None
    names = [name for name in DATASETS if name in results["scores"]]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, dataset in zip(axes[0], names):
        for contender in CONTENDERS:
            rows = results["scores"][dataset].get(contender, {})
            points = sorted((float(m), r["fd"]) for m, r in rows.items())
            if points:
                ax.plot(*zip(*points), marker="o", label=contender, color=f"C{CONTENDERS.index(contender)}")
        target = results["summary"][dataset]["target"]
        if target is not None:
            ax.axhline(target, color="gray", linestyle="--", linewidth=1, label="best peer at the end")
        ax.set(title=dataset, xlabel="training minutes (wall clock)", ylabel="FD (domain features)", yscale="log")
        ax.set_xlim(left=0)
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # 20, not 2 x 10^1
            axis(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "race.png", dpi=100)
    plt.close(fig)
    return out / "race.png"


# ------------------------------------------------------------------------------ main


def settings(args) -> dict:
    s = dict(QUICK if args.quick else FULL)
    if args.minutes:
        s["minutes"] = args.minutes
        s["marks"] = tuple(m for m in s["marks"] if m < args.minutes)
    if args.marks:
        s["marks"] = tuple(float(m) for m in args.marks.split(","))
    s["marks"] = tuple(sorted(set(s["marks"]) | {s["minutes"]}))
    if s["marks"][0] <= 0 or s["marks"][-1] != s["minutes"]:
        raise SystemExit(f"--marks must lie in (0, --minutes] ({s['minutes']:g}), got {args.marks}")
    for name in ("samples", "sweep_samples"):
        if getattr(args, name):
            s[name] = getattr(args, name)
    return s


def same_settings(out: Path, s: dict) -> None:
    """A cache answers only for the settings it was made with: refuse others rather than mix them."""
    path = out / "settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(s)):
            raise SystemExit(f"{out} holds a race with other settings ({saved}); use another --out")
    else:
        atomic_write_text(path, json.dumps(s, indent=1))


def chosen(only: list[str]) -> list[tuple[str, str]]:
    if not only:
        return [(d, c) for d in DATASETS for c in CONTENDERS]
    pairs = []
    for item in only:
        dataset, _, contender = item.partition(":")
        if dataset not in DATASETS or contender not in CONTENDERS:
            raise SystemExit(f"--only {item}: give DATASET:CONTENDER, DATASET one of {', '.join(DATASETS)}, "
                             f"CONTENDER one of {', '.join(CONTENDERS)}")
        pairs.append((dataset, contender))
    return pairs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the cache: data, features, runs, scores, results")
    p.add_argument("--only", action="append", default=[], metavar="DATASET:CONTENDER",
                   help="train and score only these (repeatable); default all")
    p.add_argument("--table", action="store_true", help="only print the table and draw race.png from the cache")
    p.add_argument("--quick", action="store_true", help="1-minute budget, marks 0.5 and 1, 16 samples, 256 training "
                   "images, tiny domain features: shows it runs end to end, measures nothing")
    p.add_argument("--minutes", type=float, help="the wall-clock budget of each run (default 60; --quick 1)")
    p.add_argument("--marks", help="comma-separated minutes to score at (default 10,30,60; --quick 0.5,1)")
    p.add_argument("--samples", type=int, help="images scored at each mark (default 1000; --quick 16)")
    p.add_argument("--sweep-samples", type=int, help="images per EMA length in the best recipe's sweep (default 128; "
                   "--quick 8)")
    p.add_argument("--peer-env", type=Path, help=f"lucidrains' environment (made when missing); default "
                   f"${peer.ENV_VARIABLE} or {peer.DEFAULT_ENV}")
    p.add_argument("--progress", action="store_true", help="diffusely's training progress bars")
    args = p.parse_args()
    s = settings(args)
    args.out.mkdir(parents=True, exist_ok=True)
    same_settings(args.out, s)
    if not args.table:
        pairs = chosen(args.only)
        if any(c == "diffusers" for _, c in pairs):
            require_diffusers()
        race = Race(args.out, s, args)
        for dataset in dict.fromkeys(d for d, _ in pairs):
            scorer = Scorer(args.out, dataset, s)
            print(f"{dataset}: features {scorer.facts['extractor']}; training images' FD at {s['samples']}: "
                  f"{scorer.facts['real_fd']:.3g}" + (f"; classifier held-out accuracy "
                                                      f"{scorer.facts['heldout_accuracy']:.3f}"
                                                      if "heldout_accuracy" in scorer.facts else ""), flush=True)
            for contender in (c for d, c in pairs if d == dataset):
                race.score(dataset, contender, scorer)
    print(write_results(args.out, s))
    picture = plot(args.out, s)
    print(f"\nresults.json{' and race.png' if picture else ''} in {args.out}")


if __name__ == "__main__":
    main()
