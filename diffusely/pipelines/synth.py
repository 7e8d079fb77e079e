"""Synthetic detection datasets from a layout-conditioned run: draw layouts, generate, write YOLO (and COCO).

    layouts = LayoutModel.from_run(run_dir)                 # the training layouts' statistics
    synthesize(run, "datasets/synth", n=1000, balance=True)

Image i of a dataset depends only on (seed, i): its layout is drawn from a generator seeded (seed, i)
and its noise from seed + i. So a stopped job resumes by making exactly the images it had not finished,
and two jobs with the same settings make the same dataset.

Each finished image is written as its label file and then its PNG, each atomically; an image counts as
done when its PNG exists, so a job killed at any moment leaves only whole images with their labels.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .. import viz
from .._files import atomic_write, atomic_write_text
from ..checkpoint import LoadedRun, RunError
from ..data import DataError, to_uint8
from ..data.detection import coco_dict, data_yaml_text, yolo_label_text
from ..layout import box_class, box_direction, has_lines
from ..nets.fast import sampling_precision
from .generate import generate

MANIFEST = "synth.json"
PLACEMENT_TRIES = 30


@dataclass
class LayoutModel:
    """What a layout is like in the training data, per class: how many boxes an image holds (`counts[n]`,
    the fraction of images with n boxes), how often each class occurs, and the sizes and centers of its
    boxes (in pixels of image_size x image_size images), with each box's direction. New layouts resample
    these, so their statistics follow the training set's while their combinations are new."""

    class_names: list[str]
    image_size: int
    counts: np.ndarray
    frequencies: np.ndarray
    sizes: list[np.ndarray]  # per class (n_k, 2): width, height
    centers: list[np.ndarray]  # per class (n_k, 2): x, y
    directions: list[np.ndarray]  # per class (n_k,): -1, 0 or +1, of the box whose size is in `sizes`

    @classmethod
    def fit(cls, layouts: Sequence[Sequence[tuple]], class_names: list[str], image_size: int) -> "LayoutModel":
        k = len(class_names)
        counts = np.bincount([len(layout) for layout in layouts], minlength=1).astype(float)
        boxes = np.array([(*b[:5], box_direction(b)) for layout in layouts for b in layout], dtype=float).reshape(-1, 6)
        per_class = [boxes[boxes[:, 0] == c] for c in range(k)]
        frequencies = np.array([len(b) for b in per_class], dtype=float)
        if frequencies.sum() == 0:
            raise DataError("the training data holds no boxes, so there is no layout to learn from")
        return cls(list(class_names), image_size, counts / counts.sum(), frequencies / frequencies.sum(),
                   [np.stack([b[:, 3] - b[:, 1], b[:, 4] - b[:, 2]], 1) for b in per_class],
                   [np.stack([(b[:, 1] + b[:, 3]) / 2, (b[:, 2] + b[:, 4]) / 2], 1) for b in per_class],
                   [b[:, 5].astype(int) for b in per_class])

    @classmethod
    def from_run(cls, run_dir) -> "LayoutModel":
        from ..train.loop import LAYOUTS

        path = Path(run_dir) / LAYOUTS
        if not path.is_file():
            raise RunError(f"{run_dir} has no {LAYOUTS}: it is not a layout run (train with --layout), or predates them")
        spec = json.loads(path.read_text())
        return cls.fit([[tuple(b) for b in layout] for layout in spec["layouts"]], spec["class_names"], spec["image_size"])

    def draw(self, rng: np.random.Generator, classes: Optional[Sequence[int]] = None, balance: bool = False) -> list[tuple]:
        """A new layout: a box count from `counts` (at least 1 when `classes` narrows the classes), then per
        box a class (by frequency, or uniformly with `balance`), a training box's size of that class jittered
        by up to 15% with that box's direction, and a training center of that class moved by up to a tenth of the image; boxes that
        would overlap an earlier one are redrawn, and left out after PLACEMENT_TRIES."""
        allowed = list(range(len(self.class_names))) if classes is None else list(classes)
        weights = np.array([0.0 if len(self.sizes[c]) == 0 else (1.0 if balance else self.frequencies[c]) for c in allowed])
        if weights.sum() == 0:
            raise DataError(f"no training box of class {', '.join(self.class_names[c] for c in allowed)}")
        weights /= weights.sum()
        counts = self.counts.copy()
        if classes is not None:  # asked for these classes: every image shows one
            counts[0] = 0.0
            if counts.sum() == 0:
                counts = np.array([0.0, 1.0])
        n = int(rng.choice(len(counts), p=counts / counts.sum()))
        s = self.image_size
        boxes: list[tuple] = []
        for _ in range(n):
            c = allowed[int(rng.choice(len(allowed), p=weights))]
            for _ in range(PLACEMENT_TRIES):
                j = rng.integers(len(self.sizes[c]))
                w, h = self.sizes[c][j] * rng.uniform(0.85, 1.15, 2)
                w, h = min(w, s), min(h, s)
                cx, cy = self.centers[c][rng.integers(len(self.centers[c]))] + rng.uniform(-0.1, 0.1, 2) * s
                x0, y0 = float(np.clip(cx - w / 2, 0, s - w)), float(np.clip(cy - h / 2, 0, s - h))
                box = (c, round(x0, 2), round(y0, 2), round(x0 + w, 2), round(y0 + h, 2), int(self.directions[c][j]))
                if all(_apart(box, other) for other in boxes):
                    boxes.append(box)
                    break
        return boxes


