"""The copy detector (diffusely.metrics.copies): noisy training images are all near-copies, fresh images of
the same generator almost never are, the ratio test against hand-computed answers, blocked distances equal
to a brute-force computation, the report and its figure, and bad input named."""

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from diffusely.data import render_defects, render_shapes, to_tensor
from diffusely.metrics.copies import (THRESHOLD, CopyDetector, CopyError, copy_ratio, copy_report, default_k,
                                      nearest_neighbours, save_copies_figure)


@functools.lru_cache(maxsize=None)
def images(name: str, count: int, seed: int) -> torch.Tensor:
    """(count, 3, 32, 32) in [-1, 1] from a built-in generator: image i depends on (seed, i) only."""
    render = {"shapes": render_shapes, "defects": render_defects}[name]
    return to_tensor(render(count, size=32, seed=seed).images)


@pytest.mark.parametrize("name, std", [("shapes", 0.02), ("defects", 0.01)])
def test_training_images_plus_small_noise_are_all_near_copies(name, std):
    train = images(name, 1000, 0)
    rows = torch.randperm(1000, generator=torch.Generator().manual_seed(1))[:200]
    noise = std * torch.randn(200, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    check = CopyDetector.fit(train).check(train[rows] + noise)
    assert check.near_copy.all(), f"{(~check.near_copy).sum()} copies passed, ratios up to {check.ratio.max():.3f}"
    # each is matched to the image it was made from, at the noise's RMS distance
    assert torch.equal(check.index, rows)
    assert check.distance.numpy() == pytest.approx(std, rel=0.05)


@pytest.mark.parametrize("flips", [False, True])
@pytest.mark.parametrize("name", ["shapes", "defects"])
def test_fresh_images_of_the_generator_are_not_near_copies(name, flips):
    # a seed the training images never came from: new images of the same distribution
    detector = CopyDetector.fit(images(name, 1000, 0), flips=flips)
    fresh = detector.check(images(name, 1000, 7))
    assert fresh.near_copy.double().mean() < 0.01
    # and no training image is a near-copy of another (nor of its own mirror image): the scale the threshold
    # reads against
    assert not detector.reference.near_copy.any()
    assert detector.reference.ratio.min() > THRESHOLD * 1.2


def test_mirrored_copies_count_for_a_run_trained_with_flips():
    train = images("shapes", 1000, 0)
    rows = torch.arange(0, 1000, 5)
    noise = 0.02 * torch.randn(200, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mirrored = train[rows].flip(-1) + noise
    check = CopyDetector.fit(train, flips=True).check(mirrored)
    assert check.near_copy.all() and torch.equal(check.index, rows)
    # a shape left or right of the centre looks like no training image until mirrored back
    assert check.flipped.double().mean() > 0.5
    assert CopyDetector.fit(train).check(mirrored).near_copy.double().mean() < 0.5
    # and a copy the right way round stays one, not mirrored
    straight = CopyDetector.fit(train, flips=True).check(train[rows] + noise)
    assert straight.near_copy.all() and torch.equal(straight.index, rows)


def test_ratio_test_against_hand_computed_answers():
    # five training points in 4-D, each coordinate equal: RMS distances are the coordinates' differences
    train = torch.tensor([[0.0] * 4, [2.0] * 4, [5.0] * 4, [-6.0] * 4, [10.0] * 4], dtype=torch.float64)
    samples = torch.tensor([[0.5] * 4, [2.1] * 4], dtype=torch.float64)
    detector = CopyDetector.fit(train, k=3)
    check = detector.check(samples)
    # sample 0: RMS distances 0.5, 1.5, 4.5, (6.5, 9.5): 0.5 / mean(0.5, 1.5, 4.5) = 3/13
    # sample 1: 0.1, 2.1, 2.9, (7.9, 8.1): 0.1 / mean(0.1, 2.1, 2.9) = 1/17
    assert check.ratio.tolist() == pytest.approx([3 / 13, 1 / 17], rel=1e-12)
    assert check.distance.tolist() == pytest.approx([0.5, 0.1], rel=1e-12)
    assert check.index.tolist() == [0, 1]
    assert check.near_copy.tolist() == [False, True]  # 3/13 > 1/6 > 1/17
    assert CopyDetector.fit(train, k=3, threshold=0.3).check(samples).near_copy.tolist() == [True, True]
    # each training point against the other four: 0 sees 2, 5, 6 (ratio 6/13), 2 sees 2, 3, 8 (6/13),
    # 5 sees 3, 5, 5 (9/13), -6 sees 6, 8, 11 (18/25), 10 sees 5, 8, 10 (15/23)
    assert detector.reference.ratio.tolist() == pytest.approx([6 / 13, 6 / 13, 9 / 13, 18 / 25, 15 / 23], rel=1e-12)
    assert detector.reference.index.tolist() == [1, 0, 1, 0, 2]
    assert not detector.reference.near_copy.any()


def test_an_exact_copy_of_repeated_training_images_has_ratio_zero():
    # all k neighbours at distance 0: 0 / 0 is a copy, not NaN
    train = torch.zeros(4, 1, 2, 2)
    train[3] = 1.0
    check = CopyDetector.fit(train, k=2).check(torch.zeros(1, 1, 2, 2))
    assert check.ratio.tolist() == [0.0] and check.near_copy.tolist() == [True]
    assert copy_ratio(torch.tensor([[0.0, 0.0], [1.0, 3.0]], dtype=torch.float64)).tolist() == [0.0, 0.5]


@pytest.mark.parametrize("block", [1, 5, 16, 4096])
def test_blocked_distances_equal_brute_force(block):
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(37, 12, generator=g, dtype=torch.float64)
    train = torch.randn(53, 12, generator=g, dtype=torch.float64)
    d, i = nearest_neighbours(queries, train, 7, block=block)
    full = torch.cdist(queries, train) / 12 ** 0.5
    expect_d, expect_i = full.sort(1)
    assert torch.equal(i, expect_i[:, :7])
    assert torch.allclose(d, expect_d[:, :7], rtol=1e-10, atol=0)
    # leaving out a row per query (each training row measured against the others), across block borders
    own = torch.arange(37)
    d, i = nearest_neighbours(train[:37], train, 7, exclude=own, block=block)
    full = torch.cdist(train[:37], train) / 12 ** 0.5
    full[own, own] = float("inf")
    expect_d, expect_i = full.sort(1)
    assert torch.equal(i, expect_i[:, :7])
    assert torch.allclose(d, expect_d[:, :7], rtol=1e-10, atol=0)
    assert not (i == own[:, None]).any()


def test_near_duplicates_far_from_the_origin_keep_their_distances():
    # features need not be centred (SiLU outputs are all positive): |q|^2 + |t|^2 - 2 q.t of vectors of norm
    # ~3500 would lose the 1e-4 differences between near-duplicates to rounding, unless centred first
    g = torch.Generator().manual_seed(0)
    train = 1000 + torch.randn(20, 12, generator=g, dtype=torch.float64)
    queries = train[:5] + 1e-4 * torch.randn(5, 12, generator=g, dtype=torch.float64)
    d, i = nearest_neighbours(queries, train, 3)
    assert i[:, 0].tolist() == [0, 1, 2, 3, 4]
    expect = (queries - train[:5]).norm(dim=1) / 12 ** 0.5
    assert torch.allclose(d[:, 0], expect, rtol=1e-6, atol=0)


def test_report_counts_planted_copies_and_draws_them(tmp_path):
    train, held = images("shapes", 1000, 0), images("shapes", 200, 1)
    fresh = images("shapes", 1000, 7)[:90]
    planted = torch.tensor([3, 14, 159, 265, 358, 979, 323, 846, 264, 338])
    samples = torch.cat([fresh, train[planted] + 0.01 * torch.randn(10, 3, 32, 32, generator=torch.Generator())])
    samples[-1] = samples[-1].flip(-1)  # a copy of a run trained with flips may come out mirrored
    features = {"sample_features": samples.mean((2, 3)), "train_features": train.mean((2, 3)),
                "held_out_features": held.mean((2, 3))}
    report = copy_report(samples, train, held, closest=10, flips=True, **features)
    pixel = report["pixel"]
    assert report["near_copies"] == pixel["near_copies"] == 0.1 and pixel["near_copy_count"] == 10
    assert pixel["k"] == 50 and pixel["flagged"] == {"train": 0.0, "held_out": 0.0}
    assert set(pixel["ratio"]) == {"samples", "train", "held_out"}
    assert pixel["ratio"]["samples"]["min"] < THRESHOLD < pixel["ratio"]["train"]["min"]
    assert pixel["nearest_distance"]["samples"]["min"] == pytest.approx(0.01, rel=0.05)
    assert sorted((p["sample"], p["train"]) for p in report["closest"]) == list(zip(range(90, 100), planted.tolist()))
    assert [p["flipped"] for p in report["closest"] if p["sample"] == 99] == [True]
    assert report["features"]["k"] == 50 and not report["features"]["flips"] and "warning" not in report

    path = save_copies_figure(tmp_path / "copies.png", samples, train, report, count=4)
    with Image.open(path) as im:
        width, height = im.size
    # two rows of 32-pixel images shown 4x, four columns, with captions and row labels
    assert 2 * 128 < height < 2 * 128 + 40 and 4 * 128 < width < 4 * 128 + 250


def test_report_warns_when_the_training_set_holds_near_duplicates():
    train = images("shapes", 200, 0)
    train = torch.cat([train, train[:20] + 0.005])  # 20 of 220 images have a twin
    report = copy_report(images("shapes", 50, 7), train)
    assert report["pixel"]["flagged"]["train"] > 0.05
    assert "near-duplicates" in report["warning"]


def test_default_k_is_carlinis_50_at_most_a_tenth_of_the_set():
    assert [default_k(n) for n in (3, 50, 200, 499, 500, 10_000)] == [2, 5, 20, 49, 50, 50]


def test_bad_input_is_named_with_its_fix():
    train = images("shapes", 100, 0)
    detector = CopyDetector.fit(train)
    with pytest.raises(CopyError, match=r"shape \(3, 16, 16\).*\(3, 32, 32\).*resize"):
        detector.check(torch.zeros(2, 3, 16, 16))
    with pytest.raises(CopyError, match=r"shape \(1, 32, 32\)"):
        detector.check(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="k=100 nearest neighbours of 100 training images: pass k between 2 and 99"):
        CopyDetector.fit(train, k=100)
    with pytest.raises(ValueError, match="k=1 .*pass k between 2 and 99"):
        CopyDetector.fit(train, k=1)
    with pytest.raises(CopyError, match="3 training images at least"):
        CopyDetector.fit(train[:2])
    with pytest.raises(CopyError, match="flips mirror .* images, not 1-axis features: leave flips off"):
        CopyDetector.fit(train.mean((2, 3)), flips=True)
    with pytest.raises(CopyError, match=r"threshold must be in \(0, 1\)"):
        CopyDetector.fit(train, threshold=1.5)
    with pytest.raises(CopyError, match="uint8 images: convert them with diffusely.data.to_tensor"):
        CopyDetector.fit(np.zeros((10, 32, 32, 3), np.uint8))
    bad = train[:4].clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(CopyError, match="the samples contain NaN"):
        detector.check(bad)
    with pytest.raises(CopyError, match="the samples have 5 values each but the training images 4: resize"):
        nearest_neighbours(torch.zeros(2, 5, dtype=torch.float64), torch.zeros(9, 4, dtype=torch.float64), 3)
    with pytest.raises(CopyError, match="k=9 nearest neighbours asked of 8 training images .each less itself.: "
                                        "pass k between 1 and 8"):
        nearest_neighbours(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(9, 4, dtype=torch.float64), 9,
                           exclude=torch.tensor([0, 1]))
    with pytest.raises(CopyError, match="2-D images"):
        save_copies_figure("unused.png", torch.zeros(3, 1, 8), torch.zeros(3, 1, 8), {"closest": [{}]})
