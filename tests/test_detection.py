"""Detection data: the built-in defects, YOLO and COCO reading and writing, layout masks."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusely.data import DataError, load_dataset
from diffusely.data.defects import CLASS_FREQUENCIES, CLASS_NAMES, render_defects
from diffusely.data.coco import coco_dict, read_coco
from diffusely.data.detection import estimate_direction, read_detection
from diffusely.data.yolo import data_yaml_text, read_yolo, yolo_label_text
from diffusely.layout import box_direction, direction_of, flip_boxes, pack_boxes, render_layout


# ---------------------------------------------------------------------------------------------- defects

def test_defects_are_deterministic_and_regenerable_by_index():
    a = render_defects(6, size=32, seed=3)
    b = render_defects(2, size=32, seed=3, start=4)
    assert np.array_equal(a.images[4:], b.images) and a.boxes[4:] == b.boxes
    assert a.images.shape == (6, 32, 32, 3) and a.images.dtype == np.uint8


def test_defect_boxes_are_tight_around_what_changed():
    """Each box is exactly the pixels its defect altered: inside, the image differs from the clean surface;
    one pixel outside the box on every side (where no other defect is), it does not."""
    data = render_defects(40, size=64, seed=0)
    checked = 0
    for i in range(len(data)):
        rng = np.random.default_rng([0, i, 7])
        from diffusely.data.defects import _surface

        clean, _ = _surface(rng, 64)
        clean = np.clip(np.rint(clean), 0, 255).astype(np.int16)
        changed = np.abs(data.images[i].astype(np.int16) - clean).max(-1) > 4
        for cls, x0, y0, x1, y1, _ in data.boxes[i]:
            x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
            assert changed[y0:y1, x0:x1].any()
            if len(data.boxes[i]) == 1:
                ring = changed.copy()
                ring[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = False
                assert not ring.any(), f"image {i}: pixels changed outside the box of its {CLASS_NAMES[cls]}"
                checked += 1
    assert checked >= 10


def test_directed_scratches_run_along_the_diagonal_their_direction_names():
    """A scratch is a straight line, so its tight box has it as a diagonal: with direction +1 the pixels at the
    box's top-left and bottom-right corners changed and those at the other two did not; with -1 the reverse."""
    data = render_defects(200, size=64, seed=4)
    from diffusely.data.defects import _surface

    seen = {-1: 0, 0: 0, 1: 0}
    for i in range(len(data)):
        if len(data.boxes[i]) != 1 or data.boxes[i][0][0] != CLASS_NAMES.index("scratch"):
            continue
        _, x0, y0, x1, y1, direction = data.boxes[i][0]
        seen[direction] += 1
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        if direction == 0 or min(x1 - x0, y1 - y0) < 8:
            continue
        clean, _ = _surface(np.random.default_rng([4, i, 7]), 64)
        changed = np.abs(data.images[i].astype(np.int16) - np.clip(np.rint(clean), 0, 255)).max(-1) > 4
        corner = lambda y, x: changed[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any()  # noqa: E731
        main_both, main_any = corner(y0, x0) and corner(y1 - 1, x1 - 1), corner(y0, x0) or corner(y1 - 1, x1 - 1)
        anti_both, anti_any = corner(y0, x1 - 1) and corner(y1 - 1, x0), corner(y0, x1 - 1) or corner(y1 - 1, x0)
        if direction == 1:
            assert main_both and not anti_any, f"image {i}: direction 1"
        else:
            assert anti_both and not main_any, f"image {i}: direction -1"
    assert seen[1] > 5 and seen[-1] > 5  # both directions occur


def test_direction_of_points():
    t = np.linspace(0, 10, 30)
    assert direction_of(t, 2 * t + 5) == 1 and direction_of(t, 20 - t) == -1
    assert direction_of(np.cos(t), np.sin(t)) == 0  # round: no direction
    assert direction_of(t, np.zeros_like(t)) == 0 and direction_of([1.0], [2.0]) == 0  # axis-aligned, one point
    weights = np.r_[np.ones(30), np.zeros(30)]  # only the weighted points count
    assert direction_of(np.r_[t, t], np.r_[t, -5 * t], weights) == 1


def test_defect_classes_follow_their_frequencies_with_a_rare_class():
    data = render_defects(600, size=32, seed=1)
    counts = np.bincount([b[0] for boxes in data.boxes for b in boxes], minlength=4)
    share = counts / counts.sum()
    assert np.abs(share - CLASS_FREQUENCIES).max() < 0.05
    assert share[CLASS_NAMES.index("crack")] < 0.12  # the rare class is rare
    assert sum(1 for boxes in data.boxes if not boxes) > 30  # clean surfaces too


def test_defects_builtin_loads_with_boxes_and_captions():
    data = load_dataset("defects", 32)
    assert data.images.shape[1:] == (32, 32, 3) and data.labels is None
    assert data.class_names == CLASS_NAMES and len(data.boxes) == len(data) == len(data.captions)
    with pytest.raises(DataError, match="max_shapes"):
        load_dataset("defects", 32, max_shapes=2)


# ---------------------------------------------------------------------------------------------- YOLO

def _yolo_dataset(root, images, boxes, names, split="train", directions=True):
    """Write images (N, S, S, 3) and pixel boxes as an Ultralytics dataset with our writers (directed boxes
    as segment lines, unless not `directions`)."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(data_yaml_text(root, names))
    size = images.shape[1]
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
        Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
        (root / "labels" / split / f"{i:03d}.txt").write_text(
            yolo_label_text(image_boxes if directions else [b[:5] for b in image_boxes], size, size))


def test_yolo_round_trip_within_a_pixel(tmp_path):
    data = render_defects(12, size=64, seed=2)
    _yolo_dataset(tmp_path, data.images, data.boxes, CLASS_NAMES)
    loaded = load_dataset(str(tmp_path), 64)
    assert loaded.class_names == CLASS_NAMES
    assert np.array_equal(loaded.images, data.images)
    for got, want in zip(loaded.boxes, data.boxes):
        assert [b[0] for b in got] == [b[0] for b in want]
        assert np.allclose([b[1:5] for b in got], [b[1:5] for b in want], atol=1.0) if want else not got
        # directed boxes travel as segment lines and come back with their direction; the others as boxes
        assert [b[5] if len(b) > 5 else 0 for b in got] == [b[5] for b in want]
    assert any(b[5] for boxes in data.boxes for b in boxes)


def test_yolo_boxes_move_with_resize_and_center_crop(tmp_path):
    """A 200 x 100 image loaded at 50: scaled by 1/2 to 100 x 50, then 25 pixels cropped off each side."""
    (tmp_path / "images/train").mkdir(parents=True)
    (tmp_path / "labels/train").mkdir(parents=True)
    Image.new("RGB", (200, 100), (90, 90, 90)).save(tmp_path / "images/train/a.png")
    # a box at x 80..120, y 20..60 in the file: after loading x 15..35, y 10..30
    (tmp_path / "labels/train/a.txt").write_text("1 0.5 0.4 0.2 0.4\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [a, b]\n")
    data = load_dataset(str(tmp_path), 50)
    assert data.boxes == [[(1, pytest.approx(15.0), pytest.approx(10.0), pytest.approx(35.0), pytest.approx(30.0))]]


def test_polygon_labels_give_their_direction(tmp_path):
    """A YOLO segment line and a COCO polygon along a diagonal: box and direction; a plain box has none."""
    (tmp_path / "images/train").mkdir(parents=True)
    (tmp_path / "labels/train").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "images/train/a.png")
    (tmp_path / "labels/train/a.txt").write_text("0 0.1 0.8 0.12 0.82 0.62 0.32 0.6 0.3\n"  # "/": up and right
                                                  "1 0.1 0.1 0.12 0.08 0.52 0.48 0.5 0.5\n"  # "\\": down and right
                                                  "1 0.5 0.5 0.1 0.1\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [scratch, crack]\n")
    boxes = read_yolo(tmp_path / "data.yaml").images[0].boxes
    assert [len(b) for b in boxes] == [6, 6, 5] and boxes[0][5] == -1 and boxes[1][5] == 1
    assert boxes[0][:5] == (0, pytest.approx(0.1), pytest.approx(0.3), pytest.approx(0.62), pytest.approx(0.82))
    assert load_dataset(str(tmp_path), 40).boxes[0][0][5] == -1  # kept through loading
    spec = {"images": [{"id": 1, "file_name": "images/train/a.png", "width": 40, "height": 40}],
            "categories": [{"id": 1, "name": "scratch"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 16],
                             "segmentation": [[4, 4, 5, 4, 20, 19, 20, 20, 19, 20, 4, 5]]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 16]}]}
    (tmp_path / "c.json").write_text(json.dumps(spec))
    coco = read_coco(tmp_path / "c.json").images[0].boxes
    assert coco[0][5] == 1 and len(coco[1]) == 5


def test_yolo_malformed_lines_are_reported_with_file_and_line(tmp_path):
    _yolo_dataset(tmp_path, render_defects(2, size=32).images, [[], []], CLASS_NAMES)
    (tmp_path / "labels/train/001.txt").write_text("0 0.5 0.5 0.1 0.1\n\n0 0.5 0.5 0.1\n")
    with pytest.raises(DataError, match=r"1 malformed label line.*001\.txt:3"):
        read_yolo(tmp_path / "data.yaml")
    (tmp_path / "labels/train/001.txt").write_text("x 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"001\.txt:1 'x 0.5"):
        read_yolo(tmp_path / "data.yaml")
    (tmp_path / "labels/train/001.txt").write_text("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"unknown class id.*ids 0\.\.3.*001\.txt:2 class 7"):
        read_yolo(tmp_path / "data.yaml")


def test_yolo_counts_boxes_outside_and_unlabelled_images(tmp_path):
    _yolo_dataset(tmp_path, render_defects(4, size=32).images, [[], [], [], []], CLASS_NAMES)
    (tmp_path / "labels/train/000.txt").write_text("0 0.95 0.5 0.2 0.2\n")  # reaches past the right edge
    (tmp_path / "labels/train/001.txt").write_text("0 1.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n")  # first wholly outside
    (tmp_path / "labels/train/002.txt").unlink()
    with pytest.warns(UserWarning) as caught:
        labelled = read_yolo(tmp_path / "data.yaml")
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 box(es) reaching outside their image, clipped" in messages and "000.txt:1" in messages
    assert "1 box(es) wholly outside" in messages and "001.txt:1" in messages
    assert "1 image(s) without a label file" in messages and "002.txt" in messages
    boxes = {p.path.name: p.boxes for p in labelled.images}
    assert boxes["000.png"] == [(0, pytest.approx(0.85), pytest.approx(0.4), 1.0, pytest.approx(0.6))]
    assert [b[0] for b in boxes["001.png"]] == [2] and boxes["002.png"] == [] and boxes["003.png"] == []


def test_yolo_names_as_a_mapping_and_missing_pieces(tmp_path):
    _yolo_dataset(tmp_path, render_defects(1, size=32).images, [[]], CLASS_NAMES)
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: {0: dent, 1: hole}\n")
    assert read_yolo(tmp_path / "data.yaml").class_names == ["dent", "hole"]
    (tmp_path / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(DataError, match="no 'names'"):
        read_detection(tmp_path)
    (tmp_path / "data.yaml").write_text("names: [a]\nval: images/val\n")
    with pytest.raises(DataError, match="no 'train' images"):
        read_detection(tmp_path)


# ---------------------------------------------------------------------------------------------- COCO

def test_coco_round_trip_within_a_pixel(tmp_path):
    data = render_defects(8, size=64, seed=5)
    (tmp_path / "images").mkdir()
    for i, image in enumerate(data.images):
        Image.fromarray(image).save(tmp_path / "images" / f"{i}.png")
    spec = coco_dict([(f"{i}.png", 64, 64, b) for i, b in enumerate(data.boxes)], CLASS_NAMES)
    (tmp_path / "annotations.json").write_text(json.dumps(spec))
    with warnings.catch_warnings(record=True):  # clean surfaces have no annotations: warned, counted
        loaded = load_dataset(str(tmp_path), 64)
    assert loaded.class_names == CLASS_NAMES and np.array_equal(loaded.images, data.images)
    for got, want in zip(loaded.boxes, data.boxes):
        assert [b[0] for b in got] == [b[0] for b in want]
        if want:
            assert np.allclose([b[1:5] for b in got], [b[1:5] for b in want], atol=1.0)
            assert [b[5] if len(b) > 5 else 0 for b in got] == [b[5] for b in want]  # via the segmentation


def test_coco_category_ids_map_in_order_and_errors_name_the_annotation(tmp_path):
    Image.new("RGB", (40, 20)).save(tmp_path / "a.png")
    spec = {"images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 20}],
            "categories": [{"id": 9, "name": "stain"}, {"id": 3, "name": "scratch"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 9, "bbox": [4, 2, 10, 6]}]}
    (tmp_path / "c.json").write_text(json.dumps(spec))
    labelled = read_coco(tmp_path / "c.json")
    assert labelled.class_names == ["scratch", "stain"]
    assert labelled.images[0].boxes == [(1, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.35), pytest.approx(0.4))]
    spec["annotations"].append({"id": 5, "image_id": 7, "category_id": 4, "bbox": [0, 0, 1, 1]})
    (tmp_path / "c.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="category_id the file does not list.*annotation 5 category_id 4"):
        read_coco(tmp_path / "c.json")
    spec["annotations"][-1] = {"id": 6, "image_id": 8, "category_id": 3, "bbox": [0, 0, 1, 1]}
    (tmp_path / "c.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="image id the file does not list.*annotation 6 image_id 8"):
        read_coco(tmp_path / "c.json")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(DataError, match="not a COCO detection file"):
        read_coco(tmp_path / "c.json")


# ---------------------------------------------------------------------------------------------- layouts

def test_layout_mask_lies_exactly_where_the_box_is():
    boxes = pack_boxes([[(2, 3.0, 4.0, 10.0, 6.5)], []])
    layout = render_layout(boxes, 4, (16, 16), 16)
    assert layout.shape == (2, 5, 16, 16)
    expected = torch.zeros(16, 16)
    expected[4:6, 3:10] = 1.0
    expected[6, 3:10] = 0.5  # the box ends half way through row 6
    assert torch.equal(layout[0, 2], expected)
    assert layout[0, [0, 1, 3]].abs().sum() == 0 and (layout[:, 4] == 1).all()  # given, both
    assert layout[1, :4].abs().sum() == 0  # an empty layout: no masks
    null = render_layout(boxes, 4, (16, 16), 16, given=torch.tensor([False, True]))
    assert null[0].abs().sum() == 0 and torch.equal(null[1], layout[1])


def test_layout_on_a_coarser_grid_keeps_the_covered_fraction():
    """A latent run: an 8 x 8 grid for a 32-pixel image; each cell covers 4 x 4 pixels."""
    layout = render_layout(pack_boxes([[(0, 2.0, 0.0, 8.0, 4.0)]]), 1, (8, 8), 32)
    assert layout[0, 0, 0, :3].tolist() == [0.5, 1.0, 0.0] and layout[0, 0, 1:].abs().sum() == 0


def test_flipped_boxes_follow_the_flipped_image():
    boxes = pack_boxes([[(1, 2.0, 3.0, 5.0, 9.0, 1)], []])
    a = render_layout(flip_boxes(boxes, 16), 2, (16, 16), 16, lines=True)
    b = render_layout(boxes, 2, (16, 16), 16, lines=True).flip(-1)
    assert a[0, 3].sum() > 1 and torch.allclose(a, b, atol=1 / 16)  # up to a subsample on the line's edge


def test_lines_land_in_their_own_image_of_a_batch():
    boxes = [[], [(0, 2.0, 2.0, 12.0, 9.0, 1), (1, 1.0, 11.0, 6.0, 15.0)], [(1, 3.0, 3.0, 14.0, 14.0, -1)]]
    batch = render_layout(pack_boxes(boxes), 2, (16, 16), 16, lines=True)
    for i, image in enumerate(boxes):
        assert torch.equal(batch[i], render_layout(pack_boxes([image]), 2, (16, 16), 16, lines=True)[0])
    assert batch[0, 3].sum() == 0 and batch[1, 3].sum() > 0 and batch[2, 3].sum() > 0


def test_line_channel_draws_the_named_diagonal():
    """A 16 x 16 box at (8, 8) in a 32-pixel image: direction +1 covers the cells on its main diagonal,
    -1 those on the other, 0 none; a coarser grid keeps the line's covered fraction."""
    def line(direction, grid=32):
        boxes = pack_boxes([[(0, 8.0, 8.0, 24.0, 24.0, direction)]])
        layout = render_layout(boxes, 1, (grid, grid), 32, lines=True)
        assert layout.shape == (1, 3, grid, grid) and (layout[0, 1] == 1).all()
        return layout[0, 2]

    down, up = line(1), line(-1)
    cells = torch.arange(9, 23)
    apart = torch.cat([torch.arange(9, 14), torch.arange(18, 23)])  # the diagonals cross in the middle
    assert (down[cells, cells] == 1).all() and (down[apart, 31 - apart] == 0).all()
    assert torch.equal(up, down.flip(-1)) and line(0).abs().sum() == 0
    assert down[:8].abs().sum() == 0 and down[24:].abs().sum() == 0  # the line stays in its box
    # a 1.5-pixel line about 16 * sqrt(2) pixels long covers about 34 pixels, on either grid
    assert 30 < down.sum() < 38 and abs(line(1, grid=8).sum() * 16 - down.sum()) < 2


def test_plain_boxes_make_a_run_without_the_line_channel_that_resumes_and_samples(tmp_path):
    """A YOLO folder of plain boxes trained with --directions labels has no directions: its run reads K + 1
    channels (as runs made before directions did), resumes, and samples layouts whether or not they carry a
    direction."""
    from click.testing import CliRunner

    from diffusely.checkpoint import load_run
    from diffusely.cli import main
    from diffusely.pipelines import generate

    data = render_defects(8, size=32, seed=2)
    assert any(CLASS_NAMES[b[0]] == "scratch" and b[5] for boxes in data.boxes for b in boxes)  # lines to read
    _yolo_dataset(tmp_path / "parts", data.images, data.boxes, CLASS_NAMES, directions=False)
    args = ["--image-size", "32", "--channels", "16,32", "--blocks-per-level", "1", "--attention-levels", "1",
            "--batch-size", "4", "--quiet", "--checkpoint-every", "2", "--sample-every", "100"]
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tmp_path / "parts"), "--layout", "--directions", "labels",
                                  "--out", str(run_dir), "--steps", "2", *args])
    assert r.exit_code == 0, r.output
    assert load_run(run_dir).config.model.layout_channels == 5
    r = CliRunner().invoke(main, ["train", "--out", str(run_dir), "--resume", "--steps", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    run = load_run(run_dir)
    assert run.step == 3 and run.config.model.layout_channels == 5
    info = CliRunner().invoke(main, ["info", str(run_dir)])
    assert "as masks (diffusely synth)" in info.output and "directions" not in info.output
    layouts = [[(0, 2.0, 2.0, 20.0, 12.0, 1)], [(1, 4.0, 4.0, 9.0, 30.0)]]
    images = torch.cat(list(generate(run, 2, layouts=layouts, steps=2, progress=False)))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    # synth from such a run writes no direction it was asked for, and says so
    from diffusely.pipelines.synth import synthesize

    (tmp_path / "l.json").write_text('[{"class": "scratch", "box": [0.1, 0.1, 0.6, 0.4], "direction": -1}]')
    with pytest.warns(UserWarning, match="trained without directions, so the layouts' directions are ignored"):
        synthesize(run, tmp_path / "ds", 2, layouts_file=tmp_path / "l.json", steps=2, progress=False, val_fraction=0.5)
    labels = sorted((tmp_path / "ds" / "labels").glob("*/*.txt"))
    assert len(labels) == 2 and all(len(f.read_text().split()) == 5 for f in labels)


def test_layout_channels_that_do_not_fit_the_classes_are_refused(tmp_path):
    from diffusely.config import DataConfig, RunConfig
    from diffusely.train.loop import prepare_data

    config = RunConfig(data=DataConfig(source="defects", image_size=32, layout=True))
    config.model.layout_channels = 5  # a run made before directions: kept as it is
    prepare_data(config)
    assert config.model.layout_channels == 5
    config.model.layout_channels = 9
    with pytest.raises(DataError, match="reads 9 layout channels, which does not fit the 4 classes of defects"):
        prepare_data(config)


def test_estimate_direction_reads_a_line_off_the_pixels():
    rng = np.random.default_rng(0)
    image = (120 + 8 * rng.standard_normal((48, 48, 3))).clip(0, 255).astype(np.uint8)
    down, up, disc, bar = image.copy(), image.copy(), image.copy(), image.copy()
    for t in np.linspace(0, 1, 200):  # lines from corner to corner of the box (8, 10)-(40, 30)
        x, y = int(8 + 32 * t), int(10 + 20 * t)
        down[y, x] = 250
        up[40 - y, x] = 250
    yy, xx = np.mgrid[:48, :48]
    disc[(yy - 20) ** 2 + (xx - 24) ** 2 <= 36] = 30
    bar[18:22, 8:40] = 30
    box = (8, 10, 41, 31)
    assert estimate_direction(down, box) == 1 and estimate_direction(up, box) == -1
    assert estimate_direction(disc, (17, 13, 32, 28)) == 0 and estimate_direction(bar, (8, 18, 40, 22)) == 0
    assert estimate_direction(down[..., 0], box) == 1  # grayscale
    full = image.copy()
    full[np.arange(48), np.arange(48)] = 250  # corner to corner of the image, whose box has no ring outside it:
    assert estimate_direction(full, (0, 0, 48, 48)) == 1  # the box's own pixels stand in for the background
    assert estimate_direction(down, (8, 10, 11, 30)) == 0  # under 4 pixels wide: nothing to tell
    # a pixel-sized spot in a tight little box: its few most distinct pixels would correlate perfectly by chance
    for seed in range(20):
        noisy = (120 + 20 * np.random.default_rng(seed).standard_normal((16, 16, 3))).clip(0, 255).astype(np.uint8)
        noisy[6:9, 6:9] = 40
        assert estimate_direction(noisy, (5, 5, 10, 10)) == 0, seed


def test_plain_boxes_get_the_direction_their_pixels_show(tmp_path):
    """Against the built-in defects' own directions (from their pixel masks), through a plain-box YOLO folder."""
    data = render_defects(150, size=64, seed=7)
    _yolo_dataset(tmp_path, data.images, data.boxes, CLASS_NAMES, directions=False)
    with pytest.warns(UserWarning, match=r"\d+ of \d+ plain boxes .* given the diagonal direction .* --directions labels"):
        loaded = load_dataset(str(tmp_path), 64)
    found = {name: [0, 0, 0, 0] for name in CLASS_NAMES}  # directed found, directed in all, wrong way, made up
    for got, want in zip(loaded.boxes, data.boxes, strict=True):
        for g, w in zip(got, want, strict=True):
            counts, estimated, truth = found[CLASS_NAMES[w[0]]], box_direction(g), w[5]
            counts[0] += bool(truth) and estimated == truth
            counts[1] += bool(truth)
            counts[2] += bool(truth) and estimated == -truth
            counts[3] += not truth and bool(estimated)
    scratch, spot, stain = found["scratch"], found["spot"], found["stain"]
    assert scratch[1] > 50 and scratch[0] >= 0.9 * scratch[1], scratch
    assert all(counts[2] == 0 for counts in found.values()), found
    assert spot[3] + stain[3] <= 0.05 * (sum(map(len, data.boxes)) - scratch[1] - found["crack"][1]), found
    with warnings.catch_warnings():  # "labels": none read off the pixels, and nothing to warn about
        warnings.simplefilter("error")
        plain = load_dataset(str(tmp_path), 64, directions="labels")
    assert not any(box_direction(b) for boxes in plain.boxes for b in boxes)
    # a dataset with polygon labels states its directions: its plain boxes are not read (as synth writes them)
    _yolo_dataset(tmp_path / "stated", data.images, data.boxes, CLASS_NAMES)
    stated = load_dataset(str(tmp_path / "stated"), 64)
    assert [[box_direction(b) for b in boxes] for boxes in stated.boxes] == [[b[5] for b in boxes] for boxes in data.boxes]
