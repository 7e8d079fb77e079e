"""Detection-labelled datasets: Ultralytics YOLO folders and COCO JSON, read and written.

    labelled = read_detection("path/to/dataset")        # a folder with data.yaml, or a COCO .json
    data = load_detection(labelled, size=64)            # images resized and cropped, boxes moved with them

Boxes are (class_index, x0, y0, x1, y1); a polygon label (a YOLO segment line, a COCO polygon) adds a sixth
value, the direction its points run in (diffusely.layout.direction_of), which a layout model reads. In a DetectionSet they are normalised to the image (0..1), as
YOLO stores them; after loading they are in pixels of the size x size image, as the built-in sets give them.

Nothing is dropped silently. A malformed label line or an unknown class id stops loading with the file and
line (the labels need fixing; guessing would train on wrong boxes). Boxes reaching outside their image are
clipped, boxes wholly outside are left out, and images without a label file are read as images without
defects (as YOLO reads them); each of these gives one warning with the count and the first examples.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from . import DataError
from ..layout import DIRECTIONS, box_direction, direction_of
from .folder import DECODE_ERRORS, EXTENSIONS, find_images, load_with_geometry, strict_decoding

Box = tuple  # (class_index, x0, y0, x1, y1[, direction]): a polygon's box carries its direction (diffusely.layout)
EPS = 1e-6  # normalised coordinates this far past 0 or 1 are rounding, not a box outside the image
COCO_NAMES = ("annotations.json", "_annotations.coco.json", "instances.json")


@dataclass
class LabelledImage:
    path: Path
    boxes: list[Box]  # normalised xyxy
    size: tuple[int, int] | None = None  # (width, height) when the labels know it (COCO)


@dataclass
class DetectionSet:
    images: list[LabelledImage]
    class_names: list[str]
    source: str


@dataclass
class Notes:
    """Problems found while reading, by kind: each kind a count and its first examples."""

    found: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, where: str) -> None:
        self.found[kind].append(where)

    def text(self, kind: str, limit: int = 3) -> str:
        items = self.found[kind]
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return f"{'; '.join(items[:limit])}{more}"

    def raise_errors(self, kinds: dict[str, str]) -> None:
        for kind, what in kinds.items():
            if self.found.get(kind):
                raise DataError(f"{len(self.found[kind])} {what}: {self.text(kind, 5)}")

    def warn(self, kinds: dict[str, str]) -> None:
        for kind, what in kinds.items():
            if self.found.get(kind):
                warnings.warn(f"{len(self.found[kind])} {what}: {self.text(kind)}", UserWarning, stacklevel=3)


def read_detection(source) -> DetectionSet | None:
    """The detection labels at `source` (a YOLO folder with data.yaml, a data.yaml, a COCO .json, or a folder
    holding annotations.json), or None when `source` is a plain image folder."""
    path = Path(source)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return read_yolo(path)
    if path.is_file() and path.suffix == ".json":
        return read_coco(path)
    if path.is_dir():
        for name in ("data.yaml", "data.yml"):
            if (path / name).is_file():
                return read_yolo(path / name)
        for name in COCO_NAMES:
            if (path / name).is_file():
                return read_coco(path / name)
    return None


# ---------------------------------------------------------------------------------------------
# YOLO


def _yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must be a YAML mapping with 'names' and 'train' (Ultralytics data.yaml)")
    return data


def _names(value, where: Path) -> list[str]:
    """YOLO class names, from a list or a {index: name} mapping with indices 0..K-1."""
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    if isinstance(value, dict) and value:
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            keys = []
        if keys == list(range(len(value))):
            return [str(value[k] if k in value else value[str(k)]) for k in keys]
    raise DataError(f"'names' in {where} must list the class names, or map 0..K-1 to them, e.g. names: {{0: scratch, 1: crack}}")


def read_yolo(data_yaml, split: str = "train") -> DetectionSet:
    """The images of `split` in an Ultralytics dataset (split a folder of images, a list of them, or a .txt
    listing image paths), each with the boxes of its label file (images/x.png -> labels/x.txt)."""
    data_yaml = Path(data_yaml)
    spec = _yaml(data_yaml)
    if "names" not in spec:
        raise DataError(f"{data_yaml} has no 'names': list the class names, e.g. names: [scratch, crack]")
    names = _names(spec["names"], data_yaml)
    root = Path(spec.get("path") or ".")
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
        # Ultralytics tries a relative path from the working directory, then its datasets folder; the yaml's
        # own folder is what such a path means in a dataset handed around, and the yaml's folder is the fallback
        if not root.is_dir():
            root = data_yaml.parent.resolve()
    if spec.get(split) is None:
        raise DataError(f"{data_yaml} names no '{split}' images; add e.g. {split}: images/{split}")
    entries = spec[split] if isinstance(spec[split], list) else [spec[split]]
    paths: list[Path] = []
    for entry in entries:
        p = Path(entry) if Path(entry).is_absolute() else root / entry
        if not p.exists() and str(entry).startswith("../"):
            # Roboflow exports say train: ../train/images; Ultralytics retries such a path without the ../
            p = root / str(entry)[3:]
        if p.is_dir():
            paths += find_images(p)
        elif p.is_file() and p.suffix == ".txt":
            paths += [(root / line.strip()).resolve() if not Path(line.strip()).is_absolute() else Path(line.strip())
                      for line in p.read_text().splitlines() if line.strip()]
        else:
            raise DataError(f"{data_yaml}: {split} entry {entry!r} is neither a folder of images nor a .txt list ({p})")
    if not paths:
        raise DataError(f"no images in the '{split}' split of {data_yaml} (accepted extensions: {', '.join(EXTENSIONS)})")
    notes = Notes()
    images = [LabelledImage(p, _read_label_file(label_path(p), len(names), notes)) for p in paths]
    notes.raise_errors({"malformed": "malformed label line(s); each line must be 'class cx cy w h' with "
                                     "normalised coordinates (or a class and polygon points)",
                        "class": f"label line(s) with an unknown class id (data.yaml names {len(names)} classes, "
                                 f"ids 0..{len(names) - 1})"})
    notes.warn(_BOX_WARNINGS | {"unlabelled": "image(s) without a label file, read as images without defects"})
    return DetectionSet(images, names, str(data_yaml))


_BOX_WARNINGS = {"clipped": "box(es) reaching outside their image, clipped to it",
                 "outside": "box(es) wholly outside their image (or of zero size), left out"}


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last /images/ in the path becomes /labels/, and the extension .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _read_label_file(path: Path, num_classes: int, notes: Notes) -> list[Box]:
    if not path.is_file():
        notes.add("unlabelled", str(path))
        return []
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
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
        box = _clip(box, 1.0, 1.0, where, notes)
        if box is not None:
            boxes.append((int(cls), *box, *direction))
    return boxes


def _clip(box, width: float, height: float, where: str, notes: Notes):
    """The box clipped to the image (noted when it reached outside), or None (noted) when nothing is left."""
    x0, y0, x1, y1 = box
    tol_x, tol_y = EPS * width, EPS * height
    if x0 < -tol_x or y0 < -tol_y or x1 > width + tol_x or y1 > height + tol_y:
        clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height))
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            notes.add("outside", where)
            return None
        notes.add("clipped", where)
        return clipped
    box = (max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height))
    if box[2] <= box[0] or box[3] <= box[1]:
        notes.add("outside", where)
        return None
    return box


def diagonal_polygon(box, direction: int) -> list[tuple[float, float]]:
    """A thin quadrilateral along the diagonal of box (x0, y0, x1, y1) that `direction` names (+1: top-left to
    bottom-right, -1: bottom-left to top-right): its bounding box is the box, and its points give the
    direction back (diffusely.layout.direction_of). How a directed box is written as a polygon label."""
    x0, y0, x1, y1 = box[:4]
    d = 0.02 * (x1 - x0)
    start, end = (y0, y1) if direction > 0 else (y1, y0)
    return [(x0, start), (x0 + d, start), (x1, end), (x1 - d, end)]


def box_polygon(box) -> list[tuple[float, float]]:
    """The polygon label of a box (x0, y0, x1, y1[, direction]): its diagonal_polygon when it has a direction,
    else its four corners (whose direction reads as 0)."""
    x0, y0, x1, y1 = box[:4]
    direction = int(box[4]) if len(box) > 4 else 0
    return diagonal_polygon(box, direction) if direction else [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


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


# ---------------------------------------------------------------------------------------------
# COCO


def read_coco(json_path, image_root=None) -> DetectionSet:
    """A COCO detection file: images [{id, file_name, width, height}], annotations [{image_id, category_id,
    bbox [x, y, w, h] in pixels}], categories [{id, name}]. Classes are numbered in category-id order. Image
    files are found under `image_root`, else beside the file, in its images/ folder, or one level up."""
    json_path = Path(json_path)
    try:
        spec = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{json_path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{json_path} is not a COCO detection file: it needs the lists 'images', 'annotations' and 'categories'")
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in spec["categories"])
        index = {cid: i for i, (cid, _) in enumerate(categories)}
        images = {int(im["id"]): im for im in spec["images"]}
        sizes = {i: (float(im["width"]), float(im["height"])) for i, im in images.items()}
        names = {i: str(im["file_name"]) for i, im in images.items()}
        if any(not (w > 0 and h > 0) for w, h in sizes.values()):
            raise ValueError("an image with width or height not > 0")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{json_path}: every category needs 'id' and 'name', every image 'id', 'file_name', "
                        f"'width' and 'height' ({type(e).__name__}: {e})") from None
    if not categories:
        raise DataError(f"{json_path} has no categories")
    notes = Notes()
    boxes: dict[int, list[Box]] = defaultdict(list)
    for k, ann in enumerate(spec["annotations"]):
        where = f"{json_path} annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        try:
            image_id, cid = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            notes.add("malformed", where)
            continue
        if image_id not in images:
            notes.add("image", f"{where} image_id {image_id}")
            continue
        if cid not in index:
            notes.add("class", f"{where} category_id {cid}")
            continue
        if w < 0 or h < 0 or not all(map(math.isfinite, (x, y, w, h))):
            notes.add("malformed", f"{where} bbox {ann['bbox']}")
            continue
        width, height = sizes[image_id]
        box = _clip((x, y, x + w, y + h), width, height, where, notes)
        if box is not None:
            boxes[image_id].append((index[cid], box[0] / width, box[1] / height, box[2] / width, box[3] / height,
                                    *_coco_direction(ann.get("segmentation"))))
    notes.raise_errors({"malformed": "malformed annotation(s); each needs image_id, category_id and bbox [x, y, w, h]",
                        "image": "annotation(s) of an image id the file does not list",
                        "class": "annotation(s) with a category_id the file does not list"})
    roots = [Path(image_root)] if image_root else [json_path.parent, json_path.parent / "images",
                                                    json_path.parent.parent, json_path.parent.parent / "images"]
    labelled = []
    for image_id in images:
        name = names[image_id]
        path = next((r / name for r in roots if (r / name).is_file()), None)
        if path is None:
            notes.add("missing", f"{name} (looked in {', '.join(map(str, roots))})")
            continue
        if image_id not in boxes:
            notes.add("unlabelled", name)
        labelled.append(LabelledImage(path, boxes.get(image_id, []), sizes[image_id]))
    if not labelled:
        raise DataError(f"none of the {len(images)} images of {json_path} was found: {notes.text('missing')}")
    notes.warn(_BOX_WARNINGS | {"missing": "image file(s) listed but not found, left out",
                                "unlabelled": "image(s) without annotations, read as images without defects"})
    return DetectionSet(labelled, [n for _, n in categories], str(json_path))


def _coco_direction(segmentation) -> tuple:
    """(direction,) of a COCO polygon segmentation (a list of [x, y, x, y, ...] lists), () for none or RLE."""
    if not isinstance(segmentation, list) or not segmentation:
        return ()
    try:
        points = [float(v) for polygon in segmentation for v in polygon]
    except (TypeError, ValueError):
        return ()
    return (direction_of(points[0::2], points[1::2]),) if len(points) >= 6 else ()


def coco_dict(entries, names: list[str]) -> dict:
    """A COCO detection dict from entries (file_name, width, height, boxes in pixels); category ids 1..K. Every
    annotation has a `segmentation`, its box_polygon (tools that pair segments with boxes by position need all
    or none), from which a directed box's direction reads back."""
    images, annotations = [], []
    for image_id, (file_name, width, height, boxes) in enumerate(entries, 1):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for cls, x0, y0, x1, y1, *rest in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                                "area": round((x1 - x0) * (y1 - y0), 3), "iscrowd": 0})
            # area stays the box's: the polygon only carries the direction (a thin sliver), and COCO evaluation
            # sorts annotations into small, medium and large by this area
            polygon = box_polygon((x0, y0, x1, y1, *rest[:1]))
            annotations[-1]["segmentation"] = [[round(v, 3) for point in polygon for v in point]]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}


