"""A built-in video dataset drawn in code: the `shapes` objects moving at constant velocity and bouncing off the
borders, some rotating as they go, some clips with two objects crossing each other's path (MCVD's moving MNIST, in
colour, with the truth kept).

Clip i depends only on (seed, i, size, frames). Each clip keeps every object's true trajectory (the centre of its
shape in pixels, per frame), so a generated clip's motion can be measured against what the data could do.

Motions (the class label is (shape, motion)):
- bouncing: one object, constant velocity, reflected at the borders;
- rotating: the same, the object turning at a constant rate about its centre;
- crossing: two objects of different colours in the upper and lower halves, moving in opposite horizontal
  directions, so they pass each other once or more (never overlapping: each bounces inside its own half).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shapes import BACKGROUNDS, CLASS_NAMES, COLORS, SUPERSAMPLE, _background, _contrasts, _pick

MOTIONS = ["bouncing", "rotating", "crossing"]
CLASSES = [f"{shape} {motion}" for shape in CLASS_NAMES for motion in MOTIONS]
MARGIN = 1.0  # pixels kept free at the border, as data.shapes does


@dataclass
class MovingShapesData:
    """Rendered clips: images (N, T, S, S, 3) uint8 RGB (the Dataset convention: samples channels last), labels
    (N,) int64 = shape * len(MOTIONS) + motion of the first object, trajectories (N, 2, T, 2) float32: each
    object's centre (x, y) in pixels per frame (a clip with one object repeats it in row 1), objects (N,) int64."""

    images: np.ndarray
    labels: np.ndarray
    trajectories: np.ndarray
    objects: np.ndarray
    class_names: list[str]
    captions: list[str] | None = None
    boxes: list | None = None

    def __len__(self) -> int:
        return len(self.images)


def render_moving_shapes(count: int, size: int = 32, frames: int = 8, seed: int = 0) -> MovingShapesData:
    """Draw clips 0..count-1 of `frames` frames of size x size pixels (about 2 ms a 8-frame 32 x 32 clip)."""
    if size < 16 or frames < 2:
        raise ValueError(f"moving shapes need size >= 16 pixels and frames >= 2, got size {size}, frames {frames}")
    images = np.empty((count, frames, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    paths = np.empty((count, 2, frames, 2), dtype=np.float32)
    objects = np.empty(count, dtype=np.int64)
    for i in range(count):
        rng = np.random.default_rng([seed, i, 7])
        images[i], labels[i], paths[i], objects[i] = _render_clip(rng, size, frames)
    return MovingShapesData(images, labels, paths, objects, list(CLASSES))


def bounce(start: np.ndarray, velocity: np.ndarray, low: np.ndarray, high: np.ndarray, frames: int) -> np.ndarray:
    """(frames, 2) positions of a point moving at `velocity` from `start`, reflected at `low` and `high` per axis:
    the unfolded path p0 + v t folded back into [low, high] (a triangle wave of period 2 (high - low))."""
    t = np.arange(frames, dtype=np.float64)[:, None]
    span = np.maximum(high - low, 1e-9)
    u = np.mod(start - low + velocity * t, 2 * span)
    return low + np.where(u > span, 2 * span - u, u)


def _render_clip(rng: np.random.Generator, size: int, frames: int):
    motion = int(rng.integers(len(MOTIONS)))
    background = _background(rng, size, BACKGROUNDS[_pick(rng, list(BACKGROUNDS))])
    corners = background[[0, 0, -1, -1], [0, -1, 0, -1]]
    colors = [name for name, good in zip(COLORS, _contrasts(corners)) if good]
    n = 2 if MOTIONS[motion] == "crossing" else 1
    picked = rng.choice(len(colors), size=n, replace=False)
    paths, drawn = np.empty((2, frames, 2), dtype=np.float32), []
    for k in range(n):
        cls = int(rng.integers(len(CLASS_NAMES)))
        side = size * (rng.uniform(0.3, 0.42) if n == 1 else rng.uniform(0.22, 0.27))
        spin = rng.uniform(0.2, 0.5) * rng.choice([-1, 1]) if MOTIONS[motion] == "rotating" else 0.0
        # a turning shape needs room for its diagonal; the crossing pair each keep to its own half
        half = side * (0.71 if spin else 2 / 3 if CLASS_NAMES[cls] == "triangle" else 0.5)  # centroid to edge
        low, high = np.full(2, MARGIN + half), np.full(2, size - MARGIN - half)
        if n == 2:
            low[1], high[1] = (low[1], size / 2 - 0.5 - half) if k == 0 else (size / 2 + 0.5 + half, high[1])
        start = rng.uniform(low, high)
        speed = rng.uniform(1.0, 2.5, 2) * rng.choice([-1, 1], 2)
        if n == 2:  # opposite horizontal directions, little vertical drift
            speed = np.array([abs(speed[0]) * (1 if k == 0 else -1), speed[1] * 0.3])
        paths[k] = bounce(start, speed, low, high, frames)
        drawn.append((cls, side, spin, float(rng.uniform(0, 2 * math.pi)), COLORS[colors[picked[k]]]))
    if n == 1:
        paths[1] = paths[0]
    clip = np.stack([_draw_frame(background, drawn, paths[:, t], t) for t in range(frames)])
    return clip, drawn[0][0] * len(MOTIONS) + motion, paths, n


def _draw_frame(background: np.ndarray, drawn: list, centres: np.ndarray, t: int) -> np.ndarray:
    """One (S, S, 3) uint8 frame: each object's coverage drawn at SUPERSAMPLE x and downscaled (antialiased)."""
    size = background.shape[0]
    image = background.copy()
    for (cls, side, spin, angle, rgb), centre in zip(drawn, centres):
        mask = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
        outline = shape_outline(cls, centre * SUPERSAMPLE, side * SUPERSAMPLE, angle * bool(spin) + spin * t)
        draw = ImageDraw.Draw(mask)
        if outline is None:
            r = side * SUPERSAMPLE / 2
            x, y = centre * SUPERSAMPLE
            draw.ellipse((x - r, y - r, x + r - 1, y + r - 1), fill=255)
        else:
            draw.polygon([tuple(p) for p in outline], fill=255)
        cover = np.asarray(mask.resize((size, size), Image.LANCZOS), dtype=np.float32)[..., None] / 255.0
        image = image * (1 - cover) + cover * np.asarray(rgb, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def shape_outline(cls: int, centre: np.ndarray, side: float, angle: float) -> np.ndarray | None:
    """(V, 2) polygon of shape class `cls` of width `side` turned by `angle` about its centroid (so a turning shape's
    centre of mass follows its path); None for a circle, which turning leaves alike."""
    name, h = CLASS_NAMES[cls], side / 2
    if name == "circle":
        return None
    if name == "square":
        points = np.array([(-h, -h), (h, -h), (h, h), (-h, h)])
    elif name == "triangle":  # apex up, centroid a third of the height above the base
        points = np.array([(-h, side / 3), (h, side / 3), (0, -2 * side / 3)])
    elif name == "cross":
        a = side / 6
        points = np.array([(-a, -h), (a, -h), (a, -a), (h, -a), (h, a), (a, a), (a, h), (-a, h), (-a, a), (-h, a),
                           (-h, -a), (-a, -a)])
    else:
        raise ValueError(f"unknown shape class {cls}")
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + centre
