"""Ultralytics YOLO datasets: a data.yaml naming the classes and the splits, a label file per image.

    dataset/data.yaml            names: [scratch, crack]; train: images/train (a folder, a list, or a .txt list)
    dataset/images/train/x.png
    dataset/labels/train/x.txt   one line a box: 'class cx cy w h', or a segment: 'class x1 y1 x2 y2 ...'

Read into a DetectionSet (diffusely.data.boxes) with boxes normalised to the image, and written back by synth.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import DataError
from ..layout import box_direction, direction_of
from .boxes import BOX_WARNINGS, Box, DetectionSet, LabelledImage, box_polygon, clip_box, duplicates
from .folder import EXTENSIONS, find_images
from .reading import Notes, read_text


def _yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(read_text(path, "data.yaml"))
    except yaml.YAMLError as e:
        raise DataError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must be a YAML mapping with 'names' and 'train' (Ultralytics data.yaml)")
    return data


def _names(value, where: Path) -> list[str]:
    """YOLO class names, from a list or a {index: name} mapping with indices 0..K-1; each name once."""
    values = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
    nested = next((v for v in values if isinstance(v, (list, dict))), None)
    if nested is not None:  # before str(): YAML aliases nested a few levels deep spell out billions of items
        raise DataError(f"'names' in {where} holds a {type(nested).__name__} where a class name belongs; give "
                        f"each class a name, e.g. names: [scratch, crack]")
    names = None
    if isinstance(value, list) and value:
        names = [str(v) for v in value]
    if isinstance(value, dict) and value:
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            keys = []
        if keys == list(range(len(value))):
            names = [str(value[k] if k in value else value[str(k)]) for k in keys]
    if names is None:
        raise DataError(f"'names' in {where} must list the class names, or map 0..K-1 to them, "
                        f"e.g. names: {{0: scratch, 1: crack}}")
    repeated = duplicates(names)
    if repeated:
        raise DataError(f"'names' in {where} lists {', '.join(map(repr, repeated))} more than once; each class needs "
                        f"its own name (merge their labels into one class id, or rename one)")
    return names


def _path_text(value, key: str, data_yaml: Path) -> str:
    """A path the yaml gives under `key`, as text; a DataError for a list or mapping where a path belongs."""
    if isinstance(value, (list, dict)) or value is None:
        what = "nothing" if value is None else f"a {type(value).__name__}"
        fix = ("the dataset's folder, e.g. path: ." if key == "path"
               else f"a folder or a .txt list, e.g. {key}: images/{key}")
        raise DataError(f"{data_yaml}: '{key}' holds {what} where a path belongs; give {fix}")
    return str(value)


def _root(data_yaml: Path, spec: dict) -> Path:
    """The dataset's folder: the yaml's `path`, relative to the yaml's own folder, which is the fallback."""
    root = Path(_path_text(spec.get("path") or ".", "path", data_yaml))
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
        # Ultralytics tries a relative path from the working directory, then its datasets folder; the yaml's
        # own folder is what such a path means in a dataset handed around, and the yaml's folder is the fallback
        if not root.is_dir():
            root = data_yaml.parent.resolve()
    return root


def _split_images(data_yaml: Path, spec: dict, split: str) -> list[Path]:
    """The image paths of `split`: a folder of images, a .txt list of image paths, or a list of either."""
    root = _root(data_yaml, spec)
    if spec.get(split) is None:
        raise DataError(f"{data_yaml} names no '{split}' images; add e.g. {split}: images/{split}")
    entries = spec[split] if isinstance(spec[split], list) else [spec[split]]
    paths: list[Path] = []
    for entry in map(lambda e: _path_text(e, split, data_yaml), entries):
        p = Path(entry) if Path(entry).is_absolute() else root / entry
        if not p.exists() and str(entry).startswith("../"):
            # Roboflow exports say train: ../train/images; Ultralytics retries such a path without the ../
            p = root / str(entry)[3:]
        if p.is_dir():
            paths += find_images(p)
        elif p.suffix == ".txt" and p.exists():  # read_text refuses a FIFO or device: open() would wait forever
            lines = [line.strip() for line in read_text(p, f"'{split}' image list").splitlines() if line.strip()]
            paths += [Path(line) if Path(line).is_absolute() else (root / line).resolve() for line in lines]
        else:
            raise DataError(f"{data_yaml}: {split} entry {entry!r} is neither a folder of images nor a .txt list "
                            f"({p})")
    if not paths:
        raise DataError(f"no images in the '{split}' split of {data_yaml} (accepted extensions: {', '.join(EXTENSIONS)})")
    return paths


