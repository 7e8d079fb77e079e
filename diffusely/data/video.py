"""Video: clips read from a folder (GIF, MP4, WebM, or a subfolder of numbered images per clip) and written back.

GIFs are read and written by pillow (a dependency already); MP4 and WebM through PyAV (`pip install
diffusely[video]`: FFmpeg's libraries inside its wheel, no other dependency), imported only where such a file is met.

Clip policy, stated once: every file is decoded whole (its frames as RGB), resampled to `fps` frames a second by
taking, for each output time k / fps, the latest source frame shown at that time (a GIF's own frame durations, a
video's timestamps; an image sequence, its frames in natural name order, is taken to be at `fps` already); each
frame kept is centre-cropped to a square and resized (LANCZOS) to size x size as it is decoded (only the clips are
held in memory); the resampled stream is cut into consecutive non-overlapping clips of
`frames` frames from its start, a tail shorter than a clip dropped. A file too short for one clip is skipped, as is
one that cannot be decoded: both with one warning that counts them. With classes, a clip's class is its file's
first-level subfolder, as for images.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageSequence

from . import DataError
from .folder import _subfolder_labels
from .transforms import to_uint8

VIDEO_EXTENSIONS = (".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_FPS = 8.0  # frames a second of a run's clips when its data.sample_rate is 0
CODECS = {"mp4": "libx264", "webm": "libvpx-vp9"}


@dataclass
class VideoFolder:
    """images: (N, T, S, S, 3) uint8 clips; labels (N,) int64 and class_names with classes, else None; paths: the
    file (or image-sequence folder) each clip came from."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    paths: list[str]


def _av():
    try:
        import av
    except ImportError as error:
        raise DataError("reading or writing MP4/WebM needs PyAV: pip install 'diffusely[video]'") from error
    return av


