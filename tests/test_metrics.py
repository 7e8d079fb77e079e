import numpy as np
import pytest

from diffusely.metrics import feature_statistics, frechet_distance


def test_frechet_distance_of_gaussians_in_closed_form():
    # for diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expect = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-12)
    # rotating both distributions by the same orthogonal matrix changes nothing
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    assert frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T) == pytest.approx(expect, rel=1e-9)


def test_frechet_distance_of_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 4))
    y = rng.normal(size=(20000, 4)) * 2 + 1
    fd = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert fd == pytest.approx(4 * 1 + 4 * 1, rel=0.03)  # |1|^2 per dim + (2 - 1)^2 per dim
    assert abs(frechet_distance(*feature_statistics(x), *feature_statistics(x))) < 1e-9
    with pytest.raises(ValueError, match="need features of shape"):
        feature_statistics(np.zeros(5))
