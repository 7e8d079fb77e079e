"""Datasets as users hand them over: 16-bit, float and transparent images, FIFOs where files belong, COCO
files that reach outside or repeat ids, byte order marks, other encodings, decompression bombs, deep JSON.

Each test writes the bad file in tmp_path and checks what loads (the numbers) or the one-line message.
"""

import json
import os
import re
import signal
import struct
import warnings
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from diffusely.data import DataError, load_dataset
from diffusely.data.detection import read_coco, read_detection, read_yolo
from diffusely.data.folder import load_image


# ---------------------------------------------------------------------------------------------- helpers

def png16(path, values: np.ndarray) -> None:
    """A 16-bit PNG of (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) RGB or (H, W, 4) RGBA uint16 values,
    written by hand: Pillow cannot write 16-bit colour."""
    values = values if values.ndim == 3 else values[..., None]
    h, w, c = values.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def gradient16(size: int = 32) -> np.ndarray:
    """(size, size) uint16 spanning 0..65535 in steps that no 8-bit image holds."""
    return np.linspace(0, 65535, size * size).round().astype(np.uint16).reshape(size, size)


def rounded8(values: np.ndarray) -> np.ndarray:
    return np.rint(values.astype(np.float64) * 255 / 65535)


def write_yolo(root, names=("a",), images=("a",), train="images") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "images" / f"{name}.png")
        (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text(f"names: [{', '.join(names)}]\ntrain: {train}\n")


def write_coco(path, file_names, image_ids=None, category_ids=(1,)) -> None:
    image_ids = image_ids or list(range(1, len(file_names) + 1))
    spec = {"images": [{"id": i, "file_name": f, "width": 8, "height": 8} for i, f in zip(image_ids, file_names)],
            "annotations": [{"id": 1, "image_id": image_ids[0], "category_id": category_ids[0], "bbox": [1, 1, 4, 4]}],
            "categories": [{"id": c, "name": f"c{k}"} for k, c in enumerate(category_ids)]}
    path.write_text(json.dumps(spec))


@contextmanager
def deadline(seconds: int = 5):
    """Fail instead of hanging: open() on a FIFO waits for a writer forever. (pytest.fail, not TimeoutError:
    that is an OSError, which a loader skipping unreadable files would swallow.)"""
    def expire(signum, frame):
        pytest.fail(f"still blocked after {seconds} s: a FIFO was opened")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def conversion_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "diffusely.data.images" in str(w.message)]


# ---------------------------------------------------------------------------------------------- images as they are

@pytest.mark.parametrize("channels", [3, 1])
def test_16bit_gray_png_is_scaled_not_clipped_in_a_folder(tmp_path, channels):
    values = gradient16()
    Image.fromarray(values).save(tmp_path / "g.png")  # Pillow writes I;16 as a 16-bit gray PNG
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(str(tmp_path), 32, channels=channels)
    error = np.abs(data.images[0].astype(np.float64) - rounded8(values)[..., None])
    assert error.max() <= 1 and data.images[0].max() == 255 and data.images[0].min() == 0
    assert len(np.unique(data.images[0])) > 200  # a clipped load has a handful of levels, then 255
    assert any("1 16-bit, scaled to 8 bits" in m for m in conversion_warnings(caught))


def test_16bit_rgb_and_rgba_load_within_a_level_and_are_counted_once(tmp_path):
    values = gradient16()
    rgb = np.stack([values, values[::-1], values.T], -1)
    png16(tmp_path / "rgb.png", rgb)
    png16(tmp_path / "rgba.png", np.concatenate([rgb, np.full((32, 32, 1), 65535, np.uint16)], -1))
    png16(tmp_path / "gray.png", values)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(str(tmp_path), 32)
    for image in data.images:  # gray.png, rgb.png, rgba.png in sorted order
        assert image.dtype == np.uint8
    assert np.abs(data.images[1].astype(float) - rounded8(rgb)).max() <= 1
    assert np.abs(data.images[2].astype(float) - rounded8(rgb)).max() <= 1
    messages = conversion_warnings(caught)
    assert len(messages) == 1 and "of 3 image(s)" in messages[0] and "3 16-bit" in messages[0]


