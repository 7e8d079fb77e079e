"""Layouts (boxes and their classes) as the per-class mask maps a layout-conditioned U-Net reads.

    boxes = pack_boxes([[(0, 3.0, 4.0, 20.0, 9.0, 1)], []])  # (2, 1, 6): class, x0, y0, x1, y1 in pixels, direction
    layout = render_layout(boxes, num_classes=4, grid=(64, 64), image_size=64, lines=True)   # (2, 6, 64, 64)

Channel k < K holds, per cell of the grid, the fraction of the cell that boxes of class k cover (so a box
edge between cells is drawn as a partial value, exactly where it lies); channel K is 1 where a layout is
given and 0 where it is not (classifier-free guidance's null layout). "Given, with no boxes" (all masks 0,
last channel 1) asks for a surface without defects; "not given" (all 0) leaves it to the model.
The grid may be coarser than the image (a latent run): boxes stay in image pixels and scale to it.

A box may carry a sixth value, its direction: +1 when the object in it runs from the top-left corner to the
bottom-right one (x and y grow together, as a scratch along the box's main diagonal), -1 when it runs from the
bottom-left to the top-right, 0 when that is unknown or the object is not drawn out along a diagonal. A box
alone cannot say which diagonal a thin line takes, and a model left to guess draws fragments along both; so
layouts rendered with `lines=True` hold one more channel (after the flag): the coverage of a line
LINE_WIDTH pixels wide along the diagonal each directed box names. `direction_of` reads a direction from an
object's pixels or polygon.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

LINE_WIDTH = 1.5  # pixels of the image: the width of the line a directed box draws in the line channel
LINE_SUBSAMPLES = 4  # per image pixel and axis: the line channel's coverage is the fraction of these points on the line
# |correlation of x and y| over an object's pixels (or polygon points) from which it counts as directed
DIRECTED = 0.6


DIRECTIONS = ("auto", "labels")  # where plain boxes' directions come from (data.detection.load_detection)


def direction_of(xs, ys, weights=None) -> int:
    """+1, -1 or 0: the direction of an object given by points (xs, ys) in image coordinates (y down) and
    their weights (a coverage; default equal): the sign of the correlation of x and y when it is at least
    DIRECTED in size, else 0 (a round or axis-aligned object, or too few points to tell)."""
    xs, ys = np.asarray(xs, float).ravel(), np.asarray(ys, float).ravel()
    w = np.ones_like(xs) if weights is None else np.asarray(weights, float).ravel()
    if len(xs) < 2 or w.sum() <= 0:
        return 0
    w = w / w.sum()
    dx, dy = xs - (w * xs).sum(), ys - (w * ys).sum()
    vx, vy, cov = (w * dx * dx).sum(), (w * dy * dy).sum(), (w * dx * dy).sum()
    if vx <= 1e-12 or vy <= 1e-12:
        return 0
    corr = cov / np.sqrt(vx * vy)
    return int(np.sign(corr)) if abs(corr) >= DIRECTED else 0


def box_direction(box) -> int:
    """A box's direction: its sixth value, or 0 for a plain (class, x0, y0, x1, y1) box."""
    return int(box[5]) if len(box) > 5 else 0


def layout_channels(num_classes: int, lines: bool) -> int:
    """How many channels render_layout gives: a mask per class, the flag, and the line channel if asked."""
    return num_classes + 1 + int(lines)


def has_lines(channels: int, num_classes: int) -> bool:
    """Whether a model reading `channels` layout channels for num_classes classes reads the line channel
    (runs made before directions read only the masks and the flag)."""
    return channels == layout_channels(num_classes, True)


def box_class(names: Sequence[str], value) -> int | None:
    """A box's class given by name or by index (an int or its digits), as an index into `names`; None if neither."""
    if value in names:
        return list(names).index(value)
    index = int(value) if str(value).isdigit() else -1
    return index if 0 <= index < len(names) else None


def pack_boxes(boxes: Sequence[Sequence[tuple]], max_boxes: int | None = None) -> torch.Tensor:
    """Per-image lists of (class, x0, y0, x1, y1[, direction]) -> (N, M, 6) float32 (direction 0 where a box
    has none), padded with class -1 rows (M = the longest list, at least 1)."""
    m = max(max_boxes or 0, max((len(b) for b in boxes), default=0), 1)
    out = torch.zeros(len(boxes), m, 6)
    out[:, :, 0] = -1
    for i, image_boxes in enumerate(boxes):
        if len(image_boxes) > m:
            raise ValueError(f"image {i} has {len(image_boxes)} boxes, more than max_boxes={m}")
        for j, box in enumerate(image_boxes):
            if len(box) not in (5, 6):
                raise ValueError(f"a box is (class, x0, y0, x1, y1[, direction]), got {box!r}")
            out[i, j, :len(box)] = torch.tensor([float(v) for v in box])
    return out


def flip_boxes(boxes: torch.Tensor, image_size: float) -> torch.Tensor:
    """(..., 6) boxes mirrored left to right in an image `image_size` pixels wide: a mirrored line runs the
    other way, so directions change sign (padding rows stay padding)."""
    cls, x0, y0, x1, y1, direction = boxes.unbind(-1)
    return torch.stack([cls, image_size - x1, y0, image_size - x0, y1, -direction], dim=-1)


