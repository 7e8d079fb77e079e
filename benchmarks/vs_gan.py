"""Diffusion against GANs on the user's kind of data: stability, diversity and speed, at equal CPU minutes.

Methods (rows), each trained --seeds times (default 5) for --minutes of wall clock on the same CPU cores:
  diffusely       the default recipe (EDM, `diffusely train`, a U-Net of channels 32,64,64), sampled with Heun
                  at 35 NFE, and with UniPC at 10 NFE (docs/samplers.md: the best solver at that budget)
  student-1/2/4   the median diffusely seed distilled (`diffusely distill`) to 1, 2 and 4 NFE; the minutes of
                  distillation are reported beside, not counted in the teacher's budget
  dcgan           a plain DCGAN (Radford et al. 2016: strided convolutions, batch norm, Adam 2e-4, beta1 0.5),
                  written here, the textbook baseline; --gan-width 48 matches the U-Net's parameters (1.9M to 1.7M
                  at 32 px); the peers' generators as near as their command lines allow (at 32 px: lightweight-gan
                  --fmap_max 64, 3.18M, against 21.3M at its defaults, 2.1M of it the first layer from its fixed
                  latent of 256; stylegan2 --network_capacity 4, 2.46M, 2.1M of it the mapping network, against
                  5.31M at 16)
  lightweight-gan lucidrains' `lightweight-gan` (made for small data), its recommended small-data settings:
                  --aug-prob 0.25 --aug-types [translation,cutout,color], --greyscale for gray data; it cannot
                  draw 16 x 16 (see peer_scale), so it learns those images enlarged to 32 x 32
  stylegan2       lucidrains' `stylegan2-pytorch` with its augmentation (--aug-prob 0.25); the two peers run from
                  --peer-python, a separate environment (torch==2.14.1 torchvision==0.29.1 and the peer), through
                  their own command lines (flags from their READMEs; _gan_peer.py refuses one the CLI does
                  not take), on the CPU through _gan_peer.py (both packages assert CUDA and call .cuda(); it rewrites
                  that, and fixes lightweight-gan's --fmap_max, in a copy), at their default batch sizes; each
                  checkpoint (--peer-save-every steps; a dozen kept, spread over the minutes) is sampled by the
                  peer's own generator class, its EMA copy once it keeps one (both start averaging at step 20000)
Datasets (columns): shapes at 32 x 32, shapes grayscale at 16 x 16, defects at 32 x 32; --train-images of each
(default 2000, seed 0) to train on and 2000 held-out images (seed 1) as the reference.

Measured per method and dataset, on --samples samples (default 1000) of each seed in domain features trained once
on the held-out images (diffusely.metrics; comparable within this benchmark only): FD and KID, precision, recall,
density and coverage; the median over seeds and the spread (max - min of FD, and its interquartile range), the
share of failed seeds, sampling images per second (batch 100, the CPU, the network alone). A seed fails when
training diverged (a non-finite loss, or non-finite samples), or when it collapsed: recall under 0.1 (its samples
cover under a tenth of the real images' manifold), or FD over 3 x the median of diffusely's seeds on the dataset.
Lucic et al. 2018: the spread over seeds, not the best seed, is the comparison.

Writes OUT/results.json (every seed's row and the curves), OUT/table.md (the medians, spreads and failure
shares), OUT/samples-DATASET.png (16 samples of each method's median seed, a row each) and
OUT/curves-DATASET.png (FD against minutes, a line per seed).

    # 3 datasets x 5 seeds x 4 methods x 30 minutes: about 30 hours on the 2-core CPU
    python benchmarks/vs_gan.py --out bench/vs_gan --peer-python /opt/peers/bin/python --minutes 30
    python benchmarks/vs_gan.py --out /tmp/vs_gan --quick           # minutes: 1 seed, 1 dataset, 1 minute, no peers

Piecewise: every (dataset, method, seed) row is kept under OUT/rows once done, and a rerun into the same --out (with
the same settings: OUT/settings.json; others are refused) reads it back instead of training it again; a row stopped
midway trains again from its start. So the 30 hours can be sat in pieces of a few hours, e.g. one dataset's diffusely
seeds and DCGAN first (`--datasets shapes16 --methods dcgan`), its peers in the next sitting; the last sitting with
every dataset and method prints the whole table. Delete a row's OUT/rows files to train it again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffusely import viz
from diffusely._util import generators, randn
from diffusely.checkpoint import load_run
from diffusely.config import DataConfig, RunConfig, TrainConfig
from diffusely.data import load_dataset, to_tensor
from diffusely.distill.train import distill, student_config
from diffusely.metrics import FeatureStats, fit_domain_features, quality_metrics
from diffusely.nets import UNetConfig
from diffusely.samplers import sample
from diffusely.train import train

DATASETS = {"shapes": ("shapes", 32, 3), "shapes16": ("shapes", 16, 1), "defects": ("defects", 32, 3)}
NETWORK = dict(channels=(32, 64, 64), attention_levels=(2,))
COLUMNS = ["fd", "kid", "precision", "recall", "density", "coverage"]
PEERS = {"lightweight-gan": "lightweight_gan", "stylegan2": "stylegan2_pytorch"}
PEER_MIN_SIZE = {"lightweight-gan": 32}
PEER_SCRIPT = Path(__file__).resolve().parent / "_gan_peer.py"  # runs a peer's CLI, or samples it, on the CPU


class Budget(Exception):
    """The method's minutes are spent."""