def test_float_image_in_0_1_is_scaled_to_0_255(tmp_path):
    values = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(values, "F").save(tmp_path / "f.tiff")
    (tmp_path / "f.tiff").rename(tmp_path / "f.png")  # the folder loader goes by extension; Pillow by content
    with pytest.warns(UserWarning, match="1 floating point, scaled to 8 bits"):
        data = load_dataset(str(tmp_path), 16, channels=1)
    assert np.abs(data.images[0, ..., 0] - np.rint(values * 255)).max() <= 1


def test_float_image_out_of_range_is_refused_naming_the_file(tmp_path):
    Image.fromarray(np.full((8, 8), -3.0, np.float32), "F").save(tmp_path / "f.tiff")
    with pytest.raises(DataError, match=r"f\.tiff as an image \(float values -3\.\.-3\); a float image must hold "
                                        r"0\.\.1 or 0\.\.255"):
        load_image(tmp_path / "f.tiff", 8)


def test_alpha_is_composited_on_white_and_full_transparency_is_named(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 0)      # hidden red: transparent
    rgba[:, 4:6] = (0, 0, 255, 255)   # opaque blue
    rgba[:, 6:] = (0, 0, 0, 128)      # half-transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(tmp_path / "b.png")  # nothing visible at all
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(str(tmp_path), 8)
    image = data.images[0].astype(int)
    assert (image[:, :4] == 255).all()
    assert (image[:, 4:6] == (0, 0, 255)).all()
    assert np.abs(image[:, 6:] - 127).max() <= 1
    assert (data.images[1] == 255).all()
    (message,) = conversion_warnings(caught)
    assert "1 with transparency, composited on white (e.g." in message and "a.png" in message
    assert "1 fully transparent, loaded as plain white" in message and "b.png" in message


def test_16bit_gray_through_yolo_coco_and_forward(tmp_path):
    values = gradient16()
    write_yolo(tmp_path / "yolo")
    Image.fromarray(values).save(tmp_path / "yolo" / "images" / "a.png")
    (tmp_path / "coco").mkdir()
    Image.fromarray(values).save(tmp_path / "coco" / "a.png")
    write_coco(tmp_path / "coco" / "annotations.json", ["a.png"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = [load_dataset(str(tmp_path / "yolo"), 32, directions="labels").images[0],
                  load_dataset(str(tmp_path / "coco"), 32, channels=1, directions="labels").images[0],
                  load_image(tmp_path / "coco" / "a.png", 32)]
    for image in loaded:
        assert np.abs(image.astype(float) - rounded8(values)[..., None]).max() <= 1
    assert len(conversion_warnings(caught)) == 3  # one per dataset, one for the single image


# ---------------------------------------------------------------------------------------------- regular files only

def test_fifo_listed_in_a_yolo_train_list_is_refused_not_opened(tmp_path):
    write_yolo(tmp_path)
    os.mkfifo(tmp_path / "images" / "pipe.png")
    (tmp_path / "train.txt").write_text("images/a.png\nimages/pipe.png\n")
    (tmp_path / "data.yaml").write_text("names: [a]\ntrain: train.txt\n")
    with deadline(), pytest.raises(DataError, match=r"pipe\.png is a FIFO \(named pipe\), not a file; the image must "
                                                    r"be a regular file \(it was not opened\)"):
        load_dataset(str(tmp_path), 8)


def test_fifo_as_the_train_list_and_folder_as_a_label_are_refused(tmp_path):
    write_yolo(tmp_path)
    os.mkfifo(tmp_path / "train.txt")
    (tmp_path / "data.yaml").write_text("names: [a]\ntrain: train.txt\n")
    with deadline(), pytest.raises(DataError, match=r"train\.txt is a FIFO"):
        read_yolo(tmp_path / "data.yaml")
    (tmp_path / "data.yaml").write_text("names: [a]\ntrain: images\n")
    (tmp_path / "labels" / "a.txt").unlink()
    (tmp_path / "labels" / "a.txt").mkdir()
    with pytest.raises(DataError, match=r"labels/a\.txt is a folder, not a file; the label file must be a regular"):
        read_yolo(tmp_path / "data.yaml")


def test_fifo_as_a_label_file_is_refused(tmp_path):
    write_yolo(tmp_path)
    (tmp_path / "labels" / "a.txt").unlink()
    os.mkfifo(tmp_path / "labels" / "a.txt")
    with deadline(), pytest.raises(DataError, match=r"a\.txt is a FIFO"):
        read_yolo(tmp_path / "data.yaml")


def test_fifo_as_a_caption_file_is_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "a.txt")
    with deadline(), pytest.raises(DataError, match=r"a\.txt is a FIFO .*the caption file must be a regular file"):
        load_dataset(str(tmp_path), 8, captions=True)


def test_fifo_named_by_a_coco_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "a.png")
    write_coco(tmp_path / "annotations.json", ["a.png"])
    with deadline(), pytest.raises(DataError, match=r"a\.png is a FIFO"):
        load_dataset(str(tmp_path), 8)