def _cover(lo: torch.Tensor, hi: torch.Tensor, cells: int, cell: float) -> torch.Tensor:
    """(B, M) intervals [lo, hi) -> (B, M, cells): the fraction of each cell [i cell, (i + 1) cell) they cover."""
    edges = torch.arange(cells, device=lo.device, dtype=lo.dtype) * cell
    overlap = torch.minimum(hi[..., None], edges + cell) - torch.maximum(lo[..., None], edges)
    return overlap.clamp(min=0) / cell


def _line_cover(boxes: torch.Tensor, grid: Sequence[int], image_size: float) -> torch.Tensor:
    """(B, M, 6) boxes -> (B, H, W): per cell, the largest fraction of it within LINE_WIDTH / 2 of the diagonal
    that a box's direction names (corner to corner, inset by half the width so the line stays in its box).
    Only directed boxes are drawn, so padding rows and plain boxes cost nothing."""
    height, width = grid
    b = boxes.shape[0]
    out = boxes.new_zeros(b, height, width)
    directed = (boxes[..., 5] != 0) & (boxes[..., 0] >= 0)
    if not directed.any():
        return out
    which, _ = directed.nonzero(as_tuple=True)
    s = max(1, math.ceil(LINE_SUBSAMPLES * image_size / min(height, width) - 1e-9))  # per cell and axis
    ys = (torch.arange(height * s, device=boxes.device, dtype=boxes.dtype) + 0.5) * (image_size / (height * s))
    xs = (torch.arange(width * s, device=boxes.device, dtype=boxes.dtype) + 0.5) * (image_size / (width * s))
    _, x0, y0, x1, y1, direction = (v[:, None, None] for v in boxes[directed].unbind(-1))  # (D, 1, 1) each
    half = LINE_WIDTH / 2
    inset_x = torch.clamp((x1 - x0) / 2, max=half)
    inset_y = torch.clamp((y1 - y0) / 2, max=half)
    ax, bx = x0 + inset_x, x1 - inset_x
    top, bottom = y0 + inset_y, y1 - inset_y
    ay, by = torch.where(direction > 0, top, bottom), torch.where(direction > 0, bottom, top)
    vx, vy = bx - ax, by - ay
    px, py = xs.view(1, 1, -1) - ax, ys.view(1, -1, 1) - ay
    t = ((px * vx + py * vy) / (vx * vx + vy * vy).clamp(min=1e-12)).clamp(0, 1)
    on = (px - t * vx) ** 2 + (py - t * vy) ** 2 <= half * half  # (D, H s, W s)
    cover = torch.nn.functional.avg_pool2d(on.to(boxes.dtype)[:, None], s)[:, 0]  # (D, H, W)
    flat = out.view(b, -1)
    flat.scatter_reduce_(0, which[:, None].expand(-1, flat.shape[1]), cover.reshape(len(which), -1), "amax")
    return out


def render_layout(boxes: torch.Tensor, num_classes: int, grid: Sequence[int], image_size: float,
                  given: torch.Tensor | None = None, lines: bool = False) -> torch.Tensor:
    """(B, M, 6) boxes in pixels of an image_size x image_size image -> (B, layout_channels(num_classes, lines),
    H, W) maps on an H x W grid: a mask per class, the flag, and with `lines` the line channel of directed
    boxes. given: (B,) bool, False for the null layout (all zeros); default all True."""
    height, width = grid
    b = boxes.shape[0]
    cls = boxes[..., 0].long()
    x = _cover(boxes[..., 1], boxes[..., 3], width, image_size / width)  # (B, M, W)
    y = _cover(boxes[..., 2], boxes[..., 4], height, image_size / height)  # (B, M, H)
    cover = y[..., :, None] * x[..., None, :]  # (B, M, H, W)
    onehot = torch.nn.functional.one_hot(cls.clamp(min=0), num_classes).to(cover.dtype) * (cls >= 0)[..., None]
    # overlapping boxes of one class: the larger coverage, so a mask stays within 0..1
    masks = (cover[:, :, None] * onehot[..., None, None]).amax(dim=1) if boxes.shape[1] else \
        cover.new_zeros(b, num_classes, height, width)
    flag = torch.ones(b, 1, height, width, dtype=cover.dtype, device=cover.device)
    out = torch.cat([masks, flag], dim=1)
    if lines:
        out = torch.cat([out, _line_cover(boxes, grid, image_size)[:, None].to(out.dtype)], dim=1)
    if given is not None:
        out = out * given.to(out.dtype).view(b, 1, 1, 1)
    return out


def render_run_layout(boxes: torch.Tensor, config, grid: Sequence[int], given: torch.Tensor | None = None) -> torch.Tensor:
    """render_layout as a run's model reads it: the run config's classes and image size, with the line channel
    when its model has one."""
    k = len(config.data.class_names)
    return render_layout(boxes, k, grid, config.data.image_size, given,
                         lines=has_lines(config.model.layout_channels, k))
