"""Prompt adherence on the built-in shapes: read a generated image back and score what its prompt asked.

The shapes data is drawn in code, so an image can be read back much as it was drawn:
  background  the background of the palette nearest to one of the four corners (a gradient background
              has its base color at one corner)
  shapes      connected regions of pixels far from the background (their number is the count)
  color       the median of a region's inner pixels, named by the nearest shape color
  size        the side of its bounding box (pixels at least half as far from the background as the
              region's own level: half-covered edge pixels) against the image, with the threshold the
              generator uses for that many shapes
  shape       a small classifier (metrics.domain's DomainClassifier) trained on regions cut the same
              way out of the generator's own images
  position    where the first shape's box lies relative to each other's (shapes._relation)
Each attribute a prompt asks for scores right or wrong; `adherence` reports each one's accuracy and
`all`, the fraction of images with every asked attribute right.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._files import load_tensors, save_tensors
from ..data.shapes import BACKGROUNDS, CLASS_NAMES, COLORS, NUMBER_WORDS, PLURALS, _relation, render_shapes
from .domain import DomainClassifier, train_domain_classifier

ATTRIBUTES = ("shape", "color", "size", "position", "count", "background")
RELATIONS = ("above", "below", "left of", "right of")
FOREGROUND = 50.0  # a pixel this far (max over channels) from the background belongs to a shape
CROP = 16  # side of the cut-out region the shape classifier sees
FORMAT = "diffusely-adherence-checker-1"


# ---------------------------------------------------------------------------------------------
# what a prompt asks


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    color: str
    size: str


@dataclass
class Scene:
    """What a shapes caption asks: its shapes (the first is the one the relations start from), where the first
    is relative to each other one (empty when alike shapes are just counted), and the background."""

    shapes: list[ShapeSpec]
    relations: list[str] = field(default_factory=list)
    background: Optional[str] = None


_NUMBERS = {word: n for n, word in NUMBER_WORDS.items()}
_SINGULAR = {plural: shape for shape, plural in PLURALS.items()}
_GROUP = re.compile(r"(a|\w+) (large|small) (\w+) (\w+)")


def _group(text: str) -> list[ShapeSpec]:
    m = _GROUP.fullmatch(text)
    if not m:
        raise ValueError(f"cannot read {text!r} as 'a SIZE COLOR SHAPE' or 'two SIZE COLOR SHAPES'")
    count_word, size, color, noun = m.groups()
    count = 1 if count_word == "a" else _NUMBERS.get(count_word)
    shape = noun if count == 1 else _SINGULAR.get(noun)
    if count is None or shape not in CLASS_NAMES or color not in COLORS:
        raise ValueError(f"cannot read {text!r}: expected a count, large or small, one of the colors "
                         f"{', '.join(COLORS)} and one of the shapes {', '.join(CLASS_NAMES)}")
    return [ShapeSpec(shape, color, size)] * count


def parse_caption(caption: str) -> Scene:
    """A shapes caption ('a large red circle above two small blue squares on a navy background') -> Scene."""
    body, sep, background = caption.strip().rpartition(" on a ")
    if not sep or not background.endswith(" background"):
        raise ValueError(f"cannot read {caption!r}: a shapes caption ends 'on a BACKGROUND background'")
    background = background[: -len(" background")]
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; the shapes backgrounds: {', '.join(BACKGROUNDS)}")
    relation = "|".join(RELATIONS)
    parts = re.split(rf" ({relation}) ", body.replace(" and ", " "))
    first = _group(parts[0])
    if len(first) > 1 and len(parts) > 1:
        raise ValueError(f"cannot read {caption!r}: counted shapes come alone")
    shapes, relations = list(first), []
    for rel, text in zip(parts[1::2], parts[2::2]):
        group = _group(text)
        shapes += group
        relations += [rel] * len(group)
    return Scene(shapes, relations, background)


# the same scenes in other words: every shape, color, size, relation and background named differently
SYNONYMS = {
    "large": "big", "small": "tiny",
    "red": "crimson", "orange": "tangerine", "yellow": "golden", "green": "emerald", "cyan": "turquoise",
    "blue": "azure", "purple": "violet", "pink": "rose", "white": "ivory", "black": "ebony",
    "circle": "disc", "circles": "discs", "square": "block", "squares": "blocks", "triangle": "pyramid",
    "triangles": "pyramids", "cross": "plus sign", "crosses": "plus signs",
    "above": "over", "below": "beneath", "left of": "to the left of", "right of": "to the right of",
    "dark gray": "charcoal", "navy": "midnight blue", "dark green": "forest green", "dark brown": "chocolate",
    "dark purple": "plum", "light gray": "silver", "beige": "sand", "light blue": "sky blue",
    "light green": "mint", "light pink": "blush", "lavender": "lilac",
    "on a": "against a", "background": "backdrop", "and": "as well as",
}
_SYNONYM_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, SYNONYMS), key=len, reverse=True)) + r")\b")


def reword(caption: str) -> str:
    """A shapes caption in words the captions never use: 'a large red circle on a navy background' ->
    'a big crimson disc against a midnight blue backdrop'."""
    text = _SYNONYM_RE.sub(lambda m: SYNONYMS[m.group(1)], caption)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


# ---------------------------------------------------------------------------------------------
# what an image shows


@dataclass
class SeenShape:
    shape: str
    color: str
    side: float  # bounding-box side (its larger one) as a fraction of the image
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass
class Reading:
    background: str
    shapes: list[SeenShape]

    def size_word(self, s: SeenShape) -> str:
        # the generator draws large shapes at 0.55-0.75 of the image and small ones at 0.35-0.45, both
        # shrunk by 0.9 / sqrt(n) when there are n shapes: the threshold is the middle of the gap
        n = len(self.shapes)
        return "large" if s.side > 0.5 * (1.0 if n == 1 else 0.9 / math.sqrt(n)) else "small"


def _nearest(rgb: np.ndarray, palette: dict) -> str:
    names = list(palette)
    d = ((np.asarray(list(palette.values()), dtype=np.float32) - rgb) ** 2).sum(1)
    return names[int(d.argmin())]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected regions of a bool (H, W) mask, one bool mask each: every pixel takes the smallest
    label among itself and its neighbours until nothing changes (fast for the small images here)."""
    big = mask.size + 1
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        nearest = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        nearest = np.where(mask, nearest, big)
        if np.array_equal(nearest, labels):
            return [labels == k for k in np.unique(labels[mask])]
        labels = nearest


