"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", KID).

The squared MMD between real and generated features under the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, estimated without bias on random subsets, as torch-fidelity does.
Unlike FD it has no bias that depends on the number of samples, so values at different N compare.
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for features x (N, D), y (M, D) -> (N, M)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 between the distributions of x (N, D) and y (M, D) (Gretton et al. 2012, eq. 3).

    The within-set means leave out the diagonal k(x_i, x_i); this is what makes the estimate unbiased,
    and why it can come out slightly negative when both sets are drawn from one distribution.
    """
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 samples in each set, got {n} and {m}")
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: (mean, std) of the unbiased MMD^2 over `subsets` random subsets of each set.

    Each subset holds min(subset_size, len(real), len(fake)) features drawn without replacement
    (torch-fidelity's defaults: 100 subsets of 1000). Features (N, D) from any extractor.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need two feature sets (N, D) of the same D, got {real.shape} and {fake.shape}")
    size = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(real[rng.choice(len(real), size, replace=False)],
                            fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))
