"""Pictures of images and training: image grids, labelled strips of the noising and denoising process, loss curves.

Every file is written atomically (a temporary file, then renamed), so a viewer never sees half a PNG.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ._files import atomic_write
from .data import to_uint8

GRID_PADDING_VALUE = 0  # black between grid tiles, as torchvision's make_grid
STRIP_BACKGROUND = 255  # white around strip tiles, so black text reads
TEXT_COLOR = 0
TEXT_GAP = 4  # pixels between a tile and its caption


def save_grid(images: torch.Tensor | np.ndarray, path, nrow: int | None = None, padding: int = 2) -> Path:
    """Save images as one PNG grid with `nrow` images per row (default ceil(sqrt(N))) and `padding` pixels between.

    images: (N, C, H, W) float tensor in [-1, 1] or (N, H, W, C) uint8 array, C = 1 or 3.
    The PNG is ncol * (W + padding) + padding wide and nrows * (H + padding) + padding high.
    """
    tiles = _as_uint8(images)
    n, h, w, c = tiles.shape
    ncol = min(n, nrow or math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), GRID_PADDING_VALUE, np.uint8)
    for i, tile in enumerate(tiles):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        grid[top:top + h, left:left + w] = tile
    return _save_png(_to_pil(grid), path)


def save_strip(rows: list[torch.Tensor], path, labels: list[str] | None = None, row_labels: list[str] | None = None,
               scale: int = 4) -> Path:
    """Save rows of images as a table: tiles enlarged `scale` times (nearest neighbour), `labels` under the columns
    (e.g. "σ=0.50"), `row_labels` to the left of the rows.

    rows: list of (K, C, H, W) float tensors in [-1, 1], all with the same C, H, W (K may differ per row).
    """
    if not rows:
        raise ValueError("save_strip needs at least one row of images")
    tile_rows = [np.repeat(np.repeat(_as_uint8(row), scale, axis=1), scale, axis=2) for row in rows]
    if len({row.shape[1:] for row in tile_rows}) != 1:
        raise ValueError(f"all rows need the same image shape, got {[tuple(r.shape[1:]) for r in rows]}")
    ncol = max(len(row) for row in tile_rows)
    if labels is not None and len(labels) != ncol:
        raise ValueError(f"got {len(labels)} labels for {ncol} columns")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"got {len(row_labels)} row labels for {len(rows)} rows")

    font = _font()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    tile_h, tile_w = tile_rows[0].shape[1:3]
    gap = 2
    label_h = max((text_size(t)[1] for t in labels), default=0) + 2 * TEXT_GAP if labels else 0
    # columns widen to fit their caption, so long captions do not run into their neighbours
    col_w = max([tile_w] + [text_size(t)[0] + 2 * TEXT_GAP for t in labels or []])
    left_w = max(text_size(t)[0] for t in row_labels) + 2 * TEXT_GAP if row_labels else 0
    width = left_w + ncol * (col_w + gap) + gap
    height = len(rows) * (tile_h + gap) + gap + label_h

    canvas = Image.new("RGB", (width, height), (STRIP_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tile_rows):
        top = gap + r * (tile_h + gap)
        for k, tile in enumerate(row):
            left = left_w + gap + k * (col_w + gap) + (col_w - tile_w) // 2
            canvas.paste(_to_pil(tile).convert("RGB"), (left, top))
        if row_labels:
            tw, th = text_size(row_labels[r])
            draw.text((TEXT_GAP, top + (tile_h - th) // 2), row_labels[r], fill=(TEXT_COLOR,) * 3, font=font)
    if labels:
        top = gap + len(rows) * (tile_h + gap) + TEXT_GAP
        for k, text in enumerate(labels):
            tw, _ = text_size(text)
            draw.text((left_w + gap + k * (col_w + gap) + (col_w - tw) // 2, top), text, fill=(TEXT_COLOR,) * 3,
                      font=font)
    return _save_png(canvas, path)


# box colors of a contact sheet, by class (cycled): saturated, and distinct from one another
BOX_COLORS = [(255, 40, 40), (255, 220, 0), (0, 220, 255), (255, 0, 255), (60, 255, 60), (255, 140, 0),
              (120, 120, 255), (255, 255, 255)]


def save_contact_sheet(images: np.ndarray, boxes: list[list[tuple]], class_names: list[str], path,
                       ncol: int = 8, scale: int = 2, padding: int = 4) -> Path:
    """Images (N, H, W, C) uint8 enlarged `scale` times, each with its boxes (class, x0, y0, x1, y1[, direction]
    in pixels) drawn in its class's color, and a legend of the colors on top. A directed box (diffusely.layout)
    also gets a filled mark inside each of the two corners its diagonal joins, so the line asked for can be read
    without covering the defect drawn along it."""
    tiles = _as_uint8(images)
    n, h, w, _ = tiles.shape
    th, tw = h * scale, w * scale
    ncol = min(n, ncol)
    nrows = math.ceil(n / ncol)
    font = _font(12)
    legend = 20
    sheet = Image.new("RGB", (ncol * (tw + padding) + padding, legend + nrows * (th + padding) + padding), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    x = padding
    for k, name in enumerate(class_names):
        color = BOX_COLORS[k % len(BOX_COLORS)]
        draw.rectangle((x, 5, x + 10, 15), outline=color, width=2)
        draw.text((x + 14, 3), name, fill=color, font=font)
        x += 24 + int(draw.textlength(name, font=font))
    for i, (tile, image_boxes) in enumerate(zip(tiles, boxes)):
        left = padding + (i % ncol) * (tw + padding)
        top = legend + padding + (i // ncol) * (th + padding)
        sheet.paste(_to_pil(tile).convert("RGB").resize((tw, th), Image.NEAREST), (left, top))
        for cls, x0, y0, x1, y1, *direction in image_boxes:
            color = BOX_COLORS[int(cls) % len(BOX_COLORS)]
            box = (left + x0 * scale, top + y0 * scale, left + x1 * scale - 1, top + y1 * scale - 1)
            draw.rectangle(box, outline=color, width=1)
            if direction and direction[0]:
                ends = ((box[0], box[1]), (box[2], box[3])) if direction[0] > 0 else ((box[0], box[3]), (box[2], box[1]))
                mark = min(3, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2)  # inside the corner, small boxes too
                for cx, cy in ends:
                    sx, sy = (1 if cx == box[0] else -1), (1 if cy == box[1] else -1)
                    draw.rectangle((min(cx, cx + sx * mark), min(cy, cy + sy * mark),
                                    max(cx, cx + sx * mark), max(cy, cy + sy * mark)), fill=color)
    return _save_png(sheet, path)


def plot_loss(csv_path, png_path, smoothing_points: int | None = None) -> Path:
    """Plot the `loss` column of a training log CSV against its `step` column on a log axis, with an EMA-smoothed line.

    The EMA spans `smoothing_points` rows (default: a twentieth of the rows, at least 1).
    """
    steps, losses = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"step", "loss"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} needs columns step and loss; its header is {reader.fieldnames}")
        for row in reader:
            try:
                step, loss = float(row["step"]), float(row["loss"])
            except (TypeError, ValueError):
                continue  # a blank or partly written last line while training is still running
            # a log axis cannot show a zero, negative or non-finite loss
            if math.isfinite(loss) and loss > 0:
                steps.append(step)
                losses.append(loss)
    if not losses:
        raise ValueError(f"{csv_path} has no positive, finite loss values to plot")
    smoothed = _ema(losses, smoothing_points or max(1, len(losses) // 20))

    # the object API with the Agg canvas draws off-screen without switching pyplot's global backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(steps, smoothed, color="tab:blue", linewidth=1.8, label="smoothed")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()

    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
    return Path(png_path)


def _ema(values: list[float], span: int) -> list[float]:
    """Exponential moving average with decay 1 - 2/(span + 1), bias-corrected so early points are not pulled to 0."""
    decay = 1.0 - 2.0 / (span + 1)
    average, weight, out = 0.0, 0.0, []
    for v in values:
        average = decay * average + (1 - decay) * v
        weight = decay * weight + (1 - decay)
        out.append(average / weight)
    return out


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's data folder, else PIL's default font.

    PIL's default font (Aileron) has no Greek letters and draws "σ" as a box; matplotlib, a dependency anyway,
    ships DejaVu Sans, which has them.
    """
    try:
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _as_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) float tensor in [-1, 1] or (N, H, W, C) uint8 array -> (N, H, W, C) uint8 with C in (1, 3)."""
    if isinstance(images, torch.Tensor):
        images = to_uint8(images)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError("expected (N, C, H, W) float tensors in [-1, 1] or (N, H, W, C) uint8 arrays with C = 1 or 3, "
                         f"N >= 1; got {images.dtype} with shape {images.shape}")
    return images


def _to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 1) or (H, W, 3) uint8 -> PIL image in mode L or RGB."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _save_png(image: Image.Image, path) -> Path:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return Path(path)