# ---------------------------------------------------------------------------------------------- data, metrics


def prepare(name: str, args, out: Path) -> dict:
    """The training images (uint8 N, S, S, C) also as a PNG folder for the peers, and the reference statistics."""
    source, size, channels = DATASETS[name]
    train_set = load_dataset(source, size, channels, seed=0).images[:args.train_images]
    held = load_dataset(source, size, channels, seed=1).images[:2000]
    folder = out / "data" / name
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i, image in enumerate(train_set):
            Image.fromarray(image.squeeze(-1) if channels == 1 else image).save(folder / f"{i:05d}.png")
    extractor = fit_domain_features(held)
    return {"name": name, "images": train_set, "folder": folder, "size": size, "channels": channels,
            "extractor": extractor, "reference": FeatureStats.of(extractor(held), extractor.name)}


def measure(data: dict, images: torch.Tensor) -> dict:
    """The quality row of samples (N, C, S, S) in [-1, 1] and 16 of them to show; NaN everywhere for non-finite
    samples (diverged)."""
    if not torch.isfinite(images).all():
        return {**{c: math.nan for c in COLUMNS}, "diverged": True}
    metrics = quality_metrics(data["reference"], data["extractor"](images.clamp(-1, 1)))
    return {**{c: float(metrics[c]) if metrics.get(c) is not None else math.nan for c in COLUMNS},
            "preview": images[:16]}


def images_per_second(draw, shape: tuple[int, ...], n: int = 100) -> float:
    """Sampling speed: draw(noise) once to warm up, then timed on a batch of n."""
    draw(torch.randn(2, *shape))
    start = time.perf_counter()
    draw(torch.randn(n, *shape))
    return n / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------- diffusely


def draw_diffusion(run, method: str, nfe: int):
    d = run.config.diffusion
    sigmas = run.schedules.get(method, {}).get(str(nfe))
    spacing = (lambda *_: torch.tensor(sigmas, dtype=torch.float64)) if sigmas else None
    with_noise = lambda noise: sample(run.denoiser, noise, method=method, nfe=nfe, sigma_min=d.sigma_min,  # noqa: E731
                                      sigma_max=d.sigma_max, spacing=spacing, generator=generators([0] * len(noise)))
    return lambda noise: torch.inference_mode()(with_noise)(noise)


def samples_of(draw, n: int, shape: tuple[int, ...], batch: int = 250) -> torch.Tensor:
    """n samples, sample i from seed i."""
    out = []
    for first in range(0, n, batch):
        gens = generators(list(range(first, min(n, first + batch))))
        out.append(draw(randn((len(gens), *shape), gens)).cpu())
    return torch.cat(out)