def test_fifo_given_to_forward_is_refused(tmp_path):
    os.mkfifo(tmp_path / "a.png")
    with deadline(), pytest.raises(DataError, match=r"a\.png is a FIFO"):
        load_image(tmp_path / "a.png", 8)


# ------------------------------------------------------------------------------------------ inputs that reach outside

@pytest.mark.parametrize("outside_name", ["../outside.png", "ABSOLUTE"])
def test_coco_file_name_outside_the_dataset_is_refused_unless_allowed(tmp_path, outside_name):
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "outside.png")
    (tmp_path / "ds").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "ds" / "in.png")
    name = str(tmp_path / "outside.png") if outside_name == "ABSOLUTE" else outside_name
    write_coco(tmp_path / "ds" / "annotations.json", ["in.png", name])
    with pytest.raises(DataError, match=r"1 file_name\(s\) reach outside the dataset .*image 2 .*outside\.png.*"
                                        r"--allow-outside \(outside=True"):
        read_detection(tmp_path / "ds")
    allowed = read_coco(tmp_path / "ds" / "annotations.json", outside=True)
    assert [item.path.name for item in allowed.images] == ["in.png", "outside.png"]
    data = load_dataset(str(tmp_path / "ds"), 8, outside=True, directions="labels")
    assert data.images[1, 0, 0].tolist() == [200, 0, 0]


def test_allow_outside_through_the_cli_is_kept_by_the_run(tmp_path):
    from click.testing import CliRunner

    from diffusely.cli import main
    from helpers import TINY_ARGS

    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "outside.png")
    (tmp_path / "ds").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "ds" / "in.png")
    write_coco(tmp_path / "ds" / "annotations.json", ["in.png", "../outside.png"])
    tiny = {"train": [*TINY_ARGS], "train-autoencoder": ["--channels", "8,8,8", "--batch-size", "2", "--quiet"]}
    for command, args in tiny.items():
        run = tmp_path / command
        new = [command, str(tmp_path / "ds"), "--out", str(run), "--steps", "1", "--image-size", "16", *args]
        r = CliRunner().invoke(main, new)
        assert r.exit_code == 1 and "reach outside the dataset" in r.output and "--allow-outside" in r.output, r.output
        assert not (run / "config.json").exists()
        r = CliRunner().invoke(main, [*new, "--allow-outside"])
        assert r.exit_code == 0, r.output
        assert json.loads((run / "config.json").read_text())["data"]["outside"] is True
        r = CliRunner().invoke(main, [command, "--out", str(run), "--resume", "--steps", "2", "--quiet"])
        assert r.exit_code == 0 and "to 2" in r.output, r.output  # the data loads again: the run kept the flag


