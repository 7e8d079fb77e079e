import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusely.data import (BUILTIN, DataError, load_dataset, load_image_folder, render_shapes, to_grayscale,
                            to_tensor, to_uint8, write_shapes_folder)
from diffusely.data.shapes import CLASS_NAMES, COLORS

# fraction of its square box that each class covers: pi/4, 1, 1/2, and a plus with arms a third thick = 5/9
AREA_FRACTION = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 5 / 9}


# ---------------------------------------------------------------------------------------------
# shapes


def test_shapes_fields_and_types():
    data = render_shapes(6, size=32, seed=1)
    assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (6,) and data.labels.dtype == np.int64
    assert data.class_names == ["circle", "square", "triangle", "cross"]
    assert len(data.captions) == len(data.boxes) == 6


def test_shapes_are_a_pure_function_of_seed_and_index():
    batch = render_shapes(12, size=32, seed=3)
    again = render_shapes(12, size=32, seed=3)
    np.testing.assert_array_equal(batch.images, again.images)
    assert batch.captions == again.captions and batch.boxes == again.boxes
    # a prefix and a single index regenerate the same images as the batch
    np.testing.assert_array_equal(render_shapes(5, size=32, seed=3).images, batch.images[:5])
    alone = render_shapes(1, size=32, seed=3, start=7)
    np.testing.assert_array_equal(alone.images[0], batch.images[7])
    assert alone.captions[0] == batch.captions[7] and alone.labels[0] == batch.labels[7]
    # another seed gives other images
    assert not np.array_equal(render_shapes(12, size=32, seed=4).images, batch.images)


def test_all_classes_appear():
    labels = render_shapes(60, size=16, seed=0).labels
    assert set(labels.tolist()) == {0, 1, 2, 3}


def test_single_shape_pixels_are_where_the_box_says():
    size = 32
    data = render_shapes(40, size=size, seed=5)
    for image, (box,), label in zip(data.images.astype(float), data.boxes, data.labels):
        cls, x0, y0, x1, y1 = box
        assert cls == label
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        corner = image[0, 0]
        center = image[int((y0 + y1) / 2), int((x0 + x1) / 2)]
        contrast = np.abs(center - corner).max()
        # every shape covers its box center, and its color contrasts with the background
        assert contrast > 60
        differs = np.abs(image - corner).max(axis=-1) > contrast / 2
        ys, xs = np.nonzero(differs)
        # nothing outside the box (one pixel of antialiasing aside) differs from the background
        assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) and ys.min() >= np.floor(y0) - 1
        assert ys.max() <= np.ceil(y1)
        # and the shape covers the fraction of its box that its class should
        covered = differs.sum() / ((x1 - x0) * (y1 - y0))
        assert covered == pytest.approx(AREA_FRACTION[CLASS_NAMES[cls]], abs=0.12)


def test_single_shape_captions_name_size_color_shape_and_background():
    data = render_shapes(20, size=32, seed=2)
    for caption, label in zip(data.captions, data.labels):
        words = caption.split(" on a ")
        assert len(words) == 2 and words[1].endswith(" background")
        article, size_word, color, shape = words[0].split(" ")
        assert article == "a" and size_word in ("small", "large")
        assert color in COLORS and shape == CLASS_NAMES[label]


def test_shape_sizes_match_their_words():
    data = render_shapes(40, size=32, seed=6)
    for caption, ((_, x0, _, x1, _),) in zip(data.captions, data.boxes):
        fraction = (x1 - x0) / 32
        if " large " in caption:
            assert 0.55 <= fraction <= 0.75
        else:
            assert 0.35 <= fraction <= 0.45


