"""Sample-quality metrics against exact answers: FD in closed form and against pytorch-fid's formula,
KID's unbiasedness, precision/recall/density/coverage on sets of known overlap, .npz statistics."""

import numpy as np
import pytest
import scipy.linalg

from diffusely.metrics import (FeatureStats, density_coverage, feature_statistics, frechet_distance,
                               kernel_inception_distance, load_stats, precision_recall, quality_metrics, save_stats)
from diffusely.metrics import prdc
from diffusely.metrics.kid import mmd2_unbiased, polynomial_kernel


def test_frechet_distance_of_gaussians_in_closed_form():
    # for diagonal covariances: |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expect = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-12)
    # rotating both distributions by the same orthogonal matrix changes nothing
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    assert frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T) == pytest.approx(expect, rel=1e-9)
    rng = np.random.default_rng(1)
    mu1, mu2, s1, s2 = rng.normal(size=20), rng.normal(size=20), rng.uniform(0.1, 3, 20), rng.uniform(0, 3, 20)
    expect = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expect, rel=1e-10)


def pytorch_fid_formula(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance: scipy's sqrtm of S1 S2, eps * I where it fails, real part."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("n, d", [(500, 16), (40, 64)])  # well-conditioned; rank-deficient (N < D), as FID at small N
def test_frechet_distance_matches_pytorch_fid(n, d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
    y = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.5
    stats = (*feature_statistics(x), *feature_statistics(y))
    assert frechet_distance(*stats) == pytest.approx(pytorch_fid_formula(*stats), rel=1e-6)


def test_frechet_distance_of_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 4))
    y = rng.normal(size=(20000, 4)) * 2 + 1
    fd = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert fd == pytest.approx(4 * 1 + 4 * 1, rel=0.03)  # |1|^2 per dim + (2 - 1)^2 per dim
    assert abs(frechet_distance(*feature_statistics(x), *feature_statistics(x))) < 1e-9
    few = rng.normal(size=(10, 32))  # rank-deficient covariance: still ~0 against itself, never negative
    assert abs(frechet_distance(*feature_statistics(few), *feature_statistics(few))) < 1e-10
    with pytest.raises(ValueError, match="need features of shape"):
        feature_statistics(np.zeros(5))


def test_frechet_distance_of_two_halves_is_small_and_shrinks_with_n():
    # FD between two samples of one distribution is positive only through estimation error (its small-N bias)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16000, 8)) @ rng.normal(size=(8, 8))
    fds = [frechet_distance(*feature_statistics(x[:n // 2]), *feature_statistics(x[n // 2:n])) for n in (1000, 4000, 16000)]
    assert fds[0] > fds[1] > fds[2] > 0
    assert fds[2] < 0.01 * np.trace(np.cov(x, rowvar=False))


def test_mmd_estimator_is_the_unbiased_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 1
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    xy = sum(k(a, b) for a in x for b in y) / (5 * 4)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert polynomial_kernel(x, y).shape == (5, 4)


def test_kid_is_unbiased_and_sees_a_shift():
    rng = np.random.default_rng(0)
    same = [mmd2_unbiased(rng.normal(size=(100, 8)), rng.normal(size=(100, 8))) for _ in range(200)]
    # mean ~0 within its standard error (a biased estimate would sit about 2 k(x,x)/n ~ 0.03 above 0)
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert min(same) < 0 < max(same)
    real, shifted = rng.normal(size=(600, 8)), rng.normal(size=(600, 8)) + 0.5
    mean, std = kernel_inception_distance(real, shifted, subsets=20, subset_size=200)
    assert mean > 5 * std > 0
    mean_same, _ = kernel_inception_distance(real, rng.normal(size=(600, 8)), subsets=20, subset_size=200)
    assert abs(mean_same) < 0.1 * mean


def brute_force_prdc(real, fake, k):
    d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
    r_real, r_fake = np.sort(d(real, real), 1)[:, k], np.sort(d(fake, fake), 1)[:, k]
    inside = d(fake, real) <= r_real[None]  # (fake, real): fake point in the real point's ball
    return (inside.any(1).mean(), (d(real, fake) <= r_fake[None]).any(1).mean(),
            inside.sum() / (k * len(fake)), inside.any(0).mean())


def test_prdc_matches_the_definitions(monkeypatch):
    monkeypatch.setattr(prdc, "CHUNK", 7)  # several chunks of the distance matrix
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) * 1.3 + 0.3
    expect = brute_force_prdc(real, fake, 3)
    assert precision_recall(real, fake, 3) == pytest.approx(expect[:2])
    assert density_coverage(real, fake, 3) == pytest.approx(expect[2:])


def test_precision_and_recall_on_known_overlap():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 4))
    same = rng.normal(size=(2000, 4))
    half = rng.normal(size=(4000, 4))
    half = half[half[:, 0] > 0][:2000]  # the half of N(0, I) with x1 > 0: all real, half of it
    far = rng.normal(size=(2000, 4)) + 10
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    p, r = precision_recall(real, half)
    assert p > 0.9 and 0.4 < r < 0.65
    assert precision_recall(real, far) == (0.0, 0.0)
    density, coverage = density_coverage(real, same)
    assert 0.85 < density < 1.15 and coverage > 0.9
    density, coverage = density_coverage(real, half)
    assert 0.4 < coverage < 0.65
    assert density_coverage(real, far) == (0.0, 0.0)
    with pytest.raises(ValueError, match="k-nearest"):
        precision_recall(real[:3], same[:3], k=3)


def test_stats_npz_round_trip_and_pytorch_fid_files(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 6))
    stats = FeatureStats.of(features, "domain-contrastive-0123abcd")
    save_stats(tmp_path / "ref.npz", stats)
    back = load_stats(tmp_path / "ref.npz")
    assert np.array_equal(back.mu, stats.mu) and np.array_equal(back.sigma, stats.sigma)
    assert np.array_equal(back.features, features) and back.extractor == "domain-contrastive-0123abcd"
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # no temporary file left behind

    np.savez(tmp_path / "fid.npz", mu=stats.mu.astype(np.float32), sigma=stats.sigma)  # as pytorch-fid writes them
    plain = load_stats(tmp_path / "fid.npz")
    assert plain.features is None and plain.extractor is None and plain.dims == 6
    metrics = quality_metrics(plain, features)
    assert metrics["fd"] == pytest.approx(0, abs=1e-5) and metrics["kid"] is None and metrics["precision"] is None

    np.savez(tmp_path / "bad.npz", m=stats.mu)
    with pytest.raises(ValueError, match="no 'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")


def test_quality_metrics_of_a_shifted_set():
    rng = np.random.default_rng(0)
    ref = FeatureStats.of(rng.normal(size=(300, 5)))
    good, bad = quality_metrics(ref, rng.normal(size=(200, 5))), quality_metrics(ref, rng.normal(size=(200, 5)) + 1)
    assert set(good) == {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    assert good["fd"] < bad["fd"] and good["kid"] < bad["kid"] and good["precision"] > bad["precision"]
    with pytest.raises(ValueError, match="different feature extractors"):
        quality_metrics(ref, rng.normal(size=(20, 4)))