def train_diffusely(data: dict, seed: int, args, run_dir: Path) -> dict:
    """Train the default recipe for args.minutes; FD at each checkpoint for the curve."""
    config = RunConfig(model=UNetConfig(**NETWORK), data=DataConfig(source=str(data["folder"]), image_size=data["size"],
                                                                     channels=data["channels"], flip=True),
                       train=TrainConfig(steps=10**6, seed=seed, checkpoint_every=args.checkpoint_every,
                                         sample_every=10**6))
    start, curve = time.perf_counter(), []

    def checkpoint(step: int) -> None:
        run = load_run(run_dir)
        images = samples_of(draw_diffusion(run, "unipc", 10), args.curve_samples, run.config.sample_shape)
        curve.append(((time.perf_counter() - start) / 60, measure(data, images)["fd"]))
        if time.perf_counter() - start > args.minutes * 60:
            raise Budget

    try:
        train(config, run_dir, progress=False, on_checkpoint=checkpoint)
    except Budget:
        pass
    run = load_run(run_dir)
    rows = {}
    for name, method, nfe in (("diffusely", "heun", 35), ("diffusely-10", "unipc", 10)):
        draw = draw_diffusion(run, method, nfe)
        rows[name] = {**measure(data, samples_of(draw, args.samples, run.config.sample_shape)),
                      "images_per_second": images_per_second(draw, run.config.sample_shape), "curve": curve,
                      "parameters": sum(p.numel() for p in run.denoiser.parameters())}
    return rows


def distill_students(data: dict, teacher: Path, args, out: Path) -> dict:
    rows = {}
    for nfe in (1, 2, 4):
        student, start = out / f"student-{nfe}", time.perf_counter()
        shutil.rmtree(student, ignore_errors=True)  # a sitting stopped midway distils it again
        distill(student_config(teacher, nfe, steps=args.distill_steps), student, progress=False)
        run = load_run(student)
        draw = draw_diffusion(run, "consistency", nfe)
        rows[f"student-{nfe}"] = {**measure(data, samples_of(draw, args.samples, run.config.sample_shape)),
                                  "images_per_second": images_per_second(draw, run.config.sample_shape),
                                  "distill_minutes": (time.perf_counter() - start) / 60}
    return rows


# ---------------------------------------------------------------------------------------------- DCGAN


def dcgan(size: int, channels: int, z: int = 64, width: int = 64) -> tuple[nn.Module, nn.Module]:
    """Generator z (B, z, 1, 1) -> (B, C, size, size) in [-1, 1] and discriminator -> (B,) logits, for size 16 or 32."""
    levels = int(math.log2(size)) - 2  # 4 x 4 up to size
    g, d = [nn.ConvTranspose2d(z, width * 2**levels, 4, 1, 0), nn.BatchNorm2d(width * 2**levels), nn.ReLU()], []
    for i in range(levels, 0, -1):
        g += [nn.ConvTranspose2d(width * 2**i, width * 2 ** (i - 1), 4, 2, 1), nn.BatchNorm2d(width * 2 ** (i - 1)),
              nn.ReLU()]
    g += [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]
    d = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
    for i in range(levels - 1):
        d += [nn.Conv2d(width * 2**i, width * 2 ** (i + 1), 4, 2, 1), nn.BatchNorm2d(width * 2 ** (i + 1)),
              nn.LeakyReLU(0.2)]
    d += [nn.Conv2d(width * 2 ** (levels - 1), 1, 4, 1, 0), nn.Flatten(0)]
    return nn.Sequential(*g), nn.Sequential(*d)


def train_dcgan(data: dict, seed: int, args, z: int = 64) -> dict:
    torch.manual_seed(seed)
    G, D = dcgan(data["size"], data["channels"], z, args.gan_width)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in (G, D))
    real, bce = to_tensor(data["images"]), nn.BCEWithLogitsLoss()
    draw = lambda noise: G(noise.flatten(1)[:, :z, None, None]).detach()  # noqa: E731
    shape, start, curve, step = (z,), time.perf_counter(), [], 0
    while time.perf_counter() - start < args.minutes * 60:
        x = real[torch.randint(len(real), (64,))]
        fake = G(torch.randn(64, z, 1, 1))
        loss_d = bce(D(x), torch.ones(64)) + bce(D(fake.detach()), torch.zeros(64))
        opt_d.zero_grad(), loss_d.backward(), opt_d.step()
        loss_g = bce(D(fake), torch.ones(64))
        opt_g.zero_grad(), loss_g.backward(), opt_g.step()
        step += 1
        if not math.isfinite(loss_d.item() + loss_g.item()):
            return {**{c: math.nan for c in COLUMNS}, "diverged": True, "curve": curve}
        if step % args.checkpoint_every == 0:
            G.eval()
            curve.append(((time.perf_counter() - start) / 60,
                          measure(data, samples_of(draw, args.curve_samples, shape))["fd"]))
            G.train()
    G.eval()
    return {**measure(data, samples_of(draw, args.samples, shape)), "images_per_second": images_per_second(draw, shape),
            "curve": curve, "parameters": sum(p.numel() for p in G.parameters())}


