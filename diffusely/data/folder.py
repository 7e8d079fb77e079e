"""Every image under a folder, decoded into memory as size x size uint8 arrays."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from . import DataError

EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

# what PIL raises for a file it cannot decode; UnidentifiedImageError is an OSError, listed to say so
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass
class FolderData:
    """Images (N, S, S, C) uint8 HWC; labels (N,) int64 and class_names when loaded with classes, else None;
    paths of the loaded files, in the order of the images."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    paths: list[str]

    def __len__(self) -> int:
        return len(self.images)


def load_image_folder(root, size: int, channels: int = 3, classes: bool = False) -> FolderData:
    """Load every .png/.jpg/.jpeg/.bmp/.webp under `root` (recursively, hidden files and folders skipped).

    Each image is turned upright from its EXIF tag, converted to RGB (channels=3) or L (channels=1),
    resized so its shorter side is `size` and center-cropped to size x size. With `classes`, an image's
    class is its first-level subfolder, and classes are numbered in sorted name order.
    Files that fail to decode are skipped with one warning.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    root = Path(root)
    if not root.exists():
        from . import BUILTIN  # here, not at the top: the package imports this module while it is being built

        raise DataError(
            f"no such folder: {root}; pass a folder of images or a built-in dataset name: {', '.join(BUILTIN)}")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; pass the folder that holds the images")
    paths = find_images(root)
    if not paths:
        raise DataError(f"no image files under {root} (subfolders searched too); "
                        f"accepted extensions: {', '.join(EXTENSIONS)}")

    labels, class_names = None, None
    if classes:
        loose = [p for p in paths if p.parent == root]
        if loose:
            raise DataError(f"classes=True needs the images in one subfolder per class (root/cat/1.png, "
                            f"root/dog/2.png), but {len(loose)} are directly in {root}, e.g. {loose[0].name}")
        folder_names = [p.relative_to(root).parts[0] for p in paths]
        class_names = sorted(set(folder_names))
        index = {name: i for i, name in enumerate(class_names)}
        labels = [index[name] for name in folder_names]

    mode = "RGB" if channels == 3 else "L"
    images, kept, failed = [], [], []
    with strict_decoding():
        for i, path in enumerate(tqdm(paths, desc="loading images", unit="img", disable=len(paths) < 200)):
            try:
                images.append(_load_one(path, size, mode))
                kept.append(i)
            except DECODE_ERRORS as error:
                failed.append((path, error))

    if not images:
        path, error = failed[0]
        raise DataError(f"none of the {len(paths)} image files under {root} could be read, "
                        f"e.g. {path}: {error}; check that they are images and not empty or cut-off downloads")
    if failed:
        named = ", ".join(f"{path.relative_to(root)} ({error})" for path, error in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        warnings.warn(f"skipped {len(failed)} of {len(paths)} image files under {root} that could not be read: "
                      f"{named}{more}", UserWarning, stacklevel=2)

    array = np.stack(images)
    if channels == 1:
        array = array[..., None]
    if labels is not None:
        labels = np.array([labels[i] for i in kept], dtype=np.int64)
    return FolderData(array, labels, class_names, [str(paths[i]) for i in kept])


@contextmanager
def strict_decoding():
    """A truncated file must fail to decode rather than load half-grey, whatever the rest of the program set."""
    setting = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = setting


def find_images(root: Path) -> list[Path]:
    """Image files under `root` by extension (any case), skipping hidden files and folders, in sorted order."""
    found = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        # hidden entries are editor, OS and notebook leftovers (.ipynb_checkpoints, macOS ._x.png), not data
        if path.suffix.lower() in EXTENSIONS and not any(part.startswith(".") for part in parts) and path.is_file():
            found.append(path)
    # sorted by the path below root, so the order (and so the labels and any split) is the same on every machine
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _load_one(path: Path, size: int, mode: str) -> np.ndarray:
    """One image as a (size, size, 3) or (size, size) uint8 array: upright, converted, resized, center-cropped."""
    return load_with_geometry(path, size, mode)[0]


def load_with_geometry(path: Path, size: int, mode: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """_load_one's image and where it came from: (width, height, left, top), the upright image's size after
    resizing and the crop's offset, so a box at normalised (u, v) lands at (u * width - left, v * height - top).
    (Normalised, because a JPEG decoded in draft mode is smaller than the file's stated size.)"""
    with Image.open(path) as image:
        # lets JPEG decode at 1/2, 1/4 or 1/8 scale when that still covers size x size: big photos load far faster
        image.draft(mode, (size, size))
        image.load()  # decode now, so a truncated or corrupt file fails inside the caller's try
        image = ImageOps.exif_transpose(image)
        image = image.convert(mode)
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new_size, Image.BICUBIC, reducing_gap=3.0)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8), (new_size[0], new_size[1], left, top)


def load_image(path, size: int, channels: int = 3) -> np.ndarray:
    """One image file as (size, size, channels) uint8, resized and center-cropped as the folder loader does."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such image file: {path}")
    try:
        image = _load_one(path, size, "RGB" if channels == 3 else "L")
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {path} as an image ({e}); pass a PNG, JPEG, BMP or WebP file") from None
    return image.reshape(size, size, channels)
