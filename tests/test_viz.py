import numpy as np
import pytest
import torch
from PIL import Image

from diffusely.data import to_uint8
from diffusely.viz import BOX_COLORS, plot_loss, save_contact_sheet, save_grid, save_strip


def _images(n, channels=3, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator) * 2 - 1


def test_save_grid_from_tensor(tmp_path):
    x = _images(5)
    path = save_grid(x, tmp_path / "nested" / "grid.png")
    with Image.open(path) as image:
        # 5 images -> 3 columns, 2 rows of 8 pixels with 2 pixels of padding around each
        assert image.size == (3 * 10 + 2, 2 * 10 + 2) and image.mode == "RGB"
        grid = np.asarray(image)
    expected = to_uint8(x)
    np.testing.assert_array_equal(grid[2:10, 2:10], expected[0])
    np.testing.assert_array_equal(grid[12:20, 12:20], expected[4])  # second row, second column
    assert (grid[:2] == 0).all() and (grid[12:20, 22:30] == 0).all()  # padding, and the empty sixth tile
    assert not (tmp_path / "nested" / "grid.png.tmp").exists()


def test_save_grid_from_uint8_grayscale(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 1), dtype=np.uint8)
    path = save_grid(images, tmp_path / "gray.png", nrow=4, padding=1)
    with Image.open(path) as image:
        assert image.size == (4 * 7 + 1, 1 * 7 + 1) and image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image)[1:7, 8:14], images[1, ..., 0])


def test_save_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_grid(np.zeros((2, 8, 8, 3), dtype=np.float32), tmp_path / "bad.png")


def test_save_strip_size_and_nearest_upscale(tmp_path):
    rows = [_images(3, seed=1), _images(3, seed=2)]
    path = save_strip(rows, tmp_path / "strip.png", scale=4)
    with Image.open(path) as image:
        # 3 columns and 2 rows of 32-pixel tiles, 2 pixels apart
        assert image.size == (3 * 34 + 2, 2 * 34 + 2)
        strip = np.asarray(image)
    tile = strip[2:34, 2:34]
    np.testing.assert_array_equal(tile[::4, ::4], to_uint8(rows[0])[0])
    np.testing.assert_array_equal(tile[3::4, 3::4], to_uint8(rows[0])[0])


def test_save_strip_with_labels_grows_and_draws_text(tmp_path):
    rows = [_images(4, seed=1), _images(4, seed=2)]
    labels = [f"σ={s:.2f}" for s in (0.1, 0.5, 2.0, 10.0)]
    plain = save_strip(rows, tmp_path / "plain.png")
    labelled = save_strip(rows, tmp_path / "labelled.png", labels=labels, row_labels=["x", "x0 estimate"])
    with Image.open(plain) as a, Image.open(labelled) as b:
        assert b.size[0] > a.size[0] and b.size[1] > a.size[1]
        below = np.asarray(b)[-10:]
    assert (below < 128).any()  # dark caption text on the white margin under the tiles


def test_save_strip_checks_label_count(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        save_strip([_images(3)], tmp_path / "s.png", labels=["a", "b"])


def test_plot_loss(tmp_path):
    csv_path = tmp_path / "log.csv"
    rng = np.random.default_rng(0)
    lines = ["step,loss,lr"] + [f"{step},{0.5 * np.exp(-step / 300) + 0.05 * rng.random():.5f},0.001"
                                 for step in range(0, 1000, 10)]
    csv_path.write_text("\n".join(lines) + "\n12")  # a half-written last line is ignored
    png = plot_loss(csv_path, tmp_path / "plots" / "loss.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    assert not (tmp_path / "plots" / "loss.png.tmp").exists()


def test_plot_loss_needs_the_columns(tmp_path):
    csv_path = tmp_path / "log.csv"
    csv_path.write_text("step,lr\n1,0.1\n")
    with pytest.raises(ValueError, match="step and loss"):
        plot_loss(csv_path, tmp_path / "loss.png")


def test_contact_sheet_marks_the_corners_a_direction_joins(tmp_path):
    images = np.zeros((3, 32, 32, 3), np.uint8)
    boxes = [[(1, 4, 4, 28, 20, 1)], [(1, 4, 4, 28, 20, -1)], [(1, 4, 4, 28, 20)]]  # +1, -1, and no direction
    sheet = np.asarray(Image.open(save_contact_sheet(images, boxes, ["a", "b"], tmp_path / "s.png", scale=2)))
    color = np.array(BOX_COLORS[1])
    legend, padding = 20, 4

    def marked(i, corner):  # is the pixel 2 px inside this corner of image i's box painted in the class color?
        left = padding + i * (64 + padding)
        x = left + (4 * 2 + 2 if corner[0] == "l" else 28 * 2 - 3)
        y = legend + padding + (4 * 2 + 2 if corner[1] == "t" else 20 * 2 - 3)
        return np.array_equal(sheet[y, x], color)

    assert [marked(0, c) for c in ("lt", "rb", "lb", "rt")] == [True, True, False, False]
    assert [marked(1, c) for c in ("lt", "rb", "lb", "rt")] == [False, False, True, True]
    assert not any(marked(2, c) for c in ("lt", "rb", "lb", "rt"))
