"""Coherence of a clip read back from its pixels: do the frames belong together?

Each frame is segmented as the prompt-adherence checker does (diffusely.metrics.adherence.segment: distance from
the border's median colour, 4-connected regions), each region read as (colour, area, centroid). Then

- identity: the objects of frame 0 are found again in every frame (same colour within COLOUR_TOLERANCE, area
  within AREA_RATIO of its first), and no object appears or vanishes: the share of frames that keep them all;
- smoothness: each object's centroid follows a constant-velocity path that may reflect at the borders: per axis
  and interior frame, the acceleration is under STEP_TOLERANCE pixels, or the velocity flips sign near a border
  (the object's half-extent from it, within one step); the share of (object, axis, frame) that do;
- flicker: 1 - the mean change, over consecutive frames, of the background pixels (those outside every object in
  both frames, one pixel of margin), in units of FLICKER_SCALE grey levels (floored at 0).

The clip's coherence is their product: a real moving-shapes clip scores about 1, the same frames shuffled score
low on smoothness (objects jump), a clip whose objects change colour or shape score low on identity, a clip whose
background shimmers low on flicker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .adherence import segment

COLOUR_TOLERANCE = 60.0  # RGB distance within which two regions have the same colour
AREA_RATIO = 1.6  # a region may grow or shrink by this factor and stay the same object (edges, turning shapes)
STEP_TOLERANCE = 1.0  # pixels of acceleration a constant velocity is allowed (antialiased centroids)
BORDER_SLACK = 3.5  # pixels between a turning shape's extent in a frame and the circle it bounces with
FLICKER_SCALE = 8.0  # grey levels of mean background change that count as full flicker


@dataclass
class Track:
    """One object through a clip: colour (3,), areas (T,), centroids (T, 2) in (x, y) pixels, its box's low and high
    edges (T, 2) each; a frame where it was not found holds NaN."""

    colour: np.ndarray
    areas: np.ndarray
    centroids: np.ndarray
    low: np.ndarray
    high: np.ndarray


def regions(frame: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """(S, S, 3) uint8 -> its objects [{colour, area, centroid, low, high, mask}] and the foreground mask (S, S)."""
    _, distance, masks = segment(frame)
    found = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        core = distance[mask] >= np.percentile(distance[mask], 50)  # the inside, not the antialiased edge
        colour = np.median(frame[mask][core].astype(np.float32), axis=0)
        found.append({"colour": colour, "area": float(mask.sum()), "centroid": np.array([xs.mean(), ys.mean()]),
                      "low": np.array([xs.min(), ys.min()]), "high": np.array([xs.max() + 1, ys.max() + 1]),
                      "mask": mask})
    foreground = np.any([r["mask"] for r in found], axis=0) if found else np.zeros(frame.shape[:2], bool)
    return found, foreground


def track(clip: np.ndarray) -> tuple[list[Track], list[int], list[np.ndarray]]:
    """(T, S, S, 3) uint8 -> one Track per object of frame 0, the count of regions per frame and the foreground
    masks. Each frame's region nearest in colour (then in position) continues a track."""
    frames = [regions(frame) for frame in clip]
    t = len(clip)
    tracks = [Track(r["colour"], np.full(t, np.nan), *[np.full((t, 2), np.nan) for _ in range(3)])
              for r in frames[0][0]]
    for i, (found, _) in enumerate(frames):
        free = list(range(len(found)))
        for k in tracks:
            if not free:
                break
            last = k.centroids[:i][~np.isnan(k.centroids[:i, 0])]
            cost = [np.linalg.norm(found[j]["colour"] - k.colour) + (0.01 * np.linalg.norm(found[j]["centroid"] - last[-1])
                                                                    if len(last) else 0.0) for j in free]
            j = free[int(np.argmin(cost))]
            if np.linalg.norm(found[j]["colour"] - k.colour) <= COLOUR_TOLERANCE:
                k.areas[i], k.centroids[i] = found[j]["area"], found[j]["centroid"]
                k.low[i], k.high[i] = found[j]["low"], found[j]["high"]
                free.remove(j)
    return tracks, [len(found) for found, _ in frames], [mask for _, mask in frames]


def identity(tracks: list[Track], counts: list[int]) -> float:
    """The share of frames holding every object of frame 0 (colour kept, area within AREA_RATIO) and no other."""
    if not tracks:
        return 0.0
    ok = np.ones(len(counts), bool)
    for k in tracks:
        ratio = k.areas / k.areas[0]
        ok &= ~np.isnan(ratio) & (ratio <= AREA_RATIO) & (ratio >= 1 / AREA_RATIO)
    return float((ok & (np.asarray(counts) == len(tracks))).mean())


def smoothness(tracks: list[Track], size: int) -> float:
    """The share of (object, interior frame) whose step is, on both axes, a constant velocity or a bounce at a
    border (the velocity flips sign within reach of a border, its speed at most the track's usual one)."""
    good, total = 0, 0
    for k in tracks:
        c = k.centroids
        v = np.diff(c, axis=0)  # (T - 1, 2)
        a = np.diff(v, axis=0)  # (T - 2, 2)
        seen = np.abs(v[~np.isnan(v).any(axis=1)])  # the steps between frames where the object was found
        usual = (np.median(seen, axis=0) if len(seen) else np.zeros(2)) + STEP_TOLERANCE  # (2,)
        reach = np.minimum(k.low, size - k.high)[1:-1] - BORDER_SLACK  # (T - 2, 2) pixels to a border
        # a reflection inside a step shows as a slower step then a flipped one: either, within reach of a border
        turn = (np.sign(v[:-1]) != np.sign(v[1:])) | (np.abs(v[1:]) < np.abs(v[:-1])) | (np.abs(v[:-1]) < np.abs(v[1:]))
        bounce = turn & (np.abs(v[:-1]) <= usual) & (np.abs(v[1:]) <= usual) & (reach <= usual)
        ok = (np.abs(a) <= STEP_TOLERANCE) | bounce  # NaN (object lost) compares False
        good += int(ok.all(axis=1).sum())
        total += len(a)
    return good / total if total else 0.0


def flicker(clip: np.ndarray, foreground: list[np.ndarray]) -> float:
    """1 - the mean absolute change of background pixels between consecutive frames / FLICKER_SCALE, at least 0."""
    changes = []
    for t in range(len(clip) - 1):
        busy = foreground[t] | foreground[t + 1]
        busy = busy | np.roll(busy, 1, 0) | np.roll(busy, -1, 0) | np.roll(busy, 1, 1) | np.roll(busy, -1, 1)
        if (~busy).any():
            changes.append(np.abs(clip[t + 1].astype(np.float32) - clip[t].astype(np.float32))[~busy].mean())
    return max(0.0, 1.0 - float(np.mean(changes)) / FLICKER_SCALE) if changes else 0.0


def coherence(clip: np.ndarray) -> dict[str, float]:
    """(T, S, S, 3) uint8 clip -> {"identity", "smoothness", "flicker", "coherence"} in [0, 1]."""
    tracks, counts, foreground = track(np.asarray(clip))
    scores = {"identity": identity(tracks, counts), "smoothness": smoothness(tracks, clip.shape[2]),
              "flicker": flicker(np.asarray(clip), foreground)}
    scores["coherence"] = scores["identity"] * scores["smoothness"] * scores["flicker"]
    return scores


def mean_coherence(clips: np.ndarray) -> dict[str, float]:
    """(N, T, S, S, 3) uint8 -> each score's mean over the clips."""
    rows = [coherence(clip) for clip in clips]
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}
