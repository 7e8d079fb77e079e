"""What a layout run's layouts are like: the training layouts kept in the run (layouts.json), a model of their
statistics that draws new ones, and layout files a user writes.

    model = LayoutModel.from_run(run_dir)                       # the training layouts' statistics
    boxes = model.draw(np.random.default_rng([seed, i]))        # a new layout: [(class, x0, y0, x1, y1, direction)]
    layouts = read_layouts("layouts.json", class_names, 64)     # a user's layouts, in pixels
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .._files import atomic_write_text, read_json
from ..checkpoint import RunError
from ..data import DataError
from . import box_class, box_direction

LAYOUTS = "layouts.json"  # a layout run's training boxes, from which `diffusely synth` draws new layouts
PLACEMENT_TRIES = 30


def save_layouts(run_dir: Path, class_names: Sequence[str], image_size: int, boxes: list[list[tuple]]) -> None:
    """layouts.json: the class names, the image size and every training image's boxes in pixels, each
    [class, x0, y0, x1, y1, direction]."""
    layouts = [[[int(b[0]), *(round(float(v), 2) for v in b[1:5]), box_direction(b)] for b in image] for image in boxes]
    atomic_write_text(Path(run_dir) / LAYOUTS, json.dumps({"class_names": list(class_names), "image_size": image_size,
                                                           "layouts": layouts}))


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
        path = Path(run_dir) / LAYOUTS
        if not path.is_file():
            raise RunError(f"{run_dir} has no {LAYOUTS}: it is not a layout run (train with --layout), or predates them")
        fix = "it holds the training layouts synth draws from: restore it, or train the run again with --layout"
        spec = read_json(path, fix)
        try:
            layouts = [[tuple(b) for b in layout] for layout in spec["layouts"]]
            return cls.fit(layouts, spec["class_names"], spec["image_size"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise RunError(f"{path} is not the layouts file a --layout run writes ({type(e).__name__}: {e}); "
                           f"{fix}") from None

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