def read_video(path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of a GIF, MP4 or WebM as (H, W, 3) uint8 RGB, and the times in seconds each is shown from, with
    one more: the end of the last."""
    frames, times = [], []
    for frame, t in _shown(Path(path)):
        frames += [] if frame is None else [frame]
        times.append(t)
    return frames, times


def _shown(path: Path) -> Iterator[tuple[np.ndarray | None, float]]:
    """Each frame of a video file as decoded, (H, W, 3) uint8 RGB, with the time it is shown from (the first at 0),
    then (None, the end of the last)."""
    if path.suffix.lower() == ".gif":
        with Image.open(path) as gif:
            t = 0.0
            for frame in ImageSequence.Iterator(gif):
                yield np.asarray(frame.convert("RGB")), t
                t += max(frame.info.get("duration", 100), 10) / 1000  # browsers show 0-10 ms frames for 100 ms
            yield None, t
            return
    with _av().open(str(path)) as container:
        stream = container.streams.video[0]
        rate, start, count, t = float(stream.average_rate or 25), None, 0, 0.0
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else count / rate
            start = t if start is None else start
            count += 1
            yield frame.to_ndarray(format="rgb24"), t - start
        yield None, (t - start + 1 / rate) if count else 0.0


def resample(frames: list, times: list[float], fps: float) -> list:
    """The frames shown at times 0, 1/fps, 2/fps, ... before the end (times: each frame's start, then the end),
    the latest to start at or before each."""
    return list(_resampled(zip([*frames, None], times), fps))


def _resampled(shown: Iterable[tuple], fps: float, convert: Callable = lambda frame: frame) -> Iterator:
    """resample over a stream of (frame, start) pairs that ends with (None, end), as it is decoded: convert(frame)
    for each frame shown at k / fps, converted once however often it is shown, and no decoded frame kept longer
    than it is shown (a long film at full size is never in memory at once)."""
    k, raw, converted = 0, None, None
    for frame, t in shown:
        # the output times k / fps before this frame starts (or before the end) show the frame before it
        before = t * fps - 1e-6 if frame is None else (t - 1e-6) * fps
        while raw is not None and k < before:
            converted = convert(raw) if converted is None else converted
            yield converted
            k += 1
        if frame is None:
            return
        raw, converted = frame, None


def square(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): the centred square crop, resized with LANCZOS."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = Image.fromarray(frame[top:top + side, left:left + side])
    return np.asarray(image.resize((size, size), Image.LANCZOS) if side != size else image)


def find_videos(root: Path) -> list[Path]:
    """Video files and image-sequence folders (a folder holding images and no subfolder) under `root`, sorted."""
    found = []
    for p in sorted(root.rglob("*")):
        if _hidden(p, root):
            continue
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(p)
        elif p.is_dir() and p != root and _image_sequence(p):
            found.append(p)
    return found


def _image_sequence(folder: Path) -> list[Path]:
    """The frames of an image-sequence folder in natural name order (frame2 before frame10); none when the folder
    also holds a subfolder or a video file (its images are then not one clip's frames)."""
    items = [p for p in folder.iterdir() if not p.name.startswith(".")]  # hidden: skipped, as find_videos does
    if any(p.is_dir() or p.suffix.lower() in VIDEO_EXTENSIONS for p in items):
        return []
    return sorted((p for p in items if p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural)


def _natural(path: Path) -> tuple:
    """Sort key: the name's runs of digits compared as numbers, then the name itself (1.png before 01.png)."""
    parts = re.split(r"(\d+)", path.name)
    return [int(part) if i % 2 else part for i, part in enumerate(parts)], path.name


def _mixed(root: Path, paths: list[Path]) -> None:
    """One warning when the images in a video folder look like an image dataset's (some not in a sequence folder,
    or more sequence folders than video files: one stray video among class folders of images): what was read as
    image sequences, and what was ignored."""
    images = sum(1 for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p, root))
    sequences = [p for p in paths if p.is_dir()]
    ignored = images - sum(len(_image_sequence(p)) for p in sequences)
    if not ignored and len(sequences) <= len(paths) - len(sequences):
        return
    skipped = f" and ignored {ignored} image file(s) that lie beside a video file or a subfolder" if ignored else ""
    warnings.warn(f"{root} holds {len(paths) - len(sequences)} video file(s) and images: read {len(sequences)} "
                  f"folder(s) of images as image sequences (a clip source each, frames in name order){skipped}; a "
                  "folder of images alone trains an image run", stacklevel=3)


def is_video_folder(root) -> bool:
    """Whether `root` is a folder of video files (what makes a run on it a video run); folders of images are not."""
    root = Path(root)  # hidden paths are skipped, as find_videos skips them: a .thumbs/x.gif makes no video run
    return root.is_dir() and any(p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() and not _hidden(p, root)
                                 for p in root.rglob("*"))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def clips_of(path: Path, size: int, frames: int, fps: float) -> list[np.ndarray]:
    """The (frames, size, size, 3) clips of one file or image-sequence folder, by the module's policy."""
    if path.is_dir():
        shown = []
        for p in _image_sequence(path):
            with Image.open(p) as image:
                shown.append(square(np.asarray(image.convert("RGB")), size))
    else:  # each frame made small as it is decoded: only the clips' frames, at their size, are kept
        with contextlib.closing(_shown(path)) as stream:  # the file closed here, even when a frame fails
            shown = list(_resampled(stream, fps, lambda frame: square(frame, size)))
    shown = shown[:len(shown) // frames * frames]
    return [np.stack(shown[i:i + frames]) for i in range(0, len(shown), frames)]


def first_clip(path, size: int, frames: int = 8, fps: float = DEFAULT_FPS) -> np.ndarray:
    """The first (frames, size, size, 3) clip of a video file; DataError naming it when it cannot be read or is short."""
    try:
        clips = clips_of(Path(path), size, frames, fps)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the decoder raises, said in one line
        raise DataError(f"cannot read {path} as a video ({str(error).splitlines()[0] if str(error) else error!r})")
    if not clips:
        raise DataError(f"{path} holds fewer than {frames} frames at {fps:g} fps")
    return clips[0]


def load_video_folder(root, size: int, frames: int, fps: float, classes: bool = False) -> VideoFolder:
    """Every clip under `root` (see the module's docstring for the policy)."""
    root = Path(root)
    paths = find_videos(root) if root.is_dir() else []
    if not paths:
        raise DataError(f"no videos under {root}; accepted: {', '.join(VIDEO_EXTENSIONS)} files, or folders of images")
    _mixed(root, paths)
    labels, class_names = _subfolder_labels(root, paths) if classes else (None, None)
    clips, rows, failed, short = [], [], 0, 0
    for i, path in enumerate(paths):
        try:
            found = clips_of(path, size, frames, fps)
        except DataError:
            raise
        except Exception:  # noqa: BLE001 - a corrupt file of any kind: counted and skipped below
            failed += 1
            continue
        short += not found
        clips += found
        rows += [i] * len(found)
    if failed or short:
        warnings.warn(f"{root}: skipped {failed} unreadable file(s) and {short} shorter than {frames} frames at "
                      f"{fps:g} fps", stacklevel=2)
    if not clips:
        raise DataError(f"no clip of {frames} frames could be read under {root}: use fewer --frames or longer videos")
    return VideoFolder(np.stack(clips), None if labels is None else np.asarray(labels, dtype=np.int64)[rows], class_names,
                       [str(paths[i]) for i in rows])


def write_video(path, clip: np.ndarray, fps: float, comment: str | None = None, fmt: str | None = None) -> None:
    """(T, H, W, 3) uint8 frames to a GIF (looping; `comment` in its comment block), MP4 (H.264) or WebM (VP9);
    fmt: gif, mp4 or webm (default: the path's suffix)."""
    path = Path(path)
    fmt = fmt or path.suffix.lower().lstrip(".")
    if fmt == "gif":
        images = [Image.fromarray(f) for f in clip]
        extra = {"comment": comment.encode()} if comment else {}
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                       loop=0, optimize=False, **extra)
        return
    if fmt not in CODECS:
        raise DataError(f"cannot write {path.name}: choose .gif, .mp4 or .webm")
    av = _av()
    h, w = clip.shape[1:3]
    buffer = io.BytesIO()  # encoded in memory, then written in one go (the caller makes that atomic)
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(CODECS[fmt], rate=round(fps))
        stream.width, stream.height = w + w % 2, h + h % 2  # H.264's 4:2:0 needs even sides
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"} if fmt == "mp4" else {"crf": "12", "b": "0"}
        for f in clip:
            f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    path.write_bytes(buffer.getvalue())


def write_sample(x: torch.Tensor, path, fmt: str, rate: float, parameters: dict | None = None) -> None:
    """One generated clip (C, T, H, W) in [-1, 1] at `path`: a GIF or MP4 at `rate` frames a second (a GIF keeps the
    parameters as JSON in its comment), or an .npy of (T, H, W, C) uint8."""
    import json

    frames = to_uint8(x[None])[0]
    if fmt == "npy":
        with open(path, "wb") as f:
            np.save(f, frames, allow_pickle=False)
        return
    rgb = np.repeat(frames, 3, -1) if frames.shape[-1] == 1 else frames
    write_video(path, rgb, rate or DEFAULT_FPS, json.dumps(parameters) if parameters and fmt == "gif" else None, fmt)


def tiles(x: torch.Tensor, rate: float = 0) -> torch.Tensor:
    """(B, C, T, H, W) clips -> (B, C, T * H + T - 1, W) film strips (frames top to bottom, a 1-pixel white gap),
    the picture of each clip in grids and strips: a row of clips (or of noise levels) reads across, time down."""
    b, c, t, h, w = x.shape
    gap = torch.ones(b, c, t, 1, w, dtype=x.dtype, device=x.device)
    return torch.cat([x, gap], -2).reshape(b, c, t * (h + 1), w)[..., :-1, :]


def save_grid(x: torch.Tensor, path, rate: float = 0, nrow: int | None = None) -> Path:
    """Save clips (B, C, T, H, W) in [-1, 1] as one PNG of film strips, up to 16 clips a row, enlarged twice."""
    from .. import viz

    strips = tiles(x)
    return viz.save_grid(strips.repeat_interleave(2, -1).repeat_interleave(2, -2), path, nrow=nrow or min(16, len(x)))