def _apart(a, b) -> bool:
    return a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]


def read_layouts(path, class_names: list[str], image_size: int) -> list[list[tuple]]:
    """Layouts from a JSON file (a list of layouts, or one layout) or a JSON-lines file (a layout per line); a
    layout is a list of {"class": name or index, "box": [x0, y0, x1, y1]} with coordinates normalised to 0..1,
    and optionally "direction": +1 (the defect runs from the box's top-left to its bottom-right corner), -1
    (bottom-left to top-right) or 0 (unknown; the default). Returns boxes in pixels of image_size x image_size
    images, with their directions."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no layouts file at {path}")
    text = path.read_text()
    try:
        layouts = json.loads(text) if text.lstrip().startswith("[") and path.suffix != ".jsonl" else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is neither a JSON list of layouts nor JSON lines: {e}") from None
    if isinstance(layouts, list) and layouts and all(isinstance(box, dict) for box in layouts):
        layouts = [layouts]  # one layout, given as its list of boxes
    out = []
    for i, layout in enumerate(layouts):
        if not isinstance(layout, list):
            raise DataError(f"{path}, layout {i + 1}: a layout is a list of boxes, got {type(layout).__name__} {layout!r}")
        boxes = []
        for box in layout:
            try:
                name, (x0, y0, x1, y1) = box["class"], (float(v) for v in box["box"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}, layout {i + 1}: each box must be {{\"class\": \"{class_names[0]}\", "
                                f"\"box\": [x0, y0, x1, y1]}} (coordinates 0..1), got {box!r}") from None
            cls = box_class(class_names, name)
            if cls is None:
                raise DataError(f"{path}, layout {i + 1}: unknown class {name!r}; this run's classes: {', '.join(class_names)}")
            direction = box.get("direction")
            direction = 0 if direction is None else direction  # null: unknown
            if direction not in (-1, 0, 1) or isinstance(direction, bool):
                raise DataError(f"{path}, layout {i + 1}: direction must be 1 (top-left to bottom-right), -1 "
                                f"(bottom-left to top-right) or 0, got {direction!r}")
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise DataError(f"{path}, layout {i + 1}: box {[x0, y0, x1, y1]} must satisfy 0 <= x0 < x1 <= 1 and "
                                f"0 <= y0 < y1 <= 1 (normalised corners)")
            boxes.append((cls, x0 * image_size, y0 * image_size, x1 * image_size, y1 * image_size, int(direction)))
        out.append(boxes)
    if not out:
        raise DataError(f"{path} holds no layouts")
    return out


def is_val(i: int, val_fraction: float) -> bool:
    """Whether image i goes to the validation split: a share val_fraction of the images, spread evenly
    (for 0.1, images 4, 14, 24, ...)."""
    return math.floor((i + 1) * val_fraction + 0.5) > math.floor(i * val_fraction + 0.5)


def _name(i: int) -> str:
    return f"{i:06d}"


def synthesize(run: LoadedRun, out, n: int, *, classes: Optional[Sequence[str]] = None, balance: bool = False,
               layouts_file=None, seed: int = 0, val_fraction: float = 0.1, coco: bool = False, resume: bool = False,
               batch_size: int = 16, guidance: Optional[float] = None, sampler: Optional[str] = None,
               steps: Optional[int] = None, nfe: Optional[int] = None, progress: bool = True,
               options: Optional[dict] = None) -> dict:
    """Write an Ultralytics YOLO dataset of n generated images into `out`: images/{train,val}/*.png,
    labels/{train,val}/*.txt, data.yaml, contact_sheet.png, synth.json (the settings), and with `coco`
    annotations/instances_{train,val}.json. Returns counts of what was made."""
    config = run.config
    if not config.model.layout_channels:
        raise RunError("this run was trained without layouts; train it with --layout to synthesise labelled data")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    names = list(config.data.class_names)
    size = config.data.image_size
    wanted = None
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ValueError(f"unknown class(es) {', '.join(unknown)}; this run's classes: {', '.join(names)}")
        wanted = [names.index(c) for c in classes]
    given = read_layouts(layouts_file, names, size) if layouts_file else None
    if given is not None and (classes or balance):
        raise ValueError("--layouts gives the layouts; --classes and --balance choose how to draw them: use one or the other")

    if n < 1:
        raise ValueError(f"the number of images must be >= 1, got {n}")
    if given is not None:
        layouts = [given[i % len(given)] for i in range(n)]
    else:
        model = LayoutModel.from_run(run.run_dir)
        layouts = [model.draw(np.random.default_rng([seed, i]), wanted, balance) for i in range(n)]
    if not has_lines(config.model.layout_channels, len(names)):  # a run without the line channel draws no direction
        if any(box_direction(b) for layout in layouts for b in layout) and given is not None:
            warnings.warn("this run was trained without directions, so the layouts' directions are ignored",
                          UserWarning, stacklevel=2)
        layouts = [[(*b[:5], 0) for b in layout] for layout in layouts]
    splits = ["val" if is_val(i, val_fraction) else "train" for i in range(n)]
    out = Path(out)
    image_path = lambda i: out / "images" / splits[i] / f"{_name(i)}.png"  # noqa: E731
    todo = [i for i in range(n) if not image_path(i).is_file()]
    # generate() checks the sampler, steps, guidance and layouts here, before anything is written
    made = generate(run, max(len(todo), 1), indices=todo or [0], layouts=layouts, seed=seed, batch_size=batch_size,
                    guidance=guidance, sampler=sampler, steps=steps, nfe=nfe, progress=progress, **(options or {}))

    settings = {"run": str(Path(run.run_dir).resolve()) if run.run_dir else None, "run_step": run.step, "n": n,
                "seed": seed, "classes": list(classes or []), "balance": balance, "val_fraction": val_fraction,
                "layouts_sha256": hashlib.sha256(Path(layouts_file).read_bytes()).hexdigest() if layouts_file else None,
                "guidance": guidance, "sampler": sampler, "steps": steps, "nfe": nfe, "options": options or {},
                "precision": sampling_precision(run.denoiser.net)}
    _check_out(out, settings, resume)
    for split in ("train", "val"):
        for kind in ("images", "labels"):
            folder = out / kind / split
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("*.tmp"):  # half-written files of a killed job
                stale.unlink()
    # data.yaml is rewritten on every run, so its absolute path follows a dataset that was moved
    atomic_write_text(out / "data.yaml", data_yaml_text(out, names))
    if todo:
        done = 0
        for batch in made:
            for image in to_uint8(batch):
                i = todo[done]
                done += 1
                text = yolo_label_text(layouts[i], size, size)
                atomic_write_text(out / "labels" / splits[i] / f"{_name(i)}.txt", text)
                pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
                atomic_write(image_path(i), lambda tmp: pil.save(tmp, format="PNG"))
    if not any(s == "val" for s in splits):
        warnings.warn(f"{n} images at val_fraction {val_fraction} put none in images/val, which YOLO training needs; "
                      "make more images or raise --val-fraction", UserWarning, stacklevel=2)
    _contact_sheet(out, layouts, splits, names)
    if coco:
        write_coco(out, layouts, splits, names, size)
    return {"images": n, "made": len(todo), "train": splits.count("train"), "val": splits.count("val"),
            "boxes": sum(len(layout) for layout in layouts),
            "per_class": {name: sum(b[0] == k for layout in layouts for b in layout) for k, name in enumerate(names)}}


SETTINGS_ADDED = {"precision": "fp32"}  # settings added since, as datasets made before them had them (float32)


def job_settings(out) -> dict:
    """The settings a synthetic dataset in `out` was begun with (synth.json), {} if it has none."""
    manifest = Path(out) / MANIFEST
    if not manifest.is_file():
        return {}
    try:
        return {**SETTINGS_ADDED, **json.loads(manifest.read_text())}
    except ValueError as e:
        raise RunError(f"{manifest} is not valid JSON ({e}); it records how the dataset was made: restore it, "
                       "or start the dataset again in another --out") from None


def _check_out(out: Path, settings: dict, resume: bool) -> None:
    manifest = out / MANIFEST
    if manifest.is_file():
        if not resume:
            raise RunError(f"{out} already holds a synthetic dataset; pass --resume to finish it, or choose another --out")
        old = job_settings(out)
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed:
            hint = f" (--precision {old['precision']})" if "precision" in changed else ""
            raise RunError(f"{out} was made with other settings ({', '.join(f'{k}: {old.get(k)!r} now {settings[k]!r}' for k in changed)}); "
                           f"resume with the same ones{hint}, or choose another --out")
        return
    if resume:
        raise RunError(f"nothing to resume in {out}: it has no {MANIFEST}; drop --resume to start")
    if out.exists() and any(out.iterdir()):
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


__all__ = ["LayoutModel", "is_val", "read_layouts", "synthesize", "write_coco"]
