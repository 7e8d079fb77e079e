"""A built-in dataset drawn in code: grayscale MRI-like slices, stand-ins for a user's scans.

Each slice is a head in the Shepp-Logan family (Shepp & Logan 1974): a bright skull ring around darker
brain tissue holding random ellipses of varied intensity (ventricles, grey-matter blobs), under a smooth
intensity inhomogeneity (the bias field of a receive coil), with fine tissue texture and, in about
half the slices, one to three small bright or dark lesions. Label 1 marks a slice with lesions.

Image i depends only on (seed, i, size): any index can be regenerated alone, on any machine. Shapes are
described in unit coordinates, so the same index at 64 and 128 pixels shows the same head; only the
texture, drawn per pixel, differs. Ellipse edges are antialiased by their distance to the boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CLASS_NAMES = ["healthy", "lesion"]
MIN_SIZE = 8


@dataclass
class PhantomsData:
    """Rendered slices: images (N, S, S, 3) uint8, the gray value repeated in the three channels (so
    load_dataset(..., channels=1) gives it back exactly), labels (N,) int64 (1: the slice has lesions),
    a caption per slice; no boxes."""

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]
    class_names: list[str]
    boxes: None = None

    def __len__(self) -> int:
        return len(self.images)


def render_phantoms(count: int, size: int = 64, seed: int = 0, start: int = 0) -> PhantomsData:
    """Draw slices start .. start+count-1, each size x size pixels.

    Slice i is a pure function of (seed, i, size). Costs about 1 ms per 64 x 64 slice on one CPU core.
    """
    if count < 0 or start < 0:
        raise ValueError(f"count and start must be >= 0, got {count} and {start}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels to draw a slice, got {size}")
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    captions = []
    for i in range(count):
        gray, lesions = render_slice(np.random.default_rng([seed, start + i, 11]), size)
        images[i] = gray[..., None]
        labels[i] = int(lesions > 0)
        captions.append(_caption(lesions))
    return PhantomsData(images, labels, captions, list(CLASS_NAMES))


def render_slice(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    """One (size, size) uint8 slice and its number of lesions."""
    x, y = _coords(size)
    head = _head(rng)
    value = np.zeros((size, size), dtype=np.float32)
    # the skull: a bright ellipse, the brain painted over it leaves a ring
    value += 0.95 * _ellipse(x, y, head, size)
    brain = (head[0], head[1], head[2] * 0.9, head[3] * 0.9, head[4])
    inside = _ellipse(x, y, brain, size)
    value += (rng.uniform(0.3, 0.45) - 0.95) * inside
    for _ in range(int(rng.integers(3, 9))):  # tissue structures, lighter or darker than the brain
        value += rng.uniform(-0.2, 0.25) * _ellipse(x, y, _inner(rng, brain, 0.15, 0.45), size)
    value += _texture(rng, size) * inside * rng.uniform(0.02, 0.05)
    lesions = int(rng.choice(4, p=[0.5, 0.25, 0.15, 0.1]))
    for _ in range(lesions):  # small: 2 to 5% of the field of view across
        sign = 1.0 if rng.random() < 0.7 else -1.0
        value += sign * rng.uniform(0.25, 0.45) * _ellipse(x, y, _inner(rng, brain, 0.02, 0.05), size)
    value *= _bias_field(rng, x, y)
    return np.clip(np.rint(value * 255.0), 0, 255).astype(np.uint8), lesions


@lru_cache(maxsize=4)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], as (size, size) arrays for x and y."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(t, t, indexing="xy")


def _head(rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    """The head's ellipse (cx, cy, a, b, angle) in unit coordinates: taller than wide, near the centre."""
    return (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0.62, 0.75), rng.uniform(0.8, 0.9),
            rng.uniform(-0.25, 0.25))


def _inner(rng: np.random.Generator, brain, low: float, high: float) -> tuple[float, float, float, float, float]:
    """A random ellipse with semi-axes in [low, high], its centre well inside the brain ellipse."""
    cx, cy, a, b, angle = brain
    r, phi = math.sqrt(rng.random()) * 0.6, rng.uniform(0, 2 * math.pi)
    u, v = r * a * math.cos(phi), r * b * math.sin(phi)
    c, s = math.cos(angle), math.sin(angle)
    return cx + c * u - s * v, cy + s * u + c * v, rng.uniform(low, high), rng.uniform(low, high), rng.uniform(0, math.pi)


def _ellipse(x: np.ndarray, y: np.ndarray, ellipse, size: int) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the ellipse (cx, cy, a, b, angle), antialiased over one pixel.

    The distance to the boundary is approximated by (r - 1) times the semi-axis along the pixel's direction,
    exact on circles and close enough for the mild eccentricities drawn here."""
    cx, cy, a, b, angle = ellipse
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    radius = np.sqrt(u * u + v * v) / np.maximum(r, 1e-6)  # the semi-axis along (u, v)
    pixel = 2.0 / size
    return np.clip(0.5 - (r - 1.0) * radius / pixel, 0.0, 1.0).astype(np.float32)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) fine texture of unit spread: white noise low-passed to features ~2 to 4 pixels wide."""
    freq = np.fft.fftfreq(size)
    radius = np.hypot(freq[:, None], freq[None, :])
    spectrum = np.fft.fft2(rng.standard_normal((size, size))) * np.exp(-(radius / 0.15) ** 2)
    texture = np.fft.ifft2(spectrum).real
    return (texture / (texture.std() + 1e-8)).astype(np.float32)


def _bias_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth multiplicative inhomogeneity: 1 + a random low-order surface, within +-10 to 25%."""
    coef = rng.standard_normal(5)
    field = coef[0] * x + coef[1] * y + coef[2] * x * y + coef[3] * (x * x - 0.33) + coef[4] * (y * y - 0.33)
    field = field / (np.abs(field).max() + 1e-8)
    return (1.0 + rng.uniform(0.1, 0.25) * field).astype(np.float32)


def _caption(lesions: int) -> str:
    if lesions == 0:
        return "an MRI-like slice with no lesion"
    return f"an MRI-like slice with {lesions} lesion{'s' if lesions > 1 else ''}"


def builtin_phantoms(size: int, seed: int = 0, count: int = 4000) -> PhantomsData:
    """The built-in phantoms dataset: `count` slices, a quarter to a half of them with lesions. Cached as
    builtin_shapes is (4,000 slices take ~5 s at 64 x 64, ~15 s at 128 x 128); each call gets its own copy."""
    data = _rendered_phantoms(size, seed, count)
    return PhantomsData(data.images.copy(), data.labels.copy(), list(data.captions), list(data.class_names))


@lru_cache(maxsize=1)
def _rendered_phantoms(size: int, seed: int, count: int) -> PhantomsData:
    return render_phantoms(count, size=size, seed=seed)
