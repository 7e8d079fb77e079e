"""What YOLO and COCO datasets share: labelled images with normalised boxes, clipping, and boxes as polygons.

Boxes are (class_index, x0, y0, x1, y1); a polygon label (a YOLO segment line, a COCO polygon) adds a sixth value,
the direction its points run in (diffusely.layout.direction_of), which a layout model reads. In a DetectionSet
they are normalised to the image (0..1), as YOLO stores them; after loading (diffusely.data.detection) they are in
pixels of the size x size image, as the built-in sets give them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .reading import Notes

Box = tuple  # (class_index, x0, y0, x1, y1[, direction]): a polygon's box carries its direction (diffusely.layout)
EPS = 1e-6  # normalised coordinates this far past 0 or 1 are rounding, not a box outside the image

BOX_WARNINGS = {"clipped": "box(es) reaching outside their image, clipped to it",
                "outside": "box(es) wholly outside their image (or of zero size), left out"}


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


def clip_box(box, width: float, height: float, where: str, notes: Notes):
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


def duplicates(values) -> list:
    """The values that occur more than once, each once, in sorted order."""
    seen, repeated = set(), set()
    for value in values:
        (repeated if value in seen else seen).add(value)
    return sorted(repeated)
