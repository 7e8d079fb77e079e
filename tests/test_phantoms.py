"""The built-in phantoms: MRI-like slices drawn in code, deterministic, in range, loadable by name."""

import numpy as np
import pytest

from diffusely.data import BUILTIN, DataError, load_dataset
from diffusely.data.phantoms import builtin_phantoms, render_phantoms


def test_phantoms_are_a_pure_function_of_seed_and_index():
    batch = render_phantoms(10, size=32, seed=3)
    np.testing.assert_array_equal(batch.images, render_phantoms(10, size=32, seed=3).images)
    alone = render_phantoms(1, size=32, seed=3, start=6)
    np.testing.assert_array_equal(alone.images[0], batch.images[6])
    assert alone.captions[0] == batch.captions[6] and alone.labels[0] == batch.labels[6]
    other = render_phantoms(10, size=32, seed=4).images
    # every slice of another seed differs, not just some
    assert all(not np.array_equal(a, b) for a, b in zip(other, batch.images))


@pytest.mark.parametrize("size", [64, 128, 40])
def test_phantoms_are_gray_heads_on_black(size):
    data = render_phantoms(8, size=size, seed=0)
    images = data.images
    assert images.shape == (8, size, size, 3) and images.dtype == np.uint8
    # gray: the three channels are one value
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
    gray = images[..., 0].astype(np.float64)
    # black outside the head (the corners), a bright skull ring, mid-gray brain at the centre
    assert gray[:, :2, :2].max() == 0 and gray[:, -2:, -2:].max() == 0
    assert (gray.reshape(8, -1).max(1) > 180).all()
    centre = gray[:, size // 2 - size // 8: size // 2 + size // 8, size // 2 - size // 8: size // 2 + size // 8]
    assert 30 < centre.mean() < 180
    # the slices are not all alike
    assert gray.std(0).mean() > 10


def test_labels_and_captions_count_lesions():
    data = render_phantoms(200, size=32, seed=0)
    assert data.class_names == ["healthy", "lesion"]
    for label, caption in zip(data.labels, data.captions):
        assert (label == 0) == caption.endswith("no lesion")
    assert 0.35 < data.labels.mean() < 0.65


def test_same_head_at_every_size():
    small = render_phantoms(4, size=64, seed=2).images[..., 0].astype(np.float64)
    large = render_phantoms(4, size=128, seed=2).images[..., 0].astype(np.float64)
    pooled = large.reshape(4, 64, 2, 64, 2).mean((2, 4))
    # only the per-pixel texture differs between sizes
    assert np.abs(pooled - small).mean() < 6
    # and another slice is far
    assert np.abs(pooled[::-1] - small).mean() > 15


def test_load_dataset_by_name():
    assert "phantoms" in BUILTIN
    data = load_dataset("phantoms", size=32, channels=1, seed=1)
    assert data.images.shape == (4000, 32, 32, 1) and data.source == "phantoms"
    np.testing.assert_array_equal(data.images[:5, ..., 0], render_phantoms(5, size=32, seed=1).images[..., 0])
    assert data.labels is not None and data.captions is not None
    # the cached rendering is not handed out: a caller's edit stays its own
    first = builtin_phantoms(32, seed=1)
    first.images[:] = 0
    assert builtin_phantoms(32, seed=1).images.max() == 255


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at least 8 pixels"):
        render_phantoms(1, size=4)
    with pytest.raises(DataError, match="phantoms"):  # a missing folder's message lists the built-in names
        load_dataset("no_such_phantoms_folder", size=32)
