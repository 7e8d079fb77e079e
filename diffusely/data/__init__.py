"""Datasets as in-memory uint8 arrays: a folder of images, or a built-in dataset drawn in code.

    data = load_dataset("shapes", size=32)          # or load_dataset("path/to/images", size=64)
    x0 = to_tensor(data.images[:16])                # (16, 3, 32, 32) float in [-1, 1]
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


class DataError(ValueError):
    """A dataset could not be loaded; the message says what to fix."""


# DataError is defined before these imports because folder.py imports it from here
from .transforms import apply_flips, draw_flips, random_crops, to_tensor, to_uint8  # noqa: E402
from .folder import EXTENSIONS as IMAGE_EXTENSIONS, FolderData, find_images, load_image_folder  # noqa: E402
from ..audio import EXTENSIONS as AUDIO_EXTENSIONS  # noqa: E402
from .defects import DefectsData, render_defects  # noqa: E402
from .detection import DetectionSet, load_detection, read_coco, read_detection, read_yolo  # noqa: E402
from .shapes import ShapesData, render_shapes, write_shapes_folder  # noqa: E402
from .phantoms import PhantomsData, builtin_phantoms, render_phantoms  # noqa: E402
from .sounds import SoundsData, builtin_sounds  # noqa: E402
from .moving_shapes import MovingShapesData, render_moving_shapes  # noqa: E402
from .video import VIDEO_EXTENSIONS  # noqa: E402  (PyAV itself is imported only where a clip is read)


def builtin_shapes(size: int, seed: int = 0, count: int = 10_000, max_shapes: int = 1) -> ShapesData:
    """The built-in shapes dataset: `count` images of 1..max_shapes shapes, with labels, captions and boxes.

    The last rendering stays in memory, keyed by all four arguments (size among them), and each call gets
    its own copy: 10,000 images take ~35 s to draw at 64 x 64 on one busy core, and a latent diffusion
    benchmark loads the same set for the autoencoder, both diffusion runs and the evaluation.
    """
    data = _rendered_shapes(size, seed, count, max_shapes)
    return dataclasses.replace(data, images=data.images.copy(), labels=data.labels.copy(), captions=list(data.captions),
                               boxes=[list(b) for b in data.boxes], class_names=list(data.class_names))


@functools.lru_cache(maxsize=1)
def _rendered_shapes(size: int, seed: int, count: int, max_shapes: int) -> ShapesData:
    return render_shapes(count, size=size, seed=seed, max_shapes=max_shapes)


def builtin_defects(size: int, seed: int = 0, count: int = 4000) -> DefectsData:
    """The built-in defects dataset: `count` surfaces with 0..3 defects each, their boxes and captions
    (no image-level labels). Cached as builtin_shapes is: 4,000 images take ~10 s to draw at 64 x 64 on a
    busy core."""
    data = _rendered_defects(size, seed, count)
    return dataclasses.replace(data, images=data.images.copy(), captions=list(data.captions),
                               boxes=[list(b) for b in data.boxes], class_names=list(data.class_names))


@functools.lru_cache(maxsize=1)
def _rendered_defects(size: int, seed: int, count: int) -> DefectsData:
    return render_defects(count, size=size, seed=seed)


def builtin_moving_shapes(size: int, seed: int = 0, count: int = 2000, frames: int = 8) -> MovingShapesData:
    """The built-in video dataset: `count` clips of `frames` frames (N, T, S, S, 3), labels (shape, motion) and
    each object's true trajectory (diffusely.data.moving_shapes). Cached as builtin_shapes is: 2,000 8-frame clips
    of 32 x 32 take ~7 s to draw on a busy core."""
    data = _rendered_moving_shapes(size, seed, count, frames)
    return dataclasses.replace(data, images=data.images.copy(), labels=data.labels.copy())


@functools.lru_cache(maxsize=1)
def _rendered_moving_shapes(size: int, seed: int, count: int, frames: int) -> MovingShapesData:
    return render_moving_shapes(count, size=size, frames=frames, seed=seed)


# built-in datasets by name: each is a function (size, seed[, max_shapes]) -> data with images (N, S, S, 3)
# uint8, labels (or None), class_names, captions and boxes
# (sounds: clips (N, L, 1), size their length in samples; see MODALITIES)
BUILTIN: dict[str, Callable[..., ShapesData | DefectsData | PhantomsData | SoundsData]] = {
    "shapes": builtin_shapes, "defects": builtin_defects, "phantoms": builtin_phantoms, "sounds": builtin_sounds,
    "moving-shapes": builtin_moving_shapes}


@dataclass
class Dataset:
    """Samples (N, *spatial, C) uint8, channels last: images (N, S, S, C), or 1-D and 3-D data (N, S, C),
    (N, S, S, S, C) for a model of that `dims` (data.transforms.to_tensor gives the network's (N, C, *spatial));
    their conditions: labels (N,) int64, captions and boxes per sample, each None where the data has none."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    captions: list[str] | None
    boxes: list[list[tuple]] | None  # per image: (class, x0, y0, x1, y1[, direction]) in pixels (diffusely.layout)
    source: str

    def __len__(self) -> int:
        return len(self.images)


def load_dataset(source: str, size: int, channels: int = 3, classes: bool = False, seed: int = 0, *,
                 captions: bool = False, max_shapes: int = 1, directions: str = "auto", outside: bool = False, rate: int = 0,
                 frames: int = 0) -> Dataset:
    """Load a built-in dataset by name (see BUILTIN), a detection dataset (a YOLO folder with data.yaml, or
    COCO JSON: images with their boxes) or every image under a folder, as size x size images.

    A built-in name wins over a folder of the same name; write "./shapes" to mean the folder.
    `classes` asks a folder for labels from its subfolders, `captions` for a caption per image (see
    diffusely.text.captions); built-in datasets always carry both. `seed` and `max_shapes` (shapes per image)
    only affect built-in datasets; `directions` only detection datasets (see load_detection); `outside` lets a
    COCO file name images outside its dataset folder (see data.coco.read_coco). Audio (the built-in sounds, a
    folder of audio files: see MODALITIES) loads as clips of `size` samples at `rate` Hz (0: the default).
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if size < 1:
        raise DataError(f"size must be a positive number of pixels, got {size}")
    source = str(source)
    kind = MODALITIES[modality_of(source)]
    if kind.load is not None:  # data that is not images: its own loader (size is its length, rate its sample rate)
        return kind.load(source, size, classes=classes, seed=seed, rate=rate, **({"frames": frames} if frames else {}))
    if source in BUILTIN:
        if max_shapes != 1 and source != "shapes":
            raise DataError(f"max_shapes sets the built-in shapes data, not {source}")
        # max_shapes only when asked for, so a built-in taking just (size, seed) still loads
        data = BUILTIN[source](size, seed, **({"max_shapes": max_shapes} if max_shapes != 1 else {}))
        images = data.images if channels == 3 else to_grayscale(data.images)
        return Dataset(images, data.labels, data.class_names, data.captions, data.boxes, source)
    # load_image_folder's error for a missing path lists the built-in names too
    if max_shapes != 1:
        raise DataError(f"max_shapes sets the built-in shapes data, not a folder like {source}")
    # captions live in diffusely.text, which imports this package: imported here, where they are read
    from ..text.captions import read_captions

    labelled = read_detection(source, outside=outside)
    if labelled is not None:  # a YOLO or COCO dataset: its images, and their boxes moved with the crop
        if classes:
            raise DataError(f"{source} is a detection dataset: its classes are those of the boxes; train with "
                            f"--layout to condition on them, not --classes")
        images, boxes, paths = load_detection(labelled, size, channels, directions)
        texts = read_captions(Path(source) if Path(source).is_dir() else Path(source).parent, paths) if captions else None
        return Dataset(images, None, labelled.class_names, texts, boxes, source)
    try:
        folder = load_image_folder(source, size, channels=channels, classes=classes)
    except DataError:
        _refuse_empty(Path(source))
        raise
    texts = read_captions(source, folder.paths) if captions else None
    return Dataset(folder.images, folder.labels, folder.class_names, texts, None, source)


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, H, W, 1) uint8 luma, with PIL's convert("L") integer formula."""
    rgb = images.astype(np.uint32)
    # ITU-R 601-2 weights scaled by 2^16 and rounded, exactly as PIL computes L = R 299/1000 + G 587/1000 + B 114/1000
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


@dataclass(frozen=True)
class Modality:
    """A kind of data besides images: its spatial axes, how it is recognised and loaded, and the module that writes
    and pictures its samples (`write_sample(x, path, fmt, rate, parameters)`, `tiles(x, rate)`: a picture per
    sample, for grids and strips). `defaults`: config fields (section.field) a new run on it starts from."""

    name: str
    dims: int
    formats: tuple[str, ...]  # sample file formats, the default first
    builtins: tuple[str, ...] = ()
    detect: Optional[Callable[[Path], bool]] = None  # is this folder of this modality?
    load: Optional[Callable[..., Dataset]] = None  # (source, size, classes=, seed=, rate=) -> Dataset
    writer: str = ""  # the module of write_sample and tiles, imported when samples are written
    defaults: tuple[tuple[str, object], ...] = ()
    extensions: tuple[str, ...] = ()  # the files a folder of it holds, for the message when a folder holds none


def _load_audio(source: str, size: int, classes: bool = False, seed: int = 0, rate: int = 0) -> Dataset:
    from ..audio import DEFAULT_RATE
    from .audio import load_audio_folder

    if source in BUILTIN:  # the built-in sounds always carry their labels
        data = BUILTIN[source](size, seed, rate=rate)
        return Dataset(data.images, data.labels, data.class_names, data.captions, None, source)
    folder = load_audio_folder(source, size, rate or DEFAULT_RATE, classes=classes)
    return Dataset(folder.images, folder.labels, folder.class_names, None, None, source)


def _is_audio_folder(path: Path) -> bool:
    from .audio import is_audio_folder

    return is_audio_folder(path) and not (path / "data.yaml").exists()


def _load_video(source: str, size: int, classes: bool = False, seed: int = 0, rate: float = 0, frames: int = 8) -> Dataset:
    """Clips (N, frames, size, size, 3): the built-in moving shapes (with labels), or a folder's (diffusely.data.video)
    resampled to `rate` frames a second (0: 8)."""
    if source in BUILTIN:
        data = BUILTIN[source](size, seed, frames=frames)
        return Dataset(data.images, data.labels, data.class_names, None, None, source)
    from .video import load_video_folder

    clips = load_video_folder(source, size, frames, rate or 8.0, classes=classes)
    return Dataset(clips.images, clips.labels, clips.class_names, None, None, source)


def _is_video_folder(path: Path) -> bool:
    from .video import is_video_folder

    return is_video_folder(path)


# an audio network sees linear amplitudes (config.DataConfig.amplitude): their spread is the built-in sounds' (0.16 at
# 8 kHz), and its training noise levels sit lower than EDM's for images, where the hiss is (docs/audio.md)
AUDIO_SIGMA_DATA, AUDIO_P_MEAN = 0.16, -3.84
# what an audio run's network learns (--audio-model; docs/audio.md): the clip's log-magnitude spectrogram, a 2-D
# U-Net on it with EDM's image noise levels and Griffin-Lim back to sound, or the waveform's linear amplitudes
AUDIO_MODELS = {
    "spectrogram": (("data.amplitude", "spectrogram"), ("model.dims", 2), ("model.patch_size", 8),
                    ("diffusion.sigma_data", 0.5), ("diffusion.P_mean", -1.2)),
    "waveform": (("data.amplitude", "linear"), ("model.dims", 1), ("model.patch_size", 4),
                 ("diffusion.sigma_data", AUDIO_SIGMA_DATA), ("diffusion.P_mean", AUDIO_P_MEAN)),
}
AUDIO_MODEL = "spectrogram"
# images are the default; each other modality one line (the video engineer: add "video" here)
MODALITIES: dict[str, Modality] = {
    "image": Modality("image", 2, ("png", "npy"), extensions=IMAGE_EXTENSIONS),
    "audio": Modality("audio", 1, ("wav", "npy"), ("sounds",), _is_audio_folder, _load_audio, "diffusely.audio", (
        ("data.sample_rate", 8000), ("data.image_size", 8000), ("data.channels", 1), ("data.flip", False),
        ("model.channels", (64, 128, 256)), *AUDIO_MODELS[AUDIO_MODEL]), AUDIO_EXTENSIONS),
    "video": Modality("video", 3, ("gif", "mp4", "npy"), ("moving-shapes",), _is_video_folder, _load_video,
                      "diffusely.data.video", (("data.frames", 8), ("model.dims", 3), ("model.channels", (64, 128, 128)),
                                               ("model.attention_levels", (2,))), VIDEO_EXTENSIONS),
}


def _refuse_empty(root: Path) -> None:
    """A folder that holds no file of any modality (no image here, and none of another, or it would have been
    recognised): one message naming what each modality reads."""
    if root.is_dir() and not find_images(root):
        kinds = {name: kind.extensions for name, kind in MODALITIES.items() if kind.extensions}
        known = "; ".join(f"{name}: {', '.join(extensions)}" for name, extensions in kinds.items())
        others = " or ".join(name for name in kinds if name != "image")
        raise DataError(f"no image files under {root} (subfolders searched too), nor {others} files; accepted "
                        f"extensions: {known}")


def modality_of(source) -> str:
    """The modality of a data source: a built-in name's, a folder's by the files in it, else "image"."""
    for name, kind in MODALITIES.items():
        if str(source) in kind.builtins or (kind.detect is not None and kind.detect(Path(source))):
            return name
    return "image"


__all__ = [
    "MODALITIES",
    "Modality",
    "modality_of",
    "SoundsData",
    "builtin_sounds",
    "BUILTIN",
    "DataError",
    "Dataset",
    "DefectsData",
    "FolderData",
    "MovingShapesData",
    "PhantomsData",
    "ShapesData",
    "apply_flips",
    "builtin_defects",
    "builtin_moving_shapes",
    "builtin_phantoms",
    "builtin_shapes",
    "draw_flips",
    "load_dataset",
    "load_image_folder",
    "random_crops",
    "render_defects",
    "render_phantoms",
    "render_shapes",
    "to_grayscale",
    "to_tensor",
    "to_uint8",
    "write_shapes_folder",
]
