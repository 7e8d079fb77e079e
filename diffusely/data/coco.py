"""COCO detection files: one JSON listing images, categories and box annotations, read and written.

    {"images": [{"id": 1, "file_name": "x.png", "width": 64, "height": 64}],
     "categories": [{"id": 1, "name": "scratch"}],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h], "segmentation": [[...]]}]}

Read into a DetectionSet (diffusely.data.boxes) with boxes normalised to the image. A file_name stays inside the
dataset (no absolute path, no ..) unless the caller allows it; ids are unique.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from . import DataError
from ..layout import direction_of
from .boxes import BOX_WARNINGS, Box, DetectionSet, LabelledImage, box_polygon, clip_box, duplicates
from .reading import Notes, read_text

COCO_NAMES = ("annotations.json", "_annotations.coco.json", "instances.json")


def read_coco(json_path, image_root=None, *, outside: bool = False) -> DetectionSet:
    """A COCO detection file: images [{id, file_name, width, height}], annotations [{image_id, category_id,
    bbox [x, y, w, h] in pixels}], categories [{id, name}]. Classes are numbered in category-id order. Image
    files are found under `image_root`, else beside the file, in its images/ folder, or one level up.

    A file_name that is absolute or climbs out with .. is an error unless `outside` allows it; so are image ids
    or category ids listed twice."""
    json_path = Path(json_path)
    spec = _read_json(json_path)
    categories, sizes, names = _tables(json_path, spec)
    notes = Notes()
    boxes = _boxes(json_path, spec["annotations"], {cid: i for i, (cid, _) in enumerate(categories)}, sizes, notes)
    notes.raise_errors({"malformed": "malformed annotation(s); each needs image_id, category_id and bbox [x, y, w, h]",
                        "image": "annotation(s) of an image id the file does not list",
                        "class": "annotation(s) with a category_id the file does not list"})
    labelled = _find_images(json_path, image_root, names, outside, notes)
    if not labelled:
        raise DataError(f"none of the {len(names)} images of {json_path} was found: {notes.text('missing')}")
    for item, image_id in labelled:
        item.boxes, item.size = boxes.get(image_id, []), sizes[image_id]
        if image_id not in boxes:
            notes.add("unlabelled", names[image_id])
    notes.warn(BOX_WARNINGS | {"missing": "image file(s) listed but not found, left out",
                               "unlabelled": "image(s) without annotations, read as images without defects"})
    return DetectionSet([item for item, _ in labelled], [n for _, n in categories], str(json_path))


def _read_json(json_path: Path) -> dict:
    """The parsed file, checked to hold the three lists; a DataError naming the file otherwise."""
    text = read_text(json_path, "COCO file")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{json_path} is not valid JSON: {e}") from None
    except RecursionError:  # python's parser recurses once a level: a few thousand levels exhaust the stack
        raise DataError(f"{json_path} nests its JSON too deep to read (a COCO file is a few levels deep); "
                        f"check that it is the dataset's annotation file") from None
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise DataError(f"{json_path} is not a COCO detection file: it needs the lists 'images', 'annotations' and "
                        f"'categories'")
    return spec


def _tables(json_path: Path, spec: dict) -> tuple[list[tuple[int, str]], dict, dict]:
    """(category id, name) sorted by id, and each image id's (width, height) and file_name."""
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in spec["categories"])
        image_ids = [int(im["id"]) for im in spec["images"]]
        sizes = {int(im["id"]): (float(im["width"]), float(im["height"])) for im in spec["images"]}
        names = {int(im["id"]): str(im["file_name"]) for im in spec["images"]}
        if any(not (w > 0 and h > 0) for w, h in sizes.values()):
            raise ValueError("an image with width or height not > 0")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{json_path}: every category needs 'id' and 'name', every image 'id', 'file_name', "
                        f"'width' and 'height' ({type(e).__name__}: {e})") from None
    if not categories:
        raise DataError(f"{json_path} has no categories")
    for what, ids in (("image", image_ids), ("category", [cid for cid, _ in categories])):
        repeated = duplicates(ids)
        if repeated:  # a second image would silently replace the first; a second category add a phantom class
            raise DataError(f"{json_path} lists {what} id(s) {', '.join(map(str, repeated[:10]))} more than once; "
                            f"give each {what} its own id")
    return categories, sizes, names


def _boxes(json_path: Path, annotations: list, index: dict, sizes: dict, notes: Notes) -> dict[int, list[Box]]:
    """Each image id's boxes, normalised, with the direction of a polygon segmentation; problems in `notes`."""
    boxes: dict[int, list[Box]] = defaultdict(list)
    for k, ann in enumerate(annotations):
        where = f"{json_path} annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        try:
            image_id, cid = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            notes.add("malformed", where)
            continue
        if image_id not in sizes:
            notes.add("image", f"{where} image_id {image_id}")
            continue
        if cid not in index:
            notes.add("class", f"{where} category_id {cid}")
            continue
        if w < 0 or h < 0 or not all(map(math.isfinite, (x, y, w, h))):
            notes.add("malformed", f"{where} bbox {ann['bbox']}")
            continue
        width, height = sizes[image_id]
        box = clip_box((x, y, x + w, y + h), width, height, where, notes)
        if box is not None:
            boxes[image_id].append((index[cid], box[0] / width, box[1] / height, box[2] / width, box[3] / height,
                                    *_coco_direction(ann.get("segmentation"))))
    return boxes


def _find_images(json_path: Path, image_root, names: dict, outside: bool,
                 notes: Notes) -> list[tuple[LabelledImage, int]]:
    """A LabelledImage (boxes still empty) and its id for each image found; those not found noted as missing.
    A DataError for file_names that reach outside the dataset, unless `outside`."""
    reaching = [f"image {i} {name!r}" for i, name in names.items()
                if Path(name).is_absolute() or ".." in Path(name).parts]
    if reaching and not outside:
        raise DataError(f"{json_path}: {len(reaching)} file_name(s) reach outside the dataset (absolute, or with ..), "
                        f"e.g. {'; '.join(reaching[:3])}; move the images under {json_path.parent} and name them "
                        f"relative to it, or allow it with --allow-outside (outside=True in diffusely.data.load_dataset, "
                        f"read_coco)")
    roots = [Path(image_root)] if image_root else [json_path.parent, json_path.parent / "images",
                                                    json_path.parent.parent, json_path.parent.parent / "images"]
    found = []
    for image_id, name in names.items():
        # exists(), not is_file(): a FIFO or folder of that name is refused by the loader, not taken as missing
        path = next((r / name for r in roots if name and (r / name).exists()), None)
        if path is None:
            notes.add("missing", f"{name} (looked in {', '.join(map(str, roots))})")
            continue
        found.append((LabelledImage(path, []), image_id))
    return found


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
