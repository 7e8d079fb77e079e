"""Evaluating a trained run: sample (or read samples), extract features, compute the metrics, write eval.json.

    RUN_DIR/eval.json                              the last evaluation's settings and numbers, the copy check too
    RUN_DIR/copies.png                             the samples closest to being copies, over their training images
    RUN_DIR/eval/domain_features.safetensors       the domain feature network, trained once, then reused
    RUN_DIR/eval/reference-<features>.npz          the reference's statistics and features (pass it as
                                                   --reference to skip the reference images next time)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._files import atomic_write, atomic_write_text
from ..checkpoint import load_run
from ..config import RunConfig
from ..data import BUILTIN, DataError, Dataset, load_dataset, to_grayscale, to_tensor
from ..data.folder import find_images
from ..metrics import (DomainFeatures, FeatureExtractor, FeatureStats, InceptionFeatures, fit_domain_features,
                       load_domain_features, load_stats, quality_metrics, save_domain_features, save_stats)
from ..metrics.copies import copy_report, save_copies_figure
from ..metrics.features import as_uint8
from ..samplers import nfe as nfe_of
from ..train.posthoc import load_posthoc_run
from .generate import draw, recipe

EVAL_FILE = "eval.json"
EVAL_DIR = "eval"
COPIES_FIGURE = "copies.png"
HELD_OUT = 1000  # held-out images of a built-in source the copy check measures (a new seed: never trained on)
DOMAIN_FILE = "domain_features.safetensors"
FEATURES = ("domain", "inception")
MIN_COUNT = 6  # density and coverage measure each point's 5th nearest neighbour among the others (metrics.summary)
COMPARABLE = {
    "domain": "domain features: comparable only with evaluations that used the same features name "
              "(the same domain network, trained on the same reference), never with published FIDs",
    "inception": "FID Inception features (pytorch-fid weights; clean-fid resizing): comparable with FIDs computed "
                 "the same way on the same reference and number of samples",
}


def load_samples(folder: str | Path, size: int, channels: int, count: Optional[int] = None) -> np.ndarray:
    """Images from a folder as `diffusely sample` writes them (PNG or other images, or .npy arrays), sorted
    by name, the first `count` (default all): (N, size, size, channels) uint8. Nothing is resized:
    an image of another size or channel count is an error, since it cannot be this run's sample."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder of samples: {folder}")
    paths = sorted(find_images(folder) + [p for p in folder.glob("*.npy") if not p.name.startswith(".")])
    if not paths:
        raise DataError(f"no samples in {folder}: expected PNG/JPEG/BMP/WebP images or .npy files, "
                        f"as `diffusely sample RUN_DIR --out {folder}` writes them")
    return np.stack([_read_sample(p, size, channels) for p in paths[:count]])


