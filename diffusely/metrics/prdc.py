"""Precision, recall, density and coverage on k-nearest-neighbour manifolds.

Each set of features stands for its manifold: the union of balls around its points, each ball's
radius the distance to the point's k-th nearest neighbour in the same set.
  precision  share of generated points inside the real manifold: fidelity
  recall     share of real points inside the generated manifold: diversity
             (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models", k = 3)
  density    how many real balls hold a generated point on average, / k: fidelity that outliers
             among the real points cannot inflate (about 1 for matching distributions, above 1 possible)
  coverage   share of real points whose ball holds a generated point: diversity that generated
             outliers cannot inflate
             (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models", k = 5)
Balls are closed (distance <= radius). Both papers compare sets of equal size.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

CHUNK = 1024  # rows of a distance matrix at a time: memory stays CHUNK x N


def _distance_blocks(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Euclidean distances from rows of a (N, D) to all rows of b (M, D), CHUNK rows at a time."""
    b_sq = (b ** 2).sum(1)
    for start in range(0, len(a), CHUNK):
        rows = slice(start, start + CHUNK)
        block = a[rows]
        d2 = (block ** 2).sum(1)[:, None] + b_sq[None] - 2 * block @ b.T
        yield rows, np.sqrt(np.clip(d2, 0, None))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point of x (N, D) to its k-th nearest other point: (N,)."""
    if not 1 <= k < len(x):
        raise ValueError(f"k-nearest-neighbour radii need 1 <= k < number of points, got k={k} for {len(x)} points")
    radii = np.empty(len(x))
    for rows, d in _distance_blocks(x, x):
        # column 0 of the sorted distances is the point itself (distance 0), so column k is its k-th neighbour
        radii[rows] = np.partition(d, k, axis=1)[:, k]
    return radii


def _as_pair(real, fake) -> tuple[np.ndarray, np.ndarray]:
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need two feature sets (N, D) of the same D, got {real.shape} and {fake.shape}")
    return real, fake


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features `fake` against `real`, each (N, D) (Kynkäänniemi et al. 2019)."""
    real, fake = _as_pair(real, fake)
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    in_real = np.zeros(len(fake), bool)  # generated point inside some real ball
    in_fake = np.zeros(len(real), bool)  # real point inside some generated ball
    for rows, d in _distance_blocks(fake, real):
        in_real[rows] = (d <= real_radii[None]).any(1)
        in_fake |= (d <= fake_radii[rows, None]).any(0)
    return float(in_real.mean()), float(in_fake.mean())


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """(density, coverage) of generated features `fake` against `real`, each (N, D) (Naeem et al. 2020)."""
    real, fake = _as_pair(real, fake)
    real_radii = knn_radii(real, k)
    balls_holding = 0  # (generated point, real ball) pairs with the point inside the ball
    nearest_fake = np.full(len(real), np.inf)
    for _, d in _distance_blocks(fake, real):
        balls_holding += int((d <= real_radii[None]).sum())
        nearest_fake = np.minimum(nearest_fake, d.min(0))
    return balls_holding / (k * len(fake)), float((nearest_fake <= real_radii).mean())