def test_several_shapes_do_not_overlap_and_captions_relate_them():
    size = 32
    data = render_shapes(40, size=size, seed=7, max_shapes=3)
    counts = [len(boxes) for boxes in data.boxes]
    assert max(counts) > 1 and min(counts) >= 1 and max(counts) <= 3
    for caption, boxes, label in zip(data.captions, data.boxes, data.labels):
        assert boxes[0][0] == label
        for cls, x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert CLASS_NAMES[cls] in caption
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
        if len(boxes) == 2:
            # "a X <relation> a Y": the relation follows from the box centers
            (_, ax0, ay0, ax1, ay1), (_, bx0, by0, bx1, by1) = boxes
            dx, dy = (ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2
            if abs(dy) >= abs(dx):
                expected = "above" if dy < 0 else "below"
            else:
                expected = "left of" if dx < 0 else "right of"
            assert f" {expected} a " in caption


# ---------------------------------------------------------------------------------------------
# folders


def _truncated_png(path):
    # noise does not compress, so cutting the file in half cuts the pixel data itself
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_folder_with_classes_matches_the_rendered_images(tmp_path):
    paths = write_shapes_folder(tmp_path, 12, size=32, seed=0)
    data = load_image_folder(tmp_path, size=32, classes=True)
    rendered = render_shapes(12, size=32, seed=0)
    assert data.images.shape == (12, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.paths == sorted(data.paths, key=lambda p: p.replace(str(tmp_path), "")) and len(data.paths) == 12
    assert sorted(data.paths) == sorted(str(p) for p in paths)
    folders = sorted({p.parent.name for p in paths})
    assert data.class_names == folders
    for image, label, path in zip(data.images, data.labels, data.paths):
        index = int(path[-9:-4])
        # png is lossless and the size already matches, so the pixels come back exactly
        np.testing.assert_array_equal(image, rendered.images[index])
        assert data.class_names[label] == CLASS_NAMES[rendered.labels[index]]


def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    write_shapes_folder(tmp_path, 12, size=32)
    (tmp_path / "circle" / "garbage.png").write_bytes(np.random.default_rng(1).bytes(500))
    _truncated_png(tmp_path / "square" / "cut.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_image_folder(tmp_path, size=32, classes=True)
    assert len(data.images) == len(data.labels) == len(data.paths) == 12
    assert len(caught) == 1 and caught[0].category is UserWarning
    message = str(caught[0].message)
    assert "skipped 2 " in message and "garbage.png" in message and "cut.png" in message


def test_folder_without_classes_has_no_labels(tmp_path):
    write_shapes_folder(tmp_path, 3, size=16)
    data = load_image_folder(tmp_path, size=16)
    assert data.labels is None and data.class_names is None and data.images.shape == (3, 16, 16, 3)


def test_grayscale_folder(tmp_path):
    write_shapes_folder(tmp_path, 4, size=32)
    data = load_image_folder(tmp_path, size=16, channels=1)
    assert data.images.shape == (4, 16, 16, 1) and data.images.dtype == np.uint8


@pytest.mark.parametrize("tall", [False, True])
def test_non_square_image_is_resized_and_center_cropped(tmp_path, tall):
    # 80x40: red, green, blue bands of 20, 40, 20 columns; only the green middle survives the crop
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, :20, 0] = 255
    image[:, 20:60, 1] = 255
    image[:, 60:, 2] = 255
    if tall:
        image = image.transpose(1, 0, 2).copy()
    Image.fromarray(image).save(tmp_path / "wide.png")
    data = load_image_folder(tmp_path, size=20)
    assert data.images.shape == (1, 20, 20, 3)
    middle = data.images[0, 3:-3, 3:-3].astype(int)
    assert (middle[..., 1] == 255).all() and (middle[..., [0, 2]] == 0).all()


def test_exif_orientation_is_applied(tmp_path):
    # stored 40 wide and 20 high, red left and blue right; orientation 6 says "rotate 90 degrees clockwise to view"
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, :20, 0] = 255
    image[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(tmp_path / "rotated.png", exif=exif)
    loaded = load_image_folder(tmp_path, size=20).images[0].astype(int)
    # upright it is 20 wide and 40 high, red on top: the center crop is red above blue
    assert loaded[2, 10, 0] == 255 and loaded[2, 10, 2] == 0
    assert loaded[-3, 10, 2] == 255 and loaded[-3, 10, 0] == 0


def test_extensions_are_case_insensitive_and_hidden_files_skipped(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "A.PNG")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "b.JpEg", format="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "junk.png").write_bytes(b"not a png")
    data = load_image_folder(tmp_path, size=8)
    assert [p.rsplit("/", 1)[-1] for p in data.paths] == ["A.PNG", "b.JpEg"]


def test_errors_say_what_to_fix(tmp_path):
    with pytest.raises(DataError, match=r"no such folder: .*nowhere.*built-in dataset name: shapes"):
        load_image_folder(tmp_path / "nowhere", size=32)

    file = tmp_path / "one.png"
    Image.new("RGB", (8, 8)).save(file)
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_image_folder(file, size=32)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no image files.*\.jpg.*\.png"):
        load_image_folder(empty, size=32)

    with pytest.raises(DataError, match="one subfolder per class"):
        load_image_folder(tmp_path, size=8, classes=True)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG not really")
    (broken / "b.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 2 image files"):
        load_image_folder(broken, size=8)

    assert issubclass(DataError, ValueError)


def test_unknown_dataset_name_lists_the_builtin_names():
    with pytest.raises(DataError) as error:
        load_dataset("no_such_dataset_xyz", size=32)
    assert "no such folder: no_such_dataset_xyz" in str(error.value)
    assert all(name in str(error.value) for name in BUILTIN)


# ---------------------------------------------------------------------------------------------
# load_dataset and tensors


@pytest.fixture
def small_builtin(monkeypatch):
    # the real built-in draws 10,000 images; eight keep the tests fast
    monkeypatch.setitem(BUILTIN, "shapes", lambda size, seed: render_shapes(8, size=size, seed=seed))


def test_load_builtin(small_builtin):
    data = load_dataset("shapes", size=16, seed=2)
    assert data.source == "shapes" and len(data) == 8
    assert data.images.shape == (8, 16, 16, 3) and data.labels.shape == (8,)
    assert len(data.captions) == 8 and len(data.boxes) == 8 and data.class_names == CLASS_NAMES


def test_load_builtin_grayscale_matches_pil(small_builtin):
    rgb = load_dataset("shapes", size=16).images
    gray = load_dataset("shapes", size=16, channels=1).images
    assert gray.shape == (8, 16, 16, 1)
    expected = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in rgb])[..., None]
    np.testing.assert_array_equal(gray, expected)
    np.testing.assert_array_equal(to_grayscale(rgb), expected)


def test_load_folder_dataset(tmp_path):
    write_shapes_folder(tmp_path, 5, size=16)
    data = load_dataset(str(tmp_path), size=16, classes=True)
    assert data.source == str(tmp_path) and data.images.shape == (5, 16, 16, 3)
    assert data.captions is None and data.boxes is None and data.labels.shape == (5,)


def test_tensor_round_trip_is_exact():
    every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = to_tensor(every_value)
    assert x.shape == (1, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(to_uint8(x), every_value)

    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    assert to_tensor(images).shape == (2, 3, 5, 7)
    np.testing.assert_array_equal(to_uint8(to_tensor(images)), images)


def test_to_uint8_clamps():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5]).reshape(1, 1, 1, 5)
    np.testing.assert_array_equal(to_uint8(x).ravel(), [0, 0, 128, 255, 255])
