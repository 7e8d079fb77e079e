"""A built-in detection dataset drawn in code: industrial surfaces with defects, each with its exact box.

Surfaces: brushed metal, woven fabric, painted and cast textures, under uneven lighting. Defects:
scratch (common), stain, spot (a pit) and crack (rare), so a detector trained on them meets the
class imbalance of real inspection data. Every box is the tight bounding box of the pixels its
defect changed (coverage > 2%), so a detector learns exactly what is drawn, and carries the defect's
direction (diffusely.layout.direction_of its pixels: +1 or -1 for a scratch or crack drawn out along a
diagonal of its box, 0 otherwise).

Image i depends only on (seed, i, size): any index can be regenerated alone, on any machine.
Defects are drawn at 4x and downscaled with LANCZOS, so thin lines are antialiased, not aliased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..layout import direction_of

CLASS_NAMES = ["scratch", "crack", "spot", "stain"]
# how often each class is drawn: crack is the rare class a synthetic set should help with
CLASS_FREQUENCIES = np.array([0.47, 0.07, 0.16, 0.30])
# defects per image: 0 (a clean surface) to 3
COUNT_PROBABILITIES = np.array([0.15, 0.50, 0.25, 0.10])
SURFACES = ["brushed metal", "woven fabric", "painted", "cast"]

SUPERSAMPLE = 4
# a pixel belongs to a defect's box when the defect covers more than this much of it: at the strongest
# contrast drawn (a dark scratch on a light surface, ~160 levels) a pixel outside changes by 3 levels at most
COVERAGE = 0.02
PLACEMENT_TRIES = 30


@dataclass
class DefectsData:
    """Rendered defects: images (N, S, S, 3) uint8 RGB, per image a list of boxes (class_index, x0, y0, x1, y1,
    direction) in pixels (x1, y1 exclusive), a caption per image; labels is None (an image holds 0 to 3 defects)."""

    images: np.ndarray
    boxes: list[list[tuple[int, float, float, float, float, int]]]
    captions: list[str]
    class_names: list[str]
    labels: None = None

    def __len__(self) -> int:
        return len(self.images)


def render_defects(count: int, size: int = 64, seed: int = 0, start: int = 0) -> DefectsData:
    """Draw images start .. start+count-1, size x size pixels, each a surface with 0..3 defects.

    Image i is a pure function of (seed, i, size). Costs 1 to 3 ms per 64 x 64 image on one CPU core.
    """
    if count < 0 or start < 0:
        raise ValueError(f"count and start must be >= 0, got {count} and {start}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels for defects to be told apart, got {size}")
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    boxes, captions = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, start + i, 7])
        image, found, surface = _render_one(rng, size)
        images[i] = image
        boxes.append(found)
        captions.append(_caption(surface, [b[0] for b in found]))
    return DefectsData(images, boxes, captions, list(CLASS_NAMES))


# ---------------------------------------------------------------------------------------------
# surfaces


@lru_cache(maxsize=4)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(t, t, indexing="xy")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) noise in about [-1, 1] with features `size / cells` pixels wide: a cells x cells grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    lo, hi = grid.min(), grid.max()
    img = Image.fromarray(((grid - lo) / (hi - lo + 1e-6) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def _surface(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A (size, size, 3) float32 surface in 0..255 and its name."""
    kind = SURFACES[int(rng.integers(len(SURFACES)))]
    x, y = _coords(size)
    if kind == "brushed metal":
        base = rng.uniform(125, 195) * np.array([1.0, 1.0, rng.uniform(1.0, 1.06)], dtype=np.float32)
        # streaks: per-row noise, smoothed a little across rows, plus fine grain
        rows = rng.standard_normal(size * 4).astype(np.float32)
        rows = np.convolve(rows, np.ones(3) / 3, mode="same").reshape(size, 4).mean(1)
        streaks = rows[:, None] * rng.uniform(6, 12) + rng.standard_normal((size, size)).astype(np.float32) * 3
        if rng.random() < 0.5:
            streaks = streaks.T
        value = base[None, None, :] + streaks[..., None]
    elif kind == "woven fabric":
        palette = [(200, 185, 150), (70, 95, 140), (120, 120, 125), (90, 120, 80), (150, 60, 55)]
        base = np.array(palette[int(rng.integers(len(palette)))], dtype=np.float32) * rng.uniform(0.85, 1.15)
        period = size / rng.uniform(10, 16)
        warp, weft = np.sin(2 * math.pi * x * size / period), np.sin(2 * math.pi * y * size / period)
        weave = np.where((warp > 0) ^ (weft > 0), warp, weft) * rng.uniform(10, 18)
        value = base[None, None, :] + (weave + rng.standard_normal((size, size)) * 3)[..., None]
    elif kind == "painted":
        palette = [(60, 110, 170), (200, 200, 195), (40, 120, 70), (210, 160, 40), (170, 45, 40)]
        base = np.array(palette[int(rng.integers(len(palette)))], dtype=np.float32) * rng.uniform(0.9, 1.1)
        peel = _smooth_noise(rng, size, max(4, size // 6)) * rng.uniform(6, 10)
        value = base[None, None, :] + (peel + rng.standard_normal((size, size)) * 2)[..., None]
    else:  # cast: gray-brown with blotches and dark pores
        base = np.array([rng.uniform(95, 150)] * 3, dtype=np.float32) * np.array([1.05, 1.0, 0.93], dtype=np.float32)
        blotch = _smooth_noise(rng, size, max(3, size // 10)) * rng.uniform(10, 18)
        pores = (rng.random((size, size)) < 0.02) * -25.0
        value = base[None, None, :] + (blotch + pores + rng.standard_normal((size, size)) * 5)[..., None]
    # lighting: a linear falloff across the part, 10 to 30% from one side to the other
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
    light = 1.0 + ramp * rng.uniform(0.1, 0.3)
    return (value * light[..., None]).astype(np.float32), kind


# ---------------------------------------------------------------------------------------------
# defects


def _render_one(rng: np.random.Generator, size: int):
    image, surface = _surface(rng, size)
    n = int(rng.choice(len(COUNT_PROBABILITIES), p=COUNT_PROBABILITIES))
    found, taken = [], []
    for _ in range(n):
        cls = int(rng.choice(len(CLASS_NAMES), p=CLASS_FREQUENCIES))
        for _ in range(PLACEMENT_TRIES):
            mask = _defect_mask(rng, cls, size)
            coverage = np.asarray(mask.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0
            box = _tight_box(coverage)
            if box is not None and all(_apart(box, other) for other in taken):
                break
        else:
            continue  # a crowded image simply holds fewer defects
        image = _apply(rng, cls, image, coverage, size)
        taken.append(box)
        ys, xs = np.nonzero(coverage > COVERAGE)
        found.append((cls, *box, direction_of(xs, ys, coverage[ys, xs])))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), found, surface


def _defect_mask(rng: np.random.Generator, cls: int, size: int) -> Image.Image:
    """The defect's shape at SUPERSAMPLE x size, as an L image (255 inside)."""
    big = size * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    px = big / 64  # one pixel of a 64 x 64 image, on the big canvas
    name = CLASS_NAMES[cls]
    if name == "scratch":  # a straight thin line
        length = rng.uniform(0.3, 0.65) * big
        angle = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0.2, 0.8, 2) * big
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=max(1, round(rng.uniform(0.8, 1.4) * px)))
    elif name == "crack":  # a jagged random walk with a branch
        points = [tuple(rng.uniform(0.25, 0.75, 2) * big)]
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(6, 10))):
            heading += rng.normal(0, 0.6)
            step = rng.uniform(2.5, 4.5) * px
            x, y = points[-1]
            points.append((x + math.cos(heading) * step, y + math.sin(heading) * step))
        draw.line(points, fill=255, width=max(1, round(1.6 * px)), joint="curve")
        fork = points[len(points) // 2]
        heading += rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
        end = (fork[0] + math.cos(heading) * 8 * px, fork[1] + math.sin(heading) * 8 * px)
        draw.line([fork, end], fill=255, width=max(1, round(1.0 * px)))
    elif name == "spot":  # a small round pit
        r = rng.uniform(1.6, 3.2) * px
        cx, cy = rng.uniform(0.1, 0.9, 2) * big
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:  # stain: an irregular soft blob
        r = rng.uniform(5, 10) * px
        cx, cy = rng.uniform(0.2, 0.8, 2) * big
        angles = np.sort(rng.uniform(0, 2 * math.pi, 9))
        radii = r * rng.uniform(0.6, 1.2, 9)
        draw.polygon([(cx + q * math.cos(a), cy + q * math.sin(a)) for a, q in zip(angles, radii)], fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(1.5 * px))
    return mask


def _apply(rng: np.random.Generator, cls: int, image: np.ndarray, coverage: np.ndarray, size: int) -> np.ndarray:
    """The surface with defect `cls` painted through its coverage (H, W) in 0..1."""
    a = coverage[..., None]
    name = CLASS_NAMES[cls]
    if name == "scratch":  # bright (a fresh scratch catches the light) or dark (a deep one)
        target = np.full(3, 245.0) if rng.random() < 0.6 else image.mean((0, 1)) * 0.35
        return image * (1 - 0.85 * a) + target * 0.85 * a
    if name == "crack":
        return image * (1 - 0.92 * a)
    if name == "spot":  # a dark pit whose far inner wall (lower right) catches the light
        out = image * (1 - 0.75 * a)
        rim = np.clip(coverage - np.roll(coverage, (-1, -1), axis=(0, 1)), 0, 1)[..., None]
        return out + rim * 90.0
    # stain: a brownish tint that darkens
    tint = np.array([0.55, 0.42, 0.25], dtype=np.float32) * rng.uniform(0.8, 1.1)
    return image * (1 - a) + image * tint * a


def _tight_box(coverage: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(coverage > COVERAGE)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _apart(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _caption(surface: str, classes: list[int]) -> str:
    """'brushed metal with a scratch and two spots', 'painted surface without defects'."""
    noun = surface if surface in ("brushed metal", "woven fabric") else f"{surface} surface"
    if not classes:
        return f"{noun} without defects"
    counts = {c: classes.count(c) for c in dict.fromkeys(classes)}
    words = {1: "a", 2: "two", 3: "three"}
    parts = [f"{words[k]} {CLASS_NAMES[c]}{'es' if k > 1 and CLASS_NAMES[c] == 'scratch' else 's' if k > 1 else ''}"
             for c, k in counts.items()]
    return f"{noun} with {' and '.join(parts)}"