def segment(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(S, S, 3) uint8 -> (background RGB (3,), distance from it (S, S), one bool mask per region), regions
    of at least (S/16)^2 pixels, largest first."""
    image = np.asarray(image, dtype=np.float32)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.median(border, axis=0)
    distance = np.abs(image - background).max(-1)
    min_area = max(2, round((image.shape[0] / 16) ** 2))
    masks = sorted((m for m in _components(distance > FOREGROUND) if m.sum() >= min_area), key=lambda m: -m.sum())
    return background, distance, masks


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _level(distance: np.ndarray, mask: np.ndarray) -> float:
    """How far a region's inside is from the background (its 90th percentile, so edges do not pull it down)."""
    return float(np.percentile(distance[mask], 90))


def _background_name(image: np.ndarray) -> str:
    """The palette background nearest to any corner (median of its 2 x 2 pixels)."""
    corners = np.stack([np.median(image[r, c].reshape(-1, 3), axis=0) for r in (slice(0, 2), slice(-2, None))
                        for c in (slice(0, 2), slice(-2, None))])
    palette = np.asarray(list(BACKGROUNDS.values()), dtype=np.float32)
    d = ((corners[:, None, :] - palette[None]) ** 2).sum(-1)
    return list(BACKGROUNDS)[int(d.min(0).argmin())]


def cut_out(distance: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """A region as the classifier sees it: (1, CROP, CROP) in [-1, 1], its distance from the background
    (0 outside the region) over a square around its box, scaled so the region's own level is 1."""
    x0, y0, x1, y1 = map(int, _box(mask))
    side = max(x1 - x0, y1 - y0) + 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    level = _level(distance, mask)
    region = np.where(mask, np.clip(distance / max(level, 1e-6), 0, 1), 0).astype(np.float32)
    padded = np.pad(region, side)
    tile = padded[top + side: top + 2 * side, left + side: left + 2 * side]
    t = torch.from_numpy(np.ascontiguousarray(tile))[None, None]
    return F.interpolate(t, size=(CROP, CROP), mode="bilinear", antialias=True, align_corners=False)[0] * 2 - 1


class AdherenceChecker:
    """Reads shapes images back (see the module docstring) with a trained shape classifier."""

    def __init__(self, classifier: DomainClassifier, info: dict):
        self.classifier, self.info = classifier.eval().requires_grad_(False), info

    def read(self, images: np.ndarray) -> list[Reading]:
        """(N, S, S, 3) uint8 images -> what each shows."""
        readings, crops = [], []
        for image in np.asarray(images):
            _, distance, masks = segment(image)
            seen = []
            for m in masks:
                level = _level(distance, m)
                inner = m & (distance >= 0.8 * level)
                box = _box(m & (distance >= 0.5 * level))
                color = _nearest(np.median(image[inner].astype(np.float32), axis=0), COLORS)
                seen.append(SeenShape("", color, max(box[2] - box[0], box[3] - box[1]) / image.shape[0], box))
                crops.append(cut_out(distance, m))
            readings.append(Reading(_background_name(image.astype(np.float32)), seen))
        if crops:
            with torch.inference_mode():
                classes = self.classifier(torch.stack(crops)).argmax(1).tolist()
            shapes = iter(classes)
            for r in readings:
                for s in r.shapes:
                    s.shape = CLASS_NAMES[next(shapes)]
        return readings

    def score(self, reading: Reading, scene: Scene) -> dict[str, tuple[int, int]]:
        """{attribute: (right, asked)} for one image, matching asked shapes to seen ones as well as they go."""
        asked, seen = scene.shapes, reading.shapes
        best, best_right = None, -1
        for match in itertools.permutations(range(len(seen)), min(len(asked), len(seen))):
            right = sum(_agree(reading, seen[j], a) for a, j in zip(asked, match))
            if right > best_right:
                best, best_right = match, right
        match = list(best or ()) + [None] * (len(asked) - len(best or ()))
        out = {k: [0, 0] for k in ATTRIBUTES}
        for a, j in zip(asked, match):
            s = seen[j] if j is not None else None
            for attribute, ok in (("shape", s and s.shape == a.shape), ("color", s and s.color == a.color),
                                  ("size", s and reading.size_word(s) == a.size)):
                out[attribute][0] += bool(ok)
                out[attribute][1] += 1
        for k, rel in enumerate(scene.relations, start=1):
            ok = match[0] is not None and match[k] is not None and \
                _relation(seen[match[0]].box, seen[match[k]].box) == rel
            out["position"][0] += ok
            out["position"][1] += 1
        out["count"] = [int(len(seen) == len(asked)), 1]
        if scene.background is not None:
            out["background"] = [int(reading.background == scene.background), 1]
        return {k: (r, n) for k, (r, n) in out.items() if n}

    def scores(self, images: np.ndarray, scenes: Sequence[Scene]) -> list[dict[str, tuple[int, int]]]:
        """`score` of each image against its scene: {attribute: (right, asked)} per image."""
        if len(images) != len(scenes):
            raise ValueError(f"got {len(images)} images for {len(scenes)} prompts")
        return [self.score(reading, scene) for reading, scene in zip(self.read(images), scenes)]

    def adherence(self, images: np.ndarray, scenes: Sequence[Scene]) -> dict[str, float]:
        """Accuracy of each attribute over the images (right / asked), and `all`: the fraction of images with
        every asked attribute right."""
        return summarise(self.scores(images, scenes))


def summarise(scores: Sequence[dict[str, tuple[int, int]]]) -> dict[str, float]:
    """Per-image scores (AdherenceChecker.scores, or a subset of them: the prompts of one object count) -> the
    accuracy of each attribute asked (right / asked) and `all`, the fraction of images with every one right."""
    totals = {k: [0, 0] for k in ATTRIBUTES}
    for image in scores:
        for k, (r, n) in image.items():
            totals[k][0] += r
            totals[k][1] += n
    out = {k: r / n for k, (r, n) in totals.items() if n}
    out["all"] = sum(all(r == n for r, n in image.values()) for image in scores) / max(1, len(scores))
    return out


def _agree(reading: Reading, s: SeenShape, a: ShapeSpec) -> int:
    return (s.shape == a.shape) + (s.color == a.color) + (reading.size_word(s) == a.size)


def fit_adherence_checker(size: int = 32, count: int = 3000, steps: int = 400, seed: int = 0,
                          progress: bool = False) -> AdherenceChecker:
    """Train the shape classifier on regions cut out of `count` generated images of 1 or 2 shapes (the
    region whose box holds a drawn shape's center is labelled with its class)."""
    data = render_shapes(count, size=size, seed=seed, max_shapes=2)
    crops, labels = [], []
    for image, boxes in zip(data.images, data.boxes):
        _, distance, masks = segment(image)
        for cls, x0, y0, x1, y1 in boxes:
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            m = next((m for m in masks if m[cy, cx]), None)
            if m is not None:
                crops.append(cut_out(distance, m))
                labels.append(cls)
    net = train_domain_classifier(torch.stack(crops), torch.tensor(labels), len(CLASS_NAMES), steps=steps, seed=seed,
                                  progress=progress)
    return AdherenceChecker(net, {"size": size, "count": count, "steps": steps, "seed": seed})


def save_checker(path, checker: AdherenceChecker) -> None:
    save_tensors(path, checker.classifier.state_dict(), {"format": FORMAT, "info": checker.info})


def load_checker(path) -> AdherenceChecker:
    path = Path(path)
    try:
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        net = DomainClassifier(1, len(CLASS_NAMES))
        net.load_state_dict(tensors)
        return AdherenceChecker(net, dict(meta["info"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not an adherence checker ({e}); delete it to train a new one") from None
