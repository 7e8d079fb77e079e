"""Every image under a folder, decoded into memory as size x size uint8 arrays."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import DataError
from .images import UnreadableImage, is_grayscale, load_with_geometry, strict_decoding, warn_conversions
from .reading import Notes

EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")


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

    Each image is turned upright from its EXIF tag, converted to RGB (channels=3) or L (channels=1) as
    diffusely.data.images says (16-bit and float scaled, alpha composited on white, one warning counting them),
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

    labels, class_names = _subfolder_labels(root, paths) if classes else (None, None)
    mode = "RGB" if channels == 3 else "L"
    images, kept, failed, notes = [], [], [], Notes()
    with strict_decoding():
        for i, path in enumerate(tqdm(paths, desc="loading images", unit="img", disable=len(paths) < 200)):
            try:
                images.append(load_with_geometry(path, size, mode, notes)[0])
                kept.append(i)
            except UnreadableImage as error:
                failed.append((path, error.reason))

    if not images:
        path, error = failed[0]
        raise DataError(f"none of the {len(paths)} image files under {root} could be read, "
                        f"e.g. {path}: {error}; check that they are images and not empty or cut-off downloads")
    warn_conversions(notes, len(paths), root)
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


def grayscale_images(root, size: int) -> int:
    """The number of images under `root` when every one that can be read is grayscale (images.is_grayscale), else 0.

    A one-channel file is known from its header; an RGB one is decoded (a JPEG at the reduced scale the loader
    decodes it at) and compared channel by channel. The first colour image ends the search, so a colour folder
    costs a decode or two, and a folder of grayscale files saved as RGB one more decode of each image: about as
    long again as loading it (benchmarks/NOTES.md)."""
    root = Path(root)
    if not root.is_dir():
        return 0
    gray, paths = 0, find_images(root)
    with strict_decoding():
        for path in tqdm(paths, desc="checking for colour", unit="img", disable=len(paths) < 200, leave=False):
            try:
                if not is_grayscale(path, (size, size)):
                    return 0
                gray += 1
            except DataError:  # unreadable, or not a regular file: the loader skips it, or says why it cannot
                continue
    return gray


def _subfolder_labels(root: Path, paths: list[Path]) -> tuple[list[int], list[str]]:
    """Each image's class index, its first-level subfolder's in sorted name order, and the class names."""
    loose = [p for p in paths if p.parent == root]
    if loose:
        raise DataError(f"classes=True needs the images in one subfolder per class (root/cat/1.png, "
                        f"root/dog/2.png), but {len(loose)} are directly in {root}, e.g. {loose[0].name}")
    folder_names = [p.relative_to(root).parts[0] for p in paths]
    class_names = sorted(set(folder_names))
    index = {name: i for i, name in enumerate(class_names)}
    return [index[name] for name in folder_names], class_names


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


def load_image(path, size: int, channels: int = 3) -> np.ndarray:
    """One image file as (size, size, channels) uint8, converted, resized and center-cropped as the folder loader
    does. Raises a DataError naming the file when it is missing, not a regular file or cannot be decoded."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such image file: {path}")
    notes = Notes()
    with strict_decoding():
        image = load_with_geometry(path, size, "RGB" if channels == 3 else "L", notes)[0]
    warn_conversions(notes, 1, path)
    return image.reshape(size, size, channels)