def read_yolo(data_yaml, split: str = "train") -> DetectionSet:
    """The images of `split` in an Ultralytics dataset (split a folder of images, a list of them, or a .txt
    listing image paths), each with the boxes of its label file (images/x.png -> labels/x.txt)."""
    data_yaml = Path(data_yaml)
    spec = _yaml(data_yaml)
    if "names" not in spec:
        raise DataError(f"{data_yaml} has no 'names': list the class names, e.g. names: [scratch, crack]")
    names = _names(spec["names"], data_yaml)
    paths = _split_images(data_yaml, spec, split)
    notes = Notes()
    images = [LabelledImage(p, _read_label_file(label_path(p), len(names), notes)) for p in paths]
    notes.raise_errors({"malformed": "malformed label line(s); each line must be 'class cx cy w h' with "
                                     "normalised coordinates (or a class and polygon points)",
                        "class": f"label line(s) with an unknown class id (data.yaml names {len(names)} classes, "
                                 f"ids 0..{len(names) - 1})"})
    notes.warn(BOX_WARNINGS | {"unlabelled": "image(s) without a label file, read as images without defects"})
    return DetectionSet(images, names, str(data_yaml))


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last /images/ in the path becomes /labels/, and the extension .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _read_label_file(path: Path, num_classes: int, notes: Notes) -> list[Box]:
    if not path.exists():
        notes.add("unlabelled", str(path))
        return []
    boxes = []
    for number, line in enumerate(read_text(path, "label file").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        try:
            values = [float(f) for f in fields]
        except ValueError:
            notes.add("malformed", f"{where} {line.strip()!r}")
            continue
        if not (len(values) == 5 or (len(values) >= 7 and len(values) % 2 == 1)) or not all(map(math.isfinite, values)):
            notes.add("malformed", f"{where} {line.strip()!r}")
            continue
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            notes.add("class", f"{where} class {fields[0]}")
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            if w < 0 or h < 0:
                notes.add("malformed", f"{where} {line.strip()!r} (negative size)")
                continue
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            direction = ()
        else:  # a segment: its bounding box, and the direction its points run in
            xs, ys = values[1::2], values[2::2]
            box = (min(xs), min(ys), max(xs), max(ys))
            direction = (direction_of(xs, ys),)
        box = clip_box(box, 1.0, 1.0, where, notes)
        if box is not None:
            boxes.append((int(cls), *box, *direction))
    return boxes


def yolo_line(cls: int, box, width: float, height: float, polygon: bool = False) -> str:
    """A label line for a box (x0, y0, x1, y1[, direction]) in pixels of a width x height image, normalised:
    'class cx cy w h', or with `polygon` the segment line 'class x1 y1 x2 y2 ...' of its box_polygon (whose
    bounding box is the box)."""
    x0, y0, x1, y1 = box[:4]
    if polygon:
        return f"{int(cls)} " + " ".join(f"{x / width:.6f} {y / height:.6f}" for x, y in box_polygon(box))
    return (f"{int(cls)} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
            f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")


def yolo_label_text(boxes, width: float, height: float) -> str:
    """One image's label file for boxes (class, x0, y0, x1, y1[, direction]) in pixels. When some box has a
    direction, every box is written as a segment line: Ultralytics decides per file whether its lines are
    boxes or segments, so a file mixing both would be misread. Otherwise every box is 'class cx cy w h'."""
    polygon = any(box_direction(b) for b in boxes)
    return "".join(yolo_line(b[0], b[1:], width, height, polygon) + "\n" for b in boxes)


def data_yaml_text(root: Path, names: list[str], splits=("train", "val")) -> str:
    """An Ultralytics data.yaml: the dataset's absolute path (Ultralytics reads a relative one against its own
    datasets folder), its splits and the class names. YOLO training needs both train and val."""
    import yaml

    spec = {"path": str(Path(root).resolve()), **{s: f"images/{s}" for s in splits},
            "names": {i: n for i, n in enumerate(names)}}
    return yaml.safe_dump(spec, sort_keys=False)
