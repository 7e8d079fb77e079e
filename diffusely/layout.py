"""Layouts (boxes and their classes) as the per-class mask maps a layout-conditioned U-Net reads.

    boxes = pack_boxes([[(0, 3.0, 4.0, 20.0, 9.0)], []])     # (2, 1, 5): class, x0, y0, x1, y1 in pixels
    layout = render_layout(boxes, num_classes=4, grid=(64, 64), image_size=64)   # (2, 5, 64, 64)

Channel k < K holds, per cell of the grid, the fraction of the cell that boxes of class k cover (so a box
edge between cells is drawn as a partial value, exactly where it lies); channel K is 1 where a layout is
given and 0 where it is not (classifier-free guidance's null layout). "Given, with no boxes" (all masks 0,
last channel 1) asks for a surface without defects; "not given" (all 0) leaves it to the model.
The grid may be coarser than the image (a latent run): boxes stay in image pixels and scale to it.
"""

from __future__ import annotations

from typing import Sequence

import torch


def box_class(names: Sequence[str], value) -> int | None:
    """A box's class given by name or by index (an int or its digits), as an index into `names`; None if neither."""
    if value in names:
        return list(names).index(value)
    index = int(value) if str(value).isdigit() else -1
    return index if 0 <= index < len(names) else None


def pack_boxes(boxes: Sequence[Sequence[tuple]], max_boxes: int | None = None) -> torch.Tensor:
    """Per-image lists of (class, x0, y0, x1, y1) -> (N, M, 5) float32, padded with class -1 rows (M = the
    longest list, at least 1)."""
    m = max(max_boxes or 0, max((len(b) for b in boxes), default=0), 1)
    out = torch.zeros(len(boxes), m, 5)
    out[:, :, 0] = -1
    for i, image_boxes in enumerate(boxes):
        if len(image_boxes) > m:
            raise ValueError(f"image {i} has {len(image_boxes)} boxes, more than max_boxes={m}")
        for j, box in enumerate(image_boxes):
            out[i, j] = torch.tensor([float(v) for v in box])
    return out


def flip_boxes(boxes: torch.Tensor, image_size: float) -> torch.Tensor:
    """(..., 5) boxes mirrored left to right in an image `image_size` pixels wide (padding rows stay padding)."""
    cls, x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([cls, image_size - x1, y0, image_size - x0, y1], dim=-1)


def _cover(lo: torch.Tensor, hi: torch.Tensor, cells: int, cell: float) -> torch.Tensor:
    """(B, M) intervals [lo, hi) -> (B, M, cells): the fraction of each cell [i cell, (i + 1) cell) they cover."""
    edges = torch.arange(cells, device=lo.device, dtype=lo.dtype) * cell
    overlap = torch.minimum(hi[..., None], edges + cell) - torch.maximum(lo[..., None], edges)
    return overlap.clamp(min=0) / cell


def render_layout(boxes: torch.Tensor, num_classes: int, grid: Sequence[int], image_size: float,
                  given: torch.Tensor | None = None) -> torch.Tensor:
    """(B, M, 5) boxes in pixels of an image_size x image_size image -> (B, num_classes + 1, H, W) masks on an
    H x W grid. given: (B,) bool, False for the null layout (all zeros); default all True."""
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
    if given is not None:
        out = out * given.to(out.dtype).view(b, 1, 1, 1)
    return out
