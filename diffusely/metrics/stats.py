"""Feature statistics of a reference set, saved to and loaded from .npz files.

The keys `mu` (D,) and `sigma` (D, D) are those pytorch-fid and clean-fid write, so their files load
here (for FD) and ours load there. diffusely adds `features` (N, D), which KID and precision/recall
need, and `extractor`, the name of the feature extractor, so features from different networks are
never compared by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .._files import atomic_write
from .frechet import feature_statistics


@dataclass
class FeatureStats:
    """mu (D,), sigma (D, D); features (N, D) and the extractor's name where known."""

    mu: np.ndarray
    sigma: np.ndarray
    features: Optional[np.ndarray] = None
    extractor: Optional[str] = None

    @classmethod
    def of(cls, features: np.ndarray, extractor: Optional[str] = None) -> "FeatureStats":
        mu, sigma = feature_statistics(features)
        return cls(mu, sigma, np.asarray(features, np.float64), extractor)

    @property
    def dims(self) -> int:
        return len(self.mu)


def save_stats(path: str | Path, stats: FeatureStats) -> None:
    """Write `stats` to an .npz file, atomically."""
    arrays = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.features is not None:
        arrays["features"] = stats.features
    if stats.extractor is not None:
        arrays["extractor"] = np.array(stats.extractor)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
            np.savez(f, **arrays)
    atomic_write(path, write)


def load_stats(path: str | Path) -> FeatureStats:
    """Read an .npz with `mu` and `sigma` (pytorch-fid, clean-fid or diffusely); never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .npz file of statistics ({e})") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"{path} has no 'mu' and 'sigma' arrays (it has: {', '.join(arrays) or 'nothing'}); "
                         "statistics files from pytorch-fid, clean-fid or `diffusely eval` have them")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    features = arrays["features"].astype(np.float64) if "features" in arrays else None
    extractor = str(arrays["extractor"]) if "extractor" in arrays else None
    return FeatureStats(mu, sigma, features, extractor)