def test_duplicate_coco_image_ids_are_an_error_naming_them(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    write_coco(tmp_path / "annotations.json", ["a.png", "b.png", "c.png"], image_ids=[7, 7, 9])
    with pytest.raises(DataError, match=r"annotations\.json lists image id\(s\) 7 more than once"):
        read_coco(tmp_path / "annotations.json")


def test_duplicate_coco_category_ids_are_an_error_naming_them(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    write_coco(tmp_path / "annotations.json", ["a.png"], category_ids=(1, 3, 3))
    with pytest.raises(DataError, match=r"lists category id\(s\) 3 more than once"):
        read_coco(tmp_path / "annotations.json")


def test_duplicate_yolo_class_names_are_an_error(tmp_path):
    write_yolo(tmp_path, names=("scratch", "crack", "scratch"))
    with pytest.raises(DataError, match=r"'names' in .*data\.yaml lists 'scratch' more than once"):
        read_yolo(tmp_path / "data.yaml")


@pytest.mark.parametrize("names", ["[*g, *g]", "{0: *g, 1: b}"])
def test_yolo_names_of_nested_yaml_aliases_are_refused_at_once(tmp_path, names):
    # a billion laughs: 9 ** 7 names spelled out in the message (25 MB) at 7 levels; one more would not fit in memory
    write_yolo(tmp_path, names=("a",))
    levels = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdef", "bcdefg"))
    (tmp_path / "data.yaml").write_text(f"a: &a [x, x, x, x, x, x, x, x, x]\n{levels}names: {names}\ntrain: images\n")
    with deadline(5), pytest.raises(DataError, match=r"^'names' in \S*data\.yaml holds a list where a class name "
                                                     r"belongs; give each class a name") as e:
        read_yolo(tmp_path / "data.yaml")
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("spec, message", [
    ("names: [a]\ntrain: [images, [images]]\n", "'train' holds a list where a path belongs; give a folder or a .txt "
                                                 "list, e.g. train: images/train"),
    ("names: [a]\ntrain: [null]\n", "'train' holds nothing where a path belongs"),
    ("names: [a]\ntrain: images\npath: {a: 1}\n", "'path' holds a dict where a path belongs; give the dataset's "
                                                   "folder, e.g. path: ."),
])
def test_yolo_paths_that_are_not_text_are_named(tmp_path, spec, message):
    write_yolo(tmp_path)
    (tmp_path / "data.yaml").write_text(spec)  # these were TypeError tracebacks from Path()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'data.yaml'}: {message}")):
        read_yolo(tmp_path / "data.yaml")


# ---------------------------------------------------------------------------------------------- messages

@pytest.mark.parametrize("table,text", [("metadata.csv", "file_name,text\na.png,a red circle\n"),
                                        ("metadata.jsonl", '{"file_name": "a.png", "text": "a red circle"}\n')])
def test_byte_order_mark_in_a_caption_table_is_accepted(tmp_path, table, text):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / table).write_text(text, encoding="utf-8-sig")  # what Excel's "CSV UTF-8" writes
    assert load_dataset(str(tmp_path), 8, captions=True).captions == ["a red circle"]


def test_latin1_caption_file_names_the_file_and_the_encoding(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("un caf\u00e9 rouge".encode("latin-1"))
    with pytest.raises(DataError, match=r"the caption file .*a\.txt is not UTF-8 text \(byte 0xe9 at offset 6\); "
                                        r"save it as UTF-8"):
        load_dataset(str(tmp_path), 8, captions=True)


def test_latin1_label_file_names_the_file_and_the_encoding(tmp_path):
    write_yolo(tmp_path)
    (tmp_path / "labels" / "a.txt").write_bytes(b"0 0.5 0.5 0.5 0.5 # \xe9\n")
    with pytest.raises(DataError, match=r"the label file .*labels/a\.txt is not UTF-8 text"):
        read_yolo(tmp_path / "data.yaml")


def test_deeply_nested_coco_file_is_named(tmp_path):
    (tmp_path / "annotations.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"annotations\.json nests its JSON too deep to read"):
        load_dataset(str(tmp_path), 8)


@pytest.mark.parametrize("side", [10_000, 20_000])  # over Pillow's limit (a warning), and over twice it (an error)
def test_decompression_bomb_is_one_line_naming_the_file(tmp_path, side):
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # only the header: Pillow judges the stated size
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                                        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))
    with pytest.raises(DataError) as error:
        load_image(tmp_path / "bomb.png", 8)
    message = str(error.value)
    assert "bomb.png" in message and "decompression bomb" in message and "MAX_IMAGE_PIXELS" in message
    assert "\n" not in message and f"{side * side} pixels" in message