def _read_sample(path: Path, size: int, channels: int) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            image = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                image = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))
    except (OSError, ValueError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read the sample {path}: {e}") from None
    image = image[..., None] if image.ndim == 2 else image
    if image.dtype != np.uint8 or image.shape != (size, size, channels):
        raise DataError(f"the sample {path} is {'x'.join(map(str, image.shape))} {image.dtype}, but this run makes "
                        f"{size}x{size}x{channels} uint8 images: are these samples from another run?")
    return image


def load_reference(source: str, size: int, channels: int, *, classes: bool = False, count: Optional[int] = None,
                   seed: int = 0) -> Dataset | FeatureStats:
    """Statistics from an .npz file, or images (a folder or built-in name) loaded as training loads them:
    resized, center-cropped and converted to the run's size and channels. `count` keeps a random subset."""
    if str(source).endswith(".npz"):
        return load_stats(source)
    data = load_dataset(source, size, channels=channels, classes=classes)
    if count is not None and count < len(data):
        keep = np.sort(np.random.default_rng(seed).choice(len(data), count, replace=False))
        data = Dataset(data.images[keep], None if data.labels is None else data.labels[keep], data.class_names,
                       None, None, data.source)
    if len(data) < MIN_COUNT:  # before domain features are trained on them
        raise DataError(f"the reference {source} holds {len(data)} images, but the metrics need at least {MIN_COUNT}: "
                        "give more reference images")
    return data


def _reference_identity(source: str, data: Dataset) -> dict:
    where = str(Path(source).resolve()) if Path(source).exists() else str(source)
    return {"source": where, "count": len(data), "image_size": data.images.shape[1], "channels": data.images.shape[-1]}


def domain_features(path: Path, reference: Dataset | FeatureStats, identity: dict, *, steps: Optional[int] = None,
                    device="cpu", progress: bool = True) -> DomainFeatures:
    """The domain network at `path` if there is one (it must have been trained on this reference),
    else one trained now on the reference images (a classifier where they have labels) and saved there."""
    if path.is_file():
        extractor = load_domain_features(path, device)
        seen = extractor.info.get("reference", {})
        if isinstance(reference, Dataset) and seen != identity:
            raise ValueError(f"{path} was trained on another reference ({seen.get('source')}, {seen.get('count')} "
                             f"images) than {identity['source']} ({identity['count']}); delete it to train new "
                             "domain features (their numbers will not compare with earlier ones), or pass "
                             "--domain-features FILE")
        return extractor
    if isinstance(reference, FeatureStats):
        raise ValueError(f"no domain features at {path}, and they are trained on reference images, not statistics: "
                         "pass the reference images (a folder or built-in name) or an existing --domain-features FILE")
    # a classifier needs two classes at least; with fewer, the images go unlabelled to the contrastive encoder
    classes = len(reference.class_names or []) if reference.labels is not None else 0
    labels = reference.labels if classes >= 2 else None
    extractor = fit_domain_features(reference.images, labels, classes, steps=steps, reference=identity, device=device,
                                    progress=progress)
    save_domain_features(path, extractor)
    return extractor


def training_images(config: RunConfig) -> np.ndarray:
    """The run's training images (N, S, S, C) uint8, loaded as training loads them (train.data.prepare_data): the
    same source, size, channels, seed and shapes per image. A latent run's too: its images, not their latents."""
    d = config.data
    return load_dataset(d.source, d.image_size, d.channels, d.classes, seed=config.train.seed,
                        max_shapes=d.max_shapes, outside=d.outside).images


def held_out_images(config: RunConfig, folder: Optional[str] = None) -> tuple[Optional[np.ndarray], str]:
    """Images of the run's kind it never saw, (N, S, S, C) uint8, and where they came from: `folder` when given,
    else for a built-in source its first HELD_OUT images of the next seed; a folder of training images has
    none unless the user gives one (any image of it may be in the training set)."""
    d = config.data
    if folder:
        return load_dataset(folder, d.image_size, d.channels).images, str(folder)
    if d.source in BUILTIN:  # drawn at the held-out count alone: the whole set (10,000 shapes) takes seconds
        seed = config.train.seed + 1
        images = BUILTIN[d.source](d.image_size, seed, count=HELD_OUT,
                                   **({"max_shapes": d.max_shapes} if d.max_shapes != 1 else {})).images
        return (images if d.channels == 3 else to_grayscale(images)), f"{d.source}, {HELD_OUT} images of seed {seed}"
    return None, "none: pass --held-out FOLDER, images of the same kind the run never saw, to compare with"


def copy_check(run_dir: Path, config: RunConfig, fake: np.ndarray, fake_features: Optional[np.ndarray],
               extractor: Optional[FeatureExtractor], held_out: tuple[Optional[np.ndarray], str], *,
               seed: int = 0, figure: str = COPIES_FIGURE) -> dict:
    """Are the samples (N, S, S, C) uint8 copies of the run's training images? metrics.copies.copy_report in
    pixels, and in the extractor's features where it and the samples' are given; held_out: held_out_images'
    answer; the picture (copies.png) written in run_dir as `figure`. Training images that cannot be read (a folder
    moved since) skip the check, saying so."""
    try:
        train = training_images(config)
    except DataError as e:
        return {"skipped": f"the training images could not be read, so the copy check was skipped: {e}"}
    held, held_source = held_out
    features = fake_features is not None and extractor is not None
    report = copy_report(to_tensor(fake), to_tensor(train), None if held is None else to_tensor(held),
                         sample_features=fake_features, train_features=extractor(train) if features else None,
                         held_out_features=extractor(held) if features and held is not None else None,
                         flips=config.data.flip, seed=seed)
    report.update(samples=len(fake), train_count=len(train), held_out=held_source,
                  feature_space=extractor.name if features else None)
    if fake.ndim == 4:  # a picture of 2-D images only
        report["figure"] = str(save_copies_figure(run_dir / figure, to_tensor(fake), to_tensor(train), report))
    return report


def check_counts(count: Optional[int] = None, reference_count: Optional[int] = None) -> None:
    """Refuse, before any work, fewer samples or reference images than the metrics need (MIN_COUNT): a ValueError
    naming the flag (-n: `count`; --reference-count: `reference_count`)."""
    for value, flag in ((count, "-n (count)"), (reference_count, "--reference-count (reference_count)")):
        if value is not None and value < MIN_COUNT:  # 0 is not "the default": it would measure nothing
            raise ValueError(f"{flag} must be >= {MIN_COUNT}: density and coverage compare each point with its 5 "
                             f"nearest neighbours among the others, got {value}")


def enough_samples(fake: np.ndarray, folder) -> np.ndarray:
    """The samples read from `folder`, (N, ...), refused (DataError) where they are fewer than the metrics need."""
    if len(fake) < MIN_COUNT:
        raise DataError(f"{folder} holds {len(fake)} samples, but the metrics need at least {MIN_COUNT}: sample more "
                        f"into it, e.g. diffusely sample RUN_DIR -n {MIN_COUNT} --out {folder}")
    return fake


def _sample_images(run, count: int, *, sampler: Optional[str], steps: Optional[int], nfe: Optional[int], seed: int,
                   batch_size: int, progress: bool, options: dict) -> tuple[np.ndarray, dict]:
    """`count` samples as uint8 (N, S, S, C), and how they were drawn: the sampler (ours, and the name as given,
    "DPM++ 2M Karras"), steps, NFE, schedule, seed and options (the name's own with those given)."""
    plan = recipe(run, sampler=sampler, steps=steps, nfe=nfe, **options)  # steps None: a sampler that picks its own
    batches = draw(run, plan, count, seed=seed, batch_size=batch_size, progress=progress)
    images = np.concatenate([as_uint8(b) for b in batches])
    schedule = "optimised (schedules.json)" if plan.optimised else plan.spacing or "default"
    info = {"source": "generated", "sampler": plan.sampler, "sampler_given": plan.sampler.given, "steps": plan.steps,
            "nfe": nfe_of(plan.sampler, plan.steps) if plan.steps is not None else None, "schedule": schedule,
            "seed": seed, "options": plan.options}
    return images, info


def evaluate_run(run_dir: str | Path, reference: str, *, count: Optional[int] = None, samples: Optional[str] = None,
                 features: str = "domain", sampler: Optional[str] = None, steps: Optional[int] = None,
                 nfe: Optional[int] = None, seed: int = 0,
                 batch_size: int = 64, inception_weights: Optional[str] = None, domain_file: Optional[str] = None,
                 domain_steps: Optional[int] = None, reference_count: Optional[int] = None,
                 held_out: Optional[str] = None, ema_length: Optional[float] = None, device="cpu",
                 progress: bool = True, **options) -> dict:
    """Measure a run's samples against `reference` and write RUN_DIR/eval.json; returns what it wrote.

    count: samples to draw (default 1000), or to read from the `samples` folder (default all).
    sampler, steps or nfe (a budget of denoiser evaluations), options: as for `generate` (the run's by default).
    features: "domain" (a network trained on the reference, kept in RUN_DIR/eval/) or "inception"
    (FID's Inception-v3, weights from `inception_weights` or $DIFFUSELY_INCEPTION_WEIGHTS).
    The copy check ("copies", copy_check) measures the samples against the run's training images, and
    `held_out` (a folder; a built-in source brings its own) against them as the scale of a fresh image.
    ema_length: sample with the EMA of that sigma_rel reconstructed from the run's snapshots (train/posthoc.py).
    """
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; choose one of: {', '.join(FEATURES)}")
    check_counts(count, reference_count)
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run = load_run(run_dir, device) if ema_length is None else load_posthoc_run(run_dir, ema_length, device)
    cfg = run.config
    size, channels = cfg.data.image_size, cfg.data.channels  # the images', also in a latent run
    # everything that can fail fast (files, sizes, weights) before the slow part, sampling
    fake = enough_samples(load_samples(samples, size, channels, count), samples) if samples else None
    held = held_out_images(cfg, held_out)
    ref = load_reference(reference, size, channels, classes=cfg.data.classes, count=reference_count, seed=seed)
    identity = _reference_identity(reference, ref) if isinstance(ref, Dataset) else {"source": str(reference)}
    extractor: FeatureExtractor = (
        InceptionFeatures(inception_weights, device, batch_size) if features == "inception" else
        domain_features(Path(domain_file) if domain_file else run_dir / EVAL_DIR / DOMAIN_FILE, ref, identity,
                        steps=domain_steps, device=device, progress=progress))
    ref_stats = _reference_stats(ref, extractor, progress)

    if fake is None:
        fake, sample_info = _sample_images(run, 1000 if count is None else count, sampler=sampler, steps=steps, nfe=nfe,
                                           seed=seed, batch_size=batch_size, progress=progress, options=options)
    else:
        sample_info = {"source": str(samples)}
    fake_features = extractor(fake, progress=progress)
    metrics = quality_metrics(ref_stats, fake_features, seed=seed)
    # domain features are a small network's, cheap on the whole training set; Inception's are not on a CPU
    copies = copy_check(run_dir, cfg, fake, fake_features if features == "domain" else None, extractor, held, seed=seed,
                        figure=COPIES_FIGURE if ema_length is None else f"copies-ema{ema_length:g}.png")

    report = {
        "run_dir": str(run_dir), "step": run.step,
        "features": extractor.name, "comparable": COMPARABLE[features],
        "reference": {**identity, "count": len(ref_stats.features) if ref_stats.features is not None else None},
        "samples": {**sample_info, "count": len(fake), **({"ema_length": ema_length} if ema_length else {})},
        "metrics": metrics, "copies": copies,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if isinstance(ref, Dataset):
        report["reference_stats"] = str(run_dir / EVAL_DIR / f"reference-{extractor.name}.npz")
        save_stats(report["reference_stats"], ref_stats)
    atomic_write_text(run_dir / EVAL_FILE, json.dumps(report, indent=2) + "\n")
    return report


def evaluate_ema_lengths(run_dir: str | Path, reference: str, lengths: list[float], **options) -> dict:
    """evaluate_run with the post-hoc EMA of each length (sigma_rel) in turn, the same samples' noise and the domain
    features trained once; eval.json then holds the report of the length of lowest FD, the FD of each length under
    "ema_sweep". Each length's copy-check picture is RUN_DIR/copies-ema<length>.png, the best one's also copies.png."""
    reports = {length: evaluate_run(run_dir, reference, ema_length=length, **options) for length in lengths}
    fd = {f"{length:g}": r["metrics"]["fd"] for length, r in reports.items()}
    best = min(reports, key=lambda length: reports[length]["metrics"]["fd"])
    report = {**reports[best], "ema_sweep": {"fd": fd, "best": best}}
    if "figure" in report["copies"]:
        figure = Path(report["copies"]["figure"])
        atomic_write(Path(run_dir) / COPIES_FIGURE, lambda tmp: shutil.copyfile(figure, tmp))
        report["copies"] = {**report["copies"], "figure": str(Path(run_dir) / COPIES_FIGURE)}
    atomic_write_text(Path(run_dir) / EVAL_FILE, json.dumps(report, indent=2) + "\n")
    return report


def _reference_stats(ref: Dataset | FeatureStats, extractor: FeatureExtractor, progress: bool) -> FeatureStats:
    if isinstance(ref, Dataset):
        return FeatureStats.of(extractor(ref.images, progress=progress), extractor.name)
    if ref.extractor is not None and ref.extractor != extractor.name:
        raise ValueError(f"the reference statistics were made with {ref.extractor} features, not {extractor.name}; "
                         "features from different networks do not compare")
    if ref.dims != extractor.dims:
        raise ValueError(f"the reference statistics are {ref.dims}-d, but {extractor.name} features are "
                         f"{extractor.dims}-d: were they made with another network?")
    return ref