# ---------------------------------------------------------------------------------------------- the peers


def peer_exe(args, tool: str) -> list[str]:
    """The peer's command line run on the CPU: both packages assert CUDA and call .cuda() throughout, so
    _gan_peer.py runs their own CLI from a copy with device placement rewritten (and one bug fixed)."""
    return [str(args.peer_python), str(PEER_SCRIPT), tool]


def peer_scale(tool: str, data: dict) -> int:
    """How many times larger than the data the peer draws: lightweight-gan's discriminator needs 32 x 32 or more (at
    16 it fails on its 16 x 16 layer), so it learns 16 x 16 data from a copy enlarged by nearest neighbours, which
    averaging 2 x 2 pixels gives back exactly, and its samples are averaged down so."""
    return max(1, PEER_MIN_SIZE.get(tool, 0) // data["size"])


def peer_folder(data: dict, scale: int) -> Path:
    """The training images as the peer reads them: the PNG folder, or a copy `scale` times larger, made once."""
    if scale == 1:
        return data["folder"]
    folder = data["folder"].with_name(f"{data['folder'].name}-x{scale}")
    if not folder.is_dir():
        work = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for i, image in enumerate(data["images"].repeat(scale, axis=1).repeat(scale, axis=2)):
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(work / f"{i:05d}.png")
        work.rename(folder)
    return folder


def peer_command(args, tool: str, data: dict, work: Path, seed: int) -> list[str]:
    """The peer's command line: its data, its folders under `work`, its defaults (batch size and accumulation
    included) but for its README's small-data advice (augmentation) and a capacity near the U-Net's. Neither CLI
    takes a latent size (lightweight-gan's is 256, stylegan2's 512)."""
    scale = peer_scale(tool, data)
    common = [*peer_exe(args, tool), "--data", str(peer_folder(data, scale)), "--name", "run",
              "--results_dir", str(work / "results"), "--models_dir", str(work / "models"),
              "--image_size", str(data["size"] * scale), "--seed", str(seed), "--num_train_steps", str(10**7),
              "--save_every", str(args.peer_save_every), "--evaluate_every", str(10**7), "--aug_prob", "0.25"]
    if tool == "lightweight-gan":
        return common + ["--aug_types", "[translation,cutout,color]", "--fmap_max", "64",
                         *(["--greyscale"] if data["channels"] == 1 else [])]
    return common + ["--network_capacity", "4"]


def peer_samples(args, tool: str, data: dict, work: Path, n: int, load_from: int) -> tuple[torch.Tensor, float]:
    """n samples of the peer's checkpoint `load_from` and the images per second of its generator alone, drawn by
    `_gan_peer.py sample` with the peer's own code (its EMA generator once it keeps one; stylegan2 untruncated: its
    default truncation of 0.75 trades away the diversity this benchmark measures)."""
    out = work / f"samples-{load_from}-{n}.npz"
    run = subprocess.run([str(args.peer_python), str(PEER_SCRIPT), "sample", tool, "--work", str(work), "--load-from",
                          str(load_from), "--save-every", str(args.peer_save_every), "--n", str(n), "--out", str(out)],
                         capture_output=True, text=True, timeout=1800)
    if run.returncode:
        raise SystemExit(f"{tool} could not sample checkpoint {load_from} of {work}:\n{run.stderr[-3000:]}")
    with np.load(out) as drawn:
        images, speed = drawn["images"], float(drawn["images_per_second"])
    out.unlink()
    if images.shape[-1] != data["channels"]:  # stylegan2 draws RGB: to gray as PIL does for the data
        images = np.stack([np.asarray(Image.fromarray(im).convert("L"))[..., None] for im in images])
    scale = peer_scale(tool, data)
    if scale > 1:  # back to the data's size: the mean of each scale x scale block, rounded
        count, size, _, c = images.shape
        blocks = images.reshape(count, size // scale, scale, size // scale, scale, c).astype(np.float64)
        images = np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)
    return to_tensor(images), speed


def thin(saved: list[Path], start: float, minutes: float, keep: int = 12) -> None:
    """Delete the peer's checkpoints but the newest and the first of each of `keep` equal spans of the budget: the
    curve's points, at any step rate, without filling the disk."""
    spans = {}
    for path in saved[:-1]:
        spans.setdefault(int((path.stat().st_mtime - start) / (minutes * 60) * keep), []).append(path)
    for paths in spans.values():
        for path in paths[1:]:
            path.unlink(missing_ok=True)


def checkpoint_number(path: Path) -> int:
    """N of the peer's model_N.pt: its steps // save_every when saved."""
    return int(path.stem.split("_")[1])


def checkpoints(work: Path) -> list[Path]:
    return sorted((work / "models" / "run").glob("model_*.pt"), key=checkpoint_number)


def run_peer(args, tool: str, data: dict, seed: int, work: Path) -> tuple[float, bool]:
    """The peer's training for args.minutes, its checkpoints thinned as it goes; (start time, stopped by the clock).
    The peer and its data loaders are one process group, killed together whatever happens here."""
    start, config = time.time(), work / "models" / "run" / ".config.json"
    with open(work / "peer.log", "w") as log:
        peer = subprocess.Popen(peer_command(args, tool, data, work, seed), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while peer.poll() is None and time.time() - start < args.minutes * 60:
                time.sleep(max(0.0, min(5.0, start + args.minutes * 60 - time.time())))
                thin(checkpoints(work), start, args.minutes)
                if config.exists():  # a good copy: the peer rewrites it in place at every save
                    try:
                        json.loads(config.read_text())
                    except ValueError:
                        continue
                    shutil.copy(config, work / "config.json")
            stopped = peer.poll() is None
        finally:
            if peer.poll() is None:
                os.killpg(peer.pid, signal.SIGKILL)
            peer.wait()
    if (work / "config.json").exists():
        shutil.copy(work / "config.json", config)  # the kill may have cut the peer's own copy short
    for path in checkpoints(work):  # ... or the checkpoint it was writing (torch's zip format ends in its directory)
        if not zipfile.is_zipfile(path):
            path.unlink()
    thin(checkpoints(work), start, args.minutes)
    return start, stopped


def train_peer(args, tool: str, data: dict, seed: int, work: Path) -> dict:
    """Run the peer for args.minutes (then stop it), measure its last checkpoint and, for the curve, the kept ones.
    A peer that stops by itself on a NaN (both retry from their last checkpoint, then give up) diverged; one that
    stops for any other reason is an error here, not a failed seed."""
    work.mkdir(parents=True, exist_ok=True)
    start, stopped = run_peer(args, tool, data, seed, work)
    saved, log = checkpoints(work), (work / "peer.log").read_text(errors="replace")
    if not stopped and "NaN" not in log:
        raise SystemExit(f"{tool} stopped by itself (see {work / 'peer.log'}):\n{log[-3000:]}")
    if not saved or not stopped:
        return {**{c: math.nan for c in COLUMNS}, "diverged": True, "curve": [],
                "note": "no checkpoint written" if stopped else "NaN: " + log[-500:]}
    curve = [((p.stat().st_mtime - start) / 60,
              measure(data, peer_samples(args, tool, data, work, args.curve_samples, checkpoint_number(p))[0])["fd"])
             for p in saved]
    images, speed = peer_samples(args, tool, data, work, args.samples, checkpoint_number(saved[-1]))
    shutil.rmtree(work / "models")  # scored: the checkpoints are 10s of MB each
    return {**measure(data, images), "images_per_second": speed, "curve": curve,
            "steps": checkpoint_number(saved[-1]) * args.peer_save_every + 1}


# ---------------------------------------------------------------------------------------------- the report


def failed(row: dict, diffusely_median_fd: float) -> bool:
    """Diverged (non-finite), collapsed (recall under 0.1), or FD over 3 x diffusely's median on the dataset."""
    fd = row.get("fd", math.nan)
    return (row.get("diverged", False) or not math.isfinite(fd) or row.get("recall", 0) < 0.1
            or fd > 3 * diffusely_median_fd)


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: each column's median over seeds, FD's spread (max - min) and IQR, the share of failed seeds."""
    base = float(np.nanmedian([r["fd"] for r in rows.get("diffusely", [])] or [math.nan]))
    out = {}
    for method, seeds in rows.items():
        fds = np.array([r["fd"] for r in seeds], dtype=float)
        out[method] = {**{c: float(np.nanmedian([r[c] for r in seeds])) for c in COLUMNS + ["images_per_second"]
                          if all(c in r for r in seeds)},
                       "fd_spread": float(np.nanmax(fds) - np.nanmin(fds)) if np.isfinite(fds).any() else math.nan,
                       "fd_iqr": float(np.subtract(*np.nanpercentile(fds, [75, 25]))) if np.isfinite(fds).any()
                       else math.nan, "failed": float(np.mean([failed(r, base) for r in seeds])), "seeds": len(seeds)}
    return out


def table(dataset: str, summary: dict[str, dict]) -> str:
    head = ["method", *COLUMNS, "FD spread", "FD IQR", "failed", "images/s"]
    lines = [f"### {dataset}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method, s in summary.items():
        cells = [s.get(c, math.nan) for c in COLUMNS] + [s["fd_spread"], s["fd_iqr"], s["failed"],
                                                          s.get("images_per_second", math.nan)]
        lines.append(f"| {method} | " + " | ".join(f"{v:.4g}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: dict[str, list[dict]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for color, (method, seeds) in zip(plt.cm.tab10.colors, rows.items()):
        for i, row in enumerate(seeds):
            if row.get("curve"):
                minutes, fd = zip(*row["curve"])
                ax.plot(minutes, fd, color=color, alpha=0.7, label=method if i == 0 else None)
    ax.set(xlabel="minutes of training", ylabel="FD (domain features)", yscale="log")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def save_previews(rows: dict[str, list[dict]], path: Path) -> None:
    """A grid row of 16 samples per method, from its median-FD seed; the previews then leave the rows (not JSON)."""
    previews = []
    for seeds in rows.values():
        ranked = sorted((r for r in seeds if "preview" in r), key=lambda r: (not math.isfinite(r["fd"]), r["fd"]))
        if ranked:
            previews.append(ranked[len(ranked) // 2]["preview"])
        for r in seeds:
            r.pop("preview", None)
    if previews:
        viz.save_grid(torch.cat(previews).clamp(-1, 1), path, nrow=16)


def kept(path: Path, make) -> dict[str, dict]:
    """{method: row} as make() gives it, made once: an earlier sitting's rows are read back from path.json (their
    previews from path.npz), so a sitting stopped midway goes on from the first row it had not finished."""
    if path.with_suffix(".json").exists():
        rows = json.loads(path.with_suffix(".json").read_text())
        if path.with_suffix(".npz").exists():
            with np.load(path.with_suffix(".npz")) as previews:
                for method in previews.files:
                    rows[method]["preview"] = torch.from_numpy(previews[method])
        return rows
    rows = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    previews = {method: row.pop("preview").numpy() for method, row in rows.items() if "preview" in row}
    if previews:
        np.savez(path.with_suffix(".tmp.npz"), **previews)
        path.with_suffix(".tmp.npz").replace(path.with_suffix(".npz"))
    path.with_suffix(".tmp").write_text(json.dumps(rows))  # written last: the row is done when this is there
    path.with_suffix(".tmp").replace(path.with_suffix(".json"))
    for method, preview in previews.items():
        rows[method]["preview"] = torch.from_numpy(preview)
    return rows


def check_settings(args) -> None:
    """One --out holds rows made under one set of settings (OUT/settings.json); others are refused."""
    keys = ("minutes", "train_images", "samples", "curve_samples", "checkpoint_every", "distill_steps", "gan_width",
            "peer_save_every")
    now, path = {k: getattr(args, k) for k in keys}, args.out / "settings.json"
    then = json.loads(path.read_text()) if path.exists() else now
    differ = [f"--{k.replace('_', '-')} {then[k]} (now {now[k]})" for k in keys if then.get(k) != now[k]]
    if differ:
        raise SystemExit(f"{args.out} holds rows made with {', '.join(differ)}: give those, or another --out")
    path.write_text(json.dumps(now))


def run_dataset(name: str, args, out: Path) -> tuple[dict, dict]:
    """Every method's seeds on one dataset, the students of diffusely's median seed, the median seeds' samples.
    Each (method, seed) is kept under OUT/rows/NAME/ once done (see `kept`)."""
    data = prepare(name, args, out)
    rows: dict[str, list[dict]] = {}

    def fresh(work: Path, make):  # a row not kept: its work folder from scratch (a wall clock cannot resume)
        return lambda: (shutil.rmtree(work, ignore_errors=True), make(work))[1]

    for seed in range(args.seeds):
        run_dir = out / "runs" / name / f"diffusely-{seed}"
        made = kept(out / "rows" / name / f"diffusely-{seed}",
                    fresh(run_dir, lambda work: train_diffusely(data, seed, args, work)))
        for method, row in made.items():
            rows.setdefault(method, []).append({**row, "seed": seed})
        if "dcgan" in args.methods:
            made = kept(out / "rows" / name / f"dcgan-{seed}", lambda: {"dcgan": train_dcgan(data, seed, args)})
            rows.setdefault("dcgan", []).append({**made["dcgan"], "seed": seed})
        for tool in PEERS:
            if tool in args.methods and args.peer_python:
                work = out / "runs" / name / f"{tool}-{seed}"
                made = kept(out / "rows" / name / f"{tool}-{seed}",
                            fresh(work, lambda w, tool=tool: {tool: train_peer(args, tool, data, seed, w)}))
                rows.setdefault(tool, []).append({**made[tool], "seed": seed})
    fds = [r["fd"] for r in rows["diffusely"]]
    median_seed = rows["diffusely"][int(np.argsort(fds)[len(fds) // 2])]["seed"]
    students = kept(out / "rows" / name / f"students-{median_seed}-of-{args.seeds}",
                    lambda: distill_students(data, out / "runs" / name / f"diffusely-{median_seed}", args,
                                             out / "runs" / name))
    for method, row in students.items():
        rows[method] = [{**row, "seed": median_seed}]
    summary = summarise(rows)
    plot_curves(rows, out / f"curves-{name}.png")
    save_previews(rows, out / f"samples-{name}.png")
    return rows, summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--methods", default="dcgan,lightweight-gan,stylegan2", help="the GANs to run beside diffusely")
    p.add_argument("--peer-python", help="python of the peers' environment (lightweight-gan, stylegan2-pytorch)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget of each seed")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--curve-samples", type=int, default=250)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--distill-steps", type=int, default=2000)
    p.add_argument("--peer-save-every", type=int, default=5, help="the peers' --save_every in their steps (a step is "
                   "seconds on this CPU); the checkpoints but a dozen spread over the minutes are deleted as it goes")
    p.add_argument("--gan-width", type=int, default=48, help="DCGAN's base width (48: 1.9M generator parameters at "
                   "32 px, against the U-Net's 1.7M)")
    p.add_argument("--quick", action="store_true", help="1 seed, shapes16, 1 minute, DCGAN only: the script works")
    args = p.parse_args()
    if args.quick:
        args.datasets, args.methods, args.seeds, args.minutes, args.peer_python = "shapes16", "dcgan", 1, 1.0, None
        args.samples, args.curve_samples, args.checkpoint_every, args.distill_steps = 200, 100, 100, 50
    args.out.mkdir(parents=True, exist_ok=True)
    check_settings(args)
    results, tables = {}, []
    for name in args.datasets.split(","):
        rows, summary = run_dataset(name, args, args.out)
        results[name] = {"rows": rows, "summary": summary}
        tables.append(table(name, summary))
        (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                           "results": results}, indent=1))
        (args.out / "table.md").write_text("\n".join(tables))
        print(tables[-1], flush=True)


if __name__ == "__main__":
    main()
