"""One image file decoded as it is, to 8 bits: what image folders, YOLO and COCO datasets and `forward` all read.

Pillow's own conversions clip what 8 bits cannot hold and drop alpha: a 16-bit PNG's 1000 becomes 255, a float
image's 0.5 becomes 0, and convert("RGB") shows whatever colour hides under transparent pixels. Here instead:

- 16-bit images (modes I;16, I;16B, ... and I, read as 0..65535) are scaled, v * 255 / 65535 rounded. Pillow reads
  16-bit RGB and RGBA PNGs as 8 bits itself (their high byte, within one level of that rounding): counted only.
- float images (mode F) hold 0..1 (scaled by 255) or 0..255 (rounded); other values are refused.
- alpha (RGBA, LA, a palette's or a tRNS transparent colour) is composited on white, ALPHA_BACKGROUND, as a viewer
  shows the image on a page; a fully transparent image loads as plain white and is named.

A dataset loader passes one Notes for all its images and reports what was converted once (warn_conversions).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import DataError
from .reading import Notes, regular_file

ALPHA_BACKGROUND = (255, 255, 255)  # white: transparent pixels show what a page behind the image would
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# what PIL raises for a file it cannot decode; UnidentifiedImageError is an OSError, listed to say so
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError)
BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# what was converted, by kind, as the warning words it
CONVERSIONS = {"16-bit": "16-bit, scaled to 8 bits", "float": "floating point, scaled to 8 bits",
               "alpha": "with transparency, composited on white",
               "transparent": "fully transparent, loaded as plain white"}


class UnreadableImage(DataError):
    """An image file that cannot be decoded: a dataset loader skips it with a warning; alone, it is the error."""

    def __init__(self, path, reason, fix: str = "pass a PNG, JPEG, BMP or WebP file"):
        super().__init__(f"cannot read {path} as an image ({reason}); {fix}")
        self.path, self.reason = path, str(reason)


@contextmanager
def strict_decoding():
    """A truncated file must fail to decode rather than load half-grey, whatever the rest of the program set."""
    setting = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = setting


def decode(path, mode: str, draft_size: tuple[int, int] | None = None, notes: Notes | None = None) -> Image.Image:
    """The image at `path` upright (its EXIF orientation applied) in `mode`, "RGB" or "L", at 8 bits a channel;
    16-bit, float and transparent images converted as the module says, each noted in `notes` by kind.

    Raises UnreadableImage when the file cannot be decoded (a decompression bomb among them), and a DataError when
    `path` is a folder, FIFO or device (never opened). `draft_size` lets a JPEG decode at a reduced scale.
    """
    path = Path(path)
    try:
        regular_file(path, "image")
        with warnings.catch_warnings():
            # Pillow only warns between its pixel limit and twice it, then decodes the whole bomb into memory
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                # 16-bit RGB(A) shows only in the raw mode Pillow decodes from (its image mode is 8-bit RGB)
                deep = any(";16" in str(tile[3]) for tile in image.tile)
                if draft_size is not None:  # JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the size
                    image.draft(mode, draft_size)
                image.load()  # decode now, so a truncated or corrupt file fails here
                image = ImageOps.exif_transpose(image)
    except DataError:
        raise
    except BOMBS as e:
        raise UnreadableImage(path, str(e).rstrip("."), "shrink the image, or raise PIL.Image.MAX_IMAGE_PIXELS for "
                                                        "images you trust") from None
    except DECODE_ERRORS as e:
        raise UnreadableImage(path, e) from None
    return to_8bit(image, path, notes, deep).convert(mode)


# modes that hold one channel by their header alone: bilevel, 8-bit, 8-bit with alpha, 16- and 32-bit, float
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_grayscale(path, draft_size: tuple[int, int] | None = None) -> bool:
    """Whether the image at `path` holds one channel's worth: a mode of GRAY_MODES, read from its header (no pixel
    decoded), or, decoded to RGB as decode() does (a palette's colours, alpha on white), red, green and blue equal
    at every pixel. Raises as decode() does."""
    path = regular_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.mode in GRAY_MODES:
                    return True
    except BOMBS as e:
        raise UnreadableImage(path, str(e).rstrip(".")) from None
    except DECODE_ERRORS as e:
        raise UnreadableImage(path, e) from None
    rgb = np.asarray(decode(path, "RGB", draft_size))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def to_8bit(image: Image.Image, path, notes: Notes | None = None, deep: bool = False) -> Image.Image:
    """`image` with 8-bit channels and no alpha: 16-bit and float values scaled, alpha composited on
    ALPHA_BACKGROUND. `deep` says Pillow already cut 16-bit channels to 8 (only counted). Adds the kinds to `notes`."""
    kinds = []
    if image.mode.startswith("I") or image.mode == "F":
        kinds.append("float" if image.mode == "F" else "16-bit")
        image = Image.fromarray(_scaled(np.asarray(image), image.mode, path), "L")
    elif deep:
        kinds.append("16-bit")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")  # a palette's or a tRNS transparent colour becomes alpha too
        low, high = rgba.getchannel("A").getextrema()
        if low < 255:  # some pixel shows the background: an opaque RGBA file is left as it is
            kinds.append("transparent" if high == 0 else "alpha")
            background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
            image = Image.alpha_composite(background, rgba).convert("RGB")
    for kind in kinds if notes is not None else ():
        notes.add(kind, str(path))
    return image


def _scaled(values: np.ndarray, mode: str, path) -> np.ndarray:
    """(H, W) 16-bit, 32-bit integer or float values -> uint8: 0..65535 (integers), 0..1 or 0..255 (floats)."""
    values = values.astype(np.float64)
    if values.size and not np.isfinite(values).all():
        raise UnreadableImage(path, "NaN or infinite values", "an image must hold finite values")
    low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if mode == "F":
        if low < 0 or high > 255:
            raise UnreadableImage(path, f"float values {low:g}..{high:g}", "a float image must hold 0..1 or 0..255")
        scale = 255.0 if high <= 1 else 1.0
    else:
        if low < 0 or high > 65535:
            raise UnreadableImage(path, f"integer values {low:g}..{high:g}", "a 16-bit image holds 0..65535")
        scale = 255.0 / 65535.0
    return np.rint(values * scale).astype(np.uint8)


def warn_conversions(notes: Notes, total: int, source) -> None:
    """One warning for a dataset (or one image): how many of its `total` images were converted, by kind."""
    parts = [f"{notes.count(kind)} {what} (e.g. {notes.text(kind, 2)})" for kind, what in CONVERSIONS.items()
             if notes.count(kind)]
    if parts:
        warnings.warn(f"of {total} image(s) of {source}: {'; '.join(parts)} (diffusely.data.images)", UserWarning,
                      stacklevel=3)


def load_with_geometry(path, size: int, mode: str,
                       notes: Notes | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One image as a (size, size, 3) or (size, size) uint8 array (decode(), resized so its shorter side is `size`,
    center-cropped), and where it came from: (width, height, left, top), the upright image's size after resizing
    and the crop's offset, so a box at normalised (u, v) lands at (u * width - left, v * height - top).
    (Normalised, because a JPEG decoded in draft mode is smaller than the file's stated size.)"""
    image = decode(path, mode, (size, size), notes)
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new_size, Image.BICUBIC, reducing_gap=3.0)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8), (new_size[0], new_size[1], left, top)
