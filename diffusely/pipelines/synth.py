"""Synthetic detection datasets from a layout-conditioned run: draw layouts, generate, write YOLO (and COCO).

    synthesize(run, "datasets/synth", n=1000, balance=True)   # layouts drawn by diffusely.layout.model

Image i of a dataset depends only on (seed, i): its layout is drawn from a generator seeded (seed, i)
and its noise from seed + i. So a stopped job resumes by making exactly the images it had not finished,
and two jobs with the same settings make the same dataset.

No copies (on by default): an image that is a near-copy of a training image (metrics.copies, Carlini et al.'s
ratio test against the run's training images) is drawn again, for the same layout, with the noise of seed
+ i + n, then seed + i + 2n, ...: the seeds after the dataset's own n, each image its own, so a redraw depends
on (seed, n, i) alone and never on which other images were copies, and a resumed job draws the same. synth.json
records each replaced image (its copied draws and the seed that was kept) before the image is written.

Each finished image is written as its label file and then its PNG, each atomically; an image counts as
done when its PNG exists, so a job killed at any moment leaves only whole images with their labels.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .. import viz
from .._files import LOCK, atomic_write, atomic_write_text, read_json, run_lock
from ..checkpoint import LoadedRun, RunError
from ..data import DataError, to_tensor, to_uint8
from ..data.detection import coco_dict, data_yaml_text, yolo_label_text
from ..layout import box_direction, has_lines
from ..layout.model import LayoutModel, read_layouts
from ..metrics.copies import CopyDetector
from ..nets.fast import sampling_precision
from .evaluate import training_images
from .generate import generate

MANIFEST = "synth.json"
MAX_DRAWS = 10  # draws of one image (its own noise and 9 redraws) before a job that keeps copying gives up


def is_val(i: int, val_fraction: float) -> bool:
    """Whether image i goes to the validation split: a share val_fraction of the images, spread evenly
    (for 0.1, images 4, 14, 24, ...)."""
    return math.floor((i + 1) * val_fraction + 0.5) > math.floor(i * val_fraction + 0.5)


def _name(i: int) -> str:
    return f"{i:06d}"


def synthesize(run: LoadedRun, out, n: int, *, classes: Optional[Sequence[str]] = None, balance: bool = False,
               layouts_file=None, seed: int = 0, val_fraction: float = 0.1, coco: bool = False, resume: bool = False,
               batch_size: int = 16, guidance: Optional[float] = None, sampler: Optional[str] = None,
               steps: Optional[int] = None, nfe: Optional[int] = None, no_copies: bool = True, progress: bool = True,
               options: Optional[dict] = None) -> dict:
    """Write an Ultralytics YOLO dataset of n generated images into `out`: images/{train,val}/*.png,
    labels/{train,val}/*.txt, data.yaml, contact_sheet.png, synth.json (the settings, and the images drawn again
    as near-copies of training images: no_copies, see the module docstring), and with `coco`
    annotations/instances_{train,val}.json. Returns counts of what was made. `out` is locked for the whole job,
    so a second job into it is refused (naming this one's PID) instead of mixing its images with these."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if n < 1:
        raise ValueError(f"the number of images must be >= 1, got {n}")
    layouts = draw_layouts(run, n, classes=classes, balance=balance, layouts_file=layouts_file, seed=seed)
    splits = ["val" if is_val(i, val_fraction) else "train" for i in range(n)]
    out, names = Path(out), list(run.config.data.class_names)
    make = lambda todo, shown=progress: generate(  # noqa: E731
        run, len(todo), indices=todo, layouts=layouts, seed=seed, batch_size=batch_size, guidance=guidance,
        sampler=sampler, steps=steps, nfe=nfe, progress=shown, **(options or {}))
    make([0])  # generate() checks the sampler, steps, guidance and layouts now (it samples when iterated): a bad
    # request fails before the lock makes the folder, leaving nothing behind
    detector = copy_detector(run) if no_copies else None
    with run_lock(out, f"synth --out {out}"):
        todo = [i for i in range(n) if not _image_path(out, splits, i).is_file()]
        settings = {"run": str(Path(run.run_dir).resolve()) if run.run_dir else None, "run_step": run.step, "n": n,
                    "seed": seed, "classes": list(classes or []), "balance": balance, "val_fraction": val_fraction,
                    "layouts_sha256": hashlib.sha256(Path(layouts_file).read_bytes()).hexdigest() if layouts_file else None,
                    "guidance": guidance, "sampler": sampler, "steps": steps, "nfe": nfe, "options": options or {},
                    "precision": sampling_precision(run.denoiser.net), "no_copies": _copy_settings(detector)}
        _check_out(out, settings, resume)
        _prepare_out(out, names)
        if todo:
            redraw = lambda indices: make(indices, False)  # noqa: E731
            drawn = _without_copies(make(todo), todo, detector, redraw, n, seed)
            _write_images(out, drawn, layouts, splits, run.config.data.image_size)
        if detector is not None:
            _record_copies(out, [])  # the count, also where no image was a copy
        if not any(s == "val" for s in splits):
            warnings.warn(f"{n} images at val_fraction {val_fraction} put none in images/val, which YOLO training "
                          "needs; make more images or raise --val-fraction", UserWarning, stacklevel=2)
        _contact_sheet(out, layouts, splits, names)
        if coco:
            write_coco(out, layouts, splits, names, run.config.data.image_size)
    return {"images": n, "made": len(todo), "train": splits.count("train"), "val": splits.count("val"),
            "boxes": sum(len(layout) for layout in layouts), "replaced": len(job_settings(out).get("copies", [])),
            "per_class": {name: sum(b[0] == k for layout in layouts for b in layout) for k, name in enumerate(names)}}


def copy_detector(run: LoadedRun) -> CopyDetector:
    """The copy check of a run's images: its training images (as it loaded them to train) held by a CopyDetector,
    mirrored too where it trained with flips."""
    try:
        train = training_images(run.config)
    except DataError as e:
        raise DataError(f"{e} (the copy check, on by default, compares each image with the run's training images: "
                        "make them readable where the run found them, or pass --allow-copies)") from None
    return CopyDetector.fit(to_tensor(train), flips=run.config.data.flip)


def _copy_settings(detector: Optional[CopyDetector]):
    """What decides which images are drawn again (recorded, so a resume must check the same way): False when off."""
    if detector is None:
        return False
    return {"threshold": round(detector.threshold, 6), "k": detector.k, "flips": detector.flips,
            "train_images": len(detector.train)}


def _without_copies(made, todo: list[int], detector: Optional[CopyDetector], redraw, n: int, seed: int):
    """Batches of `made` (images todo, in order) as (indices, (B, H, W, C) uint8 images, records): with a
    detector, each near-copy replaced by the first of its redraws (noise seed + i + d n, d = 1, 2, ...) that is
    not one, and a record per replaced image (its copied draws and the kept seed)."""
    done = 0
    for batch in made:
        indices, images = todo[done:done + len(batch)], to_uint8(batch)
        done += len(batch)
        records = _replace_copies(images, indices, detector, redraw, n, seed) if detector is not None else []
        yield indices, images, records


def _replace_copies(images: np.ndarray, indices: list[int], detector: CopyDetector, redraw, n: int,
                    seed: int) -> list[dict]:
    """Replace, in place, each near-copy among `images` (of images `indices`) by a redraw that is not one."""
    records: dict[int, dict] = {}
    pending, check = list(range(len(images))), detector.check(to_tensor(images))
    for draw in range(1, MAX_DRAWS + 1):
        copied = [(b, k) for k, b in enumerate(pending) if check.near_copy[k]]
        for b, k in copied:
            records.setdefault(b, {"image": indices[b], "copies": []})["copies"].append(
                {"noise_seed": seed + indices[b] + (draw - 1) * n, "ratio": round(float(check.ratio[k]), 4),
                 "train_image": int(check.index[k]), "mirrored": bool(check.flipped[k])})
        pending = [b for b, _ in copied]
        if not pending:
            break
        if draw == MAX_DRAWS:
            i = indices[pending[0]]
            raise RunError(f"image {i} was a near-copy of a training image in all {MAX_DRAWS} draws (noise seeds "
                           f"{seed + i}, {seed + i + n}, ...): this run copies its training images; train it on "
                           "more images or for fewer steps, or pass --allow-copies to keep copies")
        fresh = to_uint8(torch.cat(list(redraw([indices[b] + draw * n for b in pending]))))
        for b, image in zip(pending, fresh):
            images[b] = image
            records[b]["noise_seed"] = seed + indices[b] + draw * n
        check = detector.check(to_tensor(fresh))
    return [records[b] for b in sorted(records)]


def draw_layouts(run: LoadedRun, n: int, *, classes: Optional[Sequence[str]] = None, balance: bool = False,
                 layouts_file=None, seed: int = 0) -> list[list[tuple]]:
    """The layouts of images 0..n-1: read from `layouts_file` (cycled), or drawn from the run's training layouts,
    layout i from a generator seeded (seed, i); boxes (class, x0, y0, x1, y1, direction) in pixels."""
    config = run.config
    if "layout" not in config.conditions:
        raise RunError("this run was trained without layouts; train it with --layout to synthesise labelled data")
    names, size = list(config.data.class_names), config.data.image_size
    wanted = None
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ValueError(f"unknown class(es) {', '.join(unknown)}; this run's classes: {', '.join(names)}")
        wanted = [names.index(c) for c in classes]
    given = read_layouts(layouts_file, names, size) if layouts_file else None
    if given is not None and (classes or balance):
        raise ValueError("--layouts gives the layouts; --classes and --balance choose how to draw them: use one or the other")
    if given is not None:
        layouts = [given[i % len(given)] for i in range(n)]
    else:
        model = LayoutModel.from_run(run.run_dir)
        layouts = [model.draw(np.random.default_rng([seed, i]), wanted, balance) for i in range(n)]
    if not has_lines(config.model.layout_channels, len(names)):  # a run without the line channel draws no direction
        if any(box_direction(b) for layout in layouts for b in layout) and given is not None:
            warnings.warn("this run was trained without directions, so the layouts' directions are ignored",
                          UserWarning, stacklevel=3)
        layouts = [[(*b[:5], 0) for b in layout] for layout in layouts]
    return layouts


def _image_path(out: Path, splits: list[str], i: int) -> Path:
    return out / "images" / splits[i] / f"{_name(i)}.png"


def _prepare_out(out: Path, names: list[str]) -> None:
    """The split folders, without the half-written files of a killed job, and data.yaml (rewritten on every run, so
    its absolute path follows a dataset that was moved)."""
    for split in ("train", "val"):
        for kind in ("images", "labels"):
            folder = out / kind / split
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("*.tmp"):
                stale.unlink()
    atomic_write_text(out / "data.yaml", data_yaml_text(out, names))


def _write_images(out: Path, drawn, layouts, splits: list[str], size: int) -> None:
    """Each generated image as its label file, then its PNG (each atomically: an image is done when its PNG is
    there); a batch's replaced near-copies are recorded in synth.json before its first image is written."""
    for indices, images, records in drawn:
        if records:
            _record_copies(out, records)
        for i, image in zip(indices, images):
            atomic_write_text(out / "labels" / splits[i] / f"{_name(i)}.txt", yolo_label_text(layouts[i], size, size))
            pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            atomic_write(_image_path(out, splits, i), lambda tmp: pil.save(tmp, format="PNG"))


def _record_copies(out: Path, records: list[dict]) -> None:
    """Add the records of replaced images to synth.json's "copies" (one per image, in image order; an image a
    killed job had recorded but not written is recorded again the same), and their count, "copies_replaced"."""
    manifest = read_json(out / MANIFEST, MANIFEST_FIX)
    kept = {r["image"]: r for r in manifest.get("copies", [])}
    kept.update((r["image"], r) for r in records)
    manifest["copies"] = [kept[i] for i in sorted(kept)]
    manifest["copies_replaced"] = len(kept)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))


MANIFEST_FIX = "it records how the dataset was made: restore it, or start the dataset again in another --out"
# settings added since, as datasets made before them had them (float32, no copy check)
SETTINGS_ADDED = {"precision": "fp32", "no_copies": False}


def job_settings(out) -> dict:
    """The settings a synthetic dataset in `out` was begun with (synth.json), {} if it has none."""
    manifest = Path(out) / MANIFEST
    if not manifest.is_file():
        return {}
    return {**SETTINGS_ADDED, **read_json(manifest, MANIFEST_FIX)}


def _check_out(out: Path, settings: dict, resume: bool) -> None:
    manifest = out / MANIFEST
    if manifest.is_file():
        if not resume:
            raise RunError(f"{out} already holds a synthetic dataset; pass --resume to finish it, or choose another --out")
        old = job_settings(out)
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed:
            hint = (f" (--precision {old['precision']})" if "precision" in changed else
                    f" ({'--allow-copies' if not old['no_copies'] else 'without --allow-copies'})"
                    if "no_copies" in changed else "")
            raise RunError(f"{out} was made with other settings ({', '.join(f'{k}: {old.get(k)!r} now {settings[k]!r}' for k in changed)}); "
                           f"resume with the same ones{hint}, or choose another --out")
        return
    if resume:
        raise RunError(f"nothing to resume in {out}: it has no {MANIFEST}; drop --resume to start")
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):  # the lock this job holds is not content
        raise RunError(f"{out} exists and is not empty; choose a new folder for the dataset")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest, json.dumps(settings, indent=2))


def _contact_sheet(out: Path, layouts, splits, names, count: int = 32) -> None:
    shown = list(range(min(count, len(layouts))))
    images = np.stack([np.asarray(Image.open(out / "images" / splits[i] / f"{_name(i)}.png").convert("RGB")) for i in shown])
    viz.save_contact_sheet(images, [layouts[i] for i in shown], names, out / "contact_sheet.png")


def write_coco(out: Path, layouts, splits, names, size: int) -> None:
    """annotations/instances_{train,val}.json, with file names relative to images/ (train/000000.png)."""
    (out / "annotations").mkdir(exist_ok=True)
    for split in ("train", "val"):
        entries = [(f"{split}/{_name(i)}.png", size, size, layouts[i]) for i in range(len(layouts)) if splits[i] == split]
        atomic_write_text(out / "annotations" / f"instances_{split}.json", json.dumps(coco_dict(entries, names)))


__all__ = ["copy_detector", "draw_layouts", "is_val", "synthesize", "write_coco"]
