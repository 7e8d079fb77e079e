"""Every audio file under a folder (WAV, FLAC, OGG), decoded into memory as fixed-length μ-law clips.

Each file is mixed down to mono, resampled to the run's rate and cut to its first `length` samples, a shorter one
padded with silence at the end (diffusely.audio.read_audio); with classes, a clip's class is its first-level
subfolder, as for images. Files that cannot be decoded (corrupt, empty, another format under an audio name) are
skipped with one warning that counts them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import EXTENSIONS, AudioMissing, read_audio, to_codes
from . import DataError
from .folder import _subfolder_labels
from .reading import regular_file


@dataclass
class AudioFolder:
    """images: (N, L, 1) uint8 μ-law codes; labels (N,) int64 and class_names with classes, else None; paths."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    paths: list[str]
    sample_rate: int


def find_audio(root: Path) -> list[Path]:
    """Audio files under `root` by extension (any case), hidden files and folders skipped, in sorted order."""
    found = [p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def is_audio_folder(root) -> bool:
    """Whether `root` is a folder holding audio files (what makes a run on it an audio run)."""
    root = Path(root)
    return root.is_dir() and bool(find_audio(root))


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def load_audio_file(path, length: int, rate: int) -> np.ndarray:
    """One audio file as (length, 1) uint8 μ-law codes at `rate` Hz, read as the folder loader reads each file; a
    DataError naming the file when it is missing, not a regular file or cannot be decoded."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such audio file: {path}")
    regular_file(path, "audio file")
    try:
        return to_codes(read_audio(path, rate, length)[None])[0]
    except AudioMissing:
        raise
    except (RuntimeError, ValueError, EOFError) as error:
        raise DataError(f"cannot read {path} as audio ({_reason(error)}); pass a file of one of: "
                        f"{', '.join(EXTENSIONS)}") from None


def load_audio_folder(root, length: int, rate: int, classes: bool = False) -> AudioFolder:
    """Load every .wav/.flac/.ogg under `root` as (length,) clips at `rate` Hz; see the module's docstring."""
    root = Path(root)
    paths = find_audio(root) if root.is_dir() else []
    if not paths:
        raise DataError(f"no audio files under {root} (subfolders searched too); accepted extensions: "
                        f"{', '.join(EXTENSIONS)}")
    labels, class_names = _subfolder_labels(root, paths) if classes else (None, None)
    waves, kept, failed = [], [], []
    for i, path in enumerate(paths):
        try:
            waves.append(read_audio(path, rate, length))
            kept.append(i)
        except AudioMissing:
            raise
        except (RuntimeError, ValueError, EOFError) as error:  # soundfile's LibsndfileError is a RuntimeError
            failed.append((path, _reason(error)))
    if not waves:
        path, error = failed[0]
        raise DataError(f"none of the {len(paths)} audio files under {root} could be read, e.g. {path}: {error}")
    if failed:
        named = ", ".join(f"{path.relative_to(root)} ({error})" for path, error in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        warnings.warn(f"skipped {len(failed)} of {len(paths)} audio files under {root} that could not be read: "
                      f"{named}{more}", UserWarning, stacklevel=2)
    if labels is not None:
        labels = np.array([labels[i] for i in kept], dtype=np.int64)
    return AudioFolder(to_codes(np.stack(waves)), labels, class_names, [str(paths[i]) for i in kept], rate)