# ---------------------------------------------------------------------------------------------
# loading


def estimate_direction(image: np.ndarray, box) -> int:
    """The direction (+1, -1 or 0; diffusely.layout) of the object in box (x0, y0, x1, y1, pixels) of an (H, W[, C])
    image, read from its pixels, for plain box labels that do not say it. Each pixel in the box is weighted by how
    far its color lies from the median color of the ring just outside the box (the background), less the box's
    75th percentile of that distance, so that only the object's most distinct quarter counts; direction_of those
    weights then gives the sign of their x-y correlation where it is strong. Boxes under 4 pixels a side, or with
    fewer than 6 weighted pixels, get 0: a few pixels correlate perfectly by chance. On the built-in defects at
    64 x 64 (2000 images, against the direction of each defect's own pixels): 96.5% of directed scratches and 99%
    of directed cracks found, none the wrong way, and 1-2% of spots and stains given a direction they lack."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    x0, y0 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
    x1, y1 = min(int(math.ceil(box[2])), w), min(int(math.ceil(box[3])), h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0
    ox0, oy0, ox1, oy1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, w), min(y1 + 1, h)
    window = image[oy0:oy1, ox0:ox1].astype(float)  # the box and its ring only
    window = window[..., None] if window.ndim == 2 else window
    inside = np.zeros(window.shape[:2], bool)
    inside[y0 - oy0:y1 - oy0, x0 - ox0:x1 - ox0] = True
    patch = window[inside].reshape(y1 - y0, x1 - x0, -1)
    # a box filling the whole image has no ring: its own pixels stand in for the background
    background = window[~inside] if (~inside).any() else patch.reshape(-1, patch.shape[-1])
    distance = np.linalg.norm(patch - np.median(background, axis=0), axis=-1)
    weights = np.clip(distance - np.percentile(distance, 75), 0, None)
    if np.count_nonzero(weights) < 6:
        return 0
    ys, xs = np.mgrid[y0:y1, x0:x1]
    return direction_of(xs + 0.5, ys + 0.5, weights)


def load_detection(labelled: DetectionSet, size: int, channels: int = 3,
                   directions: str = "auto") -> tuple[np.ndarray, list[list[Box]], list[str]]:
    """Decode every image as the folder loader does (upright, resized so the shorter side is `size`, center
    cropped) and move its boxes with it, in pixels. Returns images (N, S, S, C) uint8, boxes per image and the
    paths read. Unreadable files are skipped with one warning; boxes the crop cuts are clipped, and those it
    removes are left out, each counted in a warning.

    directions: "auto" gives plain boxes (YOLO box lines, COCO boxes without a polygon) the direction their
    pixels show (estimate_direction, at this size), with a warning that counts them, unless some label of the
    dataset is a polygon: then the labels say which boxes are directed (as in a dataset `synth` wrote), and
    plain boxes have none. "labels" never reads directions off pixels. A polygon's own direction is always kept."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if directions not in DIRECTIONS:
        raise DataError(f"directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
    stated = any(len(b) > 5 for item in labelled.images for b in item.boxes)  # polygon labels: directions given
    estimate = directions == "auto" and not stated
    estimated = plain = 0
    mode = "RGB" if channels == 3 else "L"
    images, boxes, paths, failed = [], [], [], []
    notes = Notes()
    with strict_decoding():
        for item in labelled.images:
            try:
                array, (width, height, left, top) = load_with_geometry(item.path, size, mode)
            except DECODE_ERRORS as error:
                failed.append(f"{item.path} ({error})")
                continue
            moved = []
            for cls, u0, v0, u1, v1, *direction in item.boxes:
                box = (u0 * width - left, v0 * height - top, u1 * width - left, v1 * height - top)
                x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], size), min(box[3], size)
                if x1 - x0 < 1 or y1 - y0 < 1:
                    notes.add("cropped", str(item.path))
                    continue
                if (x1 - x0) * (y1 - y0) < 0.999 * (box[2] - box[0]) * (box[3] - box[1]):
                    notes.add("cut", str(item.path))
                if estimate and not direction:  # a plain box: read its direction off the image, where it shows one
                    found = estimate_direction(array, (x0, y0, x1, y1))
                    direction = [found] if found else []
                    plain, estimated = plain + 1, estimated + bool(found)
                moved.append((cls, x0, y0, x1, y1, *direction))
            images.append(array if channels == 3 else array[..., None])
            boxes.append(moved)
            paths.append(str(item.path))
    if not images:
        raise DataError(f"none of the {len(labelled.images)} images of {labelled.source} could be read, e.g. {failed[0]}")
    if failed:
        warnings.warn(f"skipped {len(failed)} of {len(labelled.images)} image files of {labelled.source} that could "
                      f"not be read: {'; '.join(failed[:3])}", UserWarning, stacklevel=2)
    notes.warn({"cut": f"box(es) cut by the center crop to {size} x {size}, clipped to it",
                "cropped": f"box(es) outside the center crop to {size} x {size} (or under a pixel), left out"})
    if estimated:
        warnings.warn(f"{estimated} of {plain} plain boxes of {labelled.source} were given the diagonal direction "
                      f"their pixels show (diffusely.data.detection.estimate_direction), so a layout run draws their "
                      f"line; train with --directions labels to give plain boxes none", UserWarning, stacklevel=2)
    return np.stack(images), boxes, paths

