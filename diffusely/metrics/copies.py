"""Does the model copy its training images? Nearest training neighbours and Carlini's ratio test.

For a sample x, with d_1 <= ... <= d_k its distances to its k nearest training images,

    ratio(x) = d_1 / mean(d_1, ..., d_k)          a near-copy when ratio < THRESHOLD

(Carlini et al. 2023, "Extracting Training Data from Diffusion Models", §5.1: they divide by
alpha * mean with alpha = 0.5 and n = k = 50 neighbours, so their distance is 2 * ratio). A copy sits
much closer to one training image than to the rest of its neighbourhood; a new image of a dense class
is close to many, and a plain distance threshold would flag it. Distances are RMS over the
coordinates (L2 / sqrt(D)), so pixel distances read in the [-1, 1] units of the images; the ratio is
the same either way.

The scale is the training set's own: `CopyDetector.fit` measures every training image (or a random
subset of them) against the others, leaving itself out, so a report can show where samples fall
against the train-to-train and held-out-to-train ratios. The same test runs on features (the domain
network's) where the caller gives them; the verdict is the pixel test's, the one calibrated. A run
trained with flips can copy an image mirrored: `flips=True` tests each sample both ways.

    detector = CopyDetector.fit(train)                  # (M, C, H, W) in [-1, 1], after the run's resize
    detector.check(samples).near_copy                   # (B,) bool, a batch at a time
    copy_report(samples, train, held_out)               # the JSON-ready report; save_copies_figure draws it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

# Carlini et al. 2023 §5.1: the 50 nearest training images make the neighbourhood
DEFAULT_K = 50
# ratio below which a sample is a near-copy: Carlini et al.'s 1/3 on d_1 / (0.5 mean), i.e. 1/6 here.
# Calibrated on our data (32 x 32, default k, 50 to 4000 training images, 1000 held-out of a new seed):
# no training image (each against the others) and no held-out image of shapes or defects falls under
# it (their smallest ratios: 0.196 and 0.205 for 4000 shapes, 0.25 or more for defects), while a
# training image plus noise of std 0.01 always does (ratios up to 0.15). Denser sets crowd it: with
# 10,000 shapes, or 4000 with flips, 0.1% of held-out images fall under it.
THRESHOLD = 1 / 6
# train-to-train ratios are measured on at most this many training images (against all of them)
REFERENCE_COUNT = 1000
BLOCK = 1024  # rows of queries and of training vectors per distance block: 8 MiB of float64 at a time
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95)


class CopyError(ValueError):
    """Inputs the copy detector cannot compare; the message says what to fix."""


def as_vectors(x, name: str) -> torch.Tensor:
    """(N, C, *spatial) images or (N, D) features, a tensor or numpy array -> (N, D) float32 or float64 on the
    CPU (float32 stays float32: distances are taken in float64 a block at a time, so a large training set is
    held once, at its own precision)."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().cpu()
    if x.ndim < 2 or len(x) == 0 or x.dtype == torch.uint8:
        raise CopyError(f"{name} must be float (N, C, *spatial) images in [-1, 1] or (N, D) features with N >= 1, "
                        f"got {x.dtype} of shape {tuple(x.shape)} (uint8 images: convert them with "
                        "diffusely.data.to_tensor)")
    x = x.reshape(len(x), -1)
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if not torch.isfinite(x).all():
        raise CopyError(f"{name} contain NaN or infinite values; only finite images or features can be compared")
    return x


def nearest_neighbours(queries: torch.Tensor, train: torch.Tensor, k: int, *, exclude: Optional[torch.Tensor] = None,
                       block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of train (M, D) to each row of queries (N, D), both float (see as_vectors):
    RMS distances (N, k), ascending, and their indices into train (N, k) int64.

    exclude: (N,) int64, for each query a row of train that is not its neighbour (the query itself, when
    training images are measured against the others). Distances come from |q|^2 + |t|^2 - 2 q.t in
    blocks of `block` x `block`, so memory stays O(block^2 + N k) for any N and M; 2 N M D flops.
    """
    if queries.shape[1] != train.shape[1]:
        raise CopyError(f"the samples have {queries.shape[1]} values each but the training images "
                        f"{train.shape[1]}: resize the samples to the run's image size and channels first")
    most = len(train) - (exclude is not None)
    if not 1 <= k <= most:
        raise CopyError(f"k={k} nearest neighbours asked of {most} training images"
                        f"{' (each less itself)' if exclude is not None else ''}: pass k between 1 and {most}, "
                        "or more training images")
    # centring on the training mean keeps |q|^2 and |t|^2 small, so their difference loses few digits
    centre = train.mean(0, dtype=torch.float64)
    train_sq = torch.cat([((t.double() - centre) ** 2).sum(1) for t in train.split(block)])
    distances, indices = [], []
    for q0 in range(0, len(queries), block):
        q = queries[q0:q0 + block].double() - centre
        q_sq = (q ** 2).sum(1, keepdim=True)
        best_d, best_i = q.new_empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.int64)
        for t0 in range(0, len(train), block):
            t = train[t0:t0 + block].double() - centre
            d2 = q_sq + train_sq[None, t0:t0 + len(t)] - 2 * q @ t.T
            if exclude is not None:
                own = exclude[q0:q0 + block] - t0
                hit = ((own >= 0) & (own < len(t))).nonzero()[:, 0]
                d2[hit, own[hit]] = float("inf")
            cand_d = torch.cat([best_d, d2], 1)
            cand_i = torch.cat([best_i, torch.arange(t0, t0 + len(t)).expand(len(q), -1)], 1)
            best_d, pick = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False, sorted=True)
            best_i = cand_i.gather(1, pick)
        distances.append(best_d)
        indices.append(best_i)
    d = torch.cat(distances).clamp(min=0).sqrt() / train.shape[1] ** 0.5
    return d, torch.cat(indices)


def copy_ratio(distances: torch.Tensor) -> torch.Tensor:
    """Carlini's ratio of (N, k) ascending distances: nearest over the mean of all k, (N,). An exact copy
    of a training image whose k neighbours all coincide with it (0 / 0) counts as 0, a copy."""
    mean = distances.mean(1)
    return torch.where(mean > 0, distances[:, 0] / mean.clamp(min=torch.finfo(mean.dtype).tiny), 0.0)


def default_k(count: int) -> int:
    """Neighbours for a training set of `count` images: Carlini's 50, but at most a tenth of the set, so
    the mean measures the local neighbourhood and not the whole set's spread (with k = 49 of 50 defects
    images, 4% of fresh images fell under the threshold; with k = 5, none), and at least 2."""
    return max(2, min(DEFAULT_K, count // 10))


@dataclass
class CopyCheck:
    """The ratio test on N samples: near_copy (N,) bool, ratio (N,) float64, distance (N,) float64 (RMS, to
    the nearest training image), index (N,) int64 (that image's row in the training set) and flipped (N,)
    bool (the sample is nearer the mirror image of the training images, for a detector with flips)."""

    near_copy: torch.Tensor
    ratio: torch.Tensor
    distance: torch.Tensor
    index: torch.Tensor
    flipped: torch.Tensor

    def __len__(self) -> int:
        return len(self.ratio)


class CopyDetector:
    """Training images (or their features) held once, to test samples against them batch after batch.

        detector = CopyDetector.fit(to_tensor(data.images))      # (N, C, H, W) in [-1, 1]
        check = detector.check(samples)                          # check.near_copy: (B,) bool

    `reference` is the same test on the training images themselves, each against the others: the
    scale a sample's ratio reads against.
    """

    def __init__(self, train: torch.Tensor, shape: tuple, k: int, threshold: float, flips: bool,
                 reference_count: int, seed: int):
        self.train, self.shape, self.k, self.threshold, self.flips = train, shape, k, threshold, flips
        self.reference_count, self.seed = reference_count, seed
        self._reference: Optional[CopyCheck] = None

    @classmethod
    def fit(cls, train, *, k: Optional[int] = None, threshold: float = THRESHOLD, flips: bool = False,
            reference_count: int = REFERENCE_COUNT, seed: int = 0) -> "CopyDetector":
        """Hold `train`: (M, C, *spatial) images in [-1, 1] or (M, D) features, a tensor or an array.
        k: neighbours of the ratio (default: default_k(M)); threshold: the ratio under which a sample is a
        near-copy; flips: a run trained on mirrored images too (data.flip) can copy them mirrored, so a
        sample is also tested mirrored (along the last axis) and keeps the smaller ratio (twice the cost);
        reference_count: training images measured against the others (a random subset, by seed)."""
        shape = tuple(np.shape(train)[1:])
        vectors = as_vectors(train, "the training images")
        k = default_k(len(vectors)) if k is None else k
        if len(vectors) < 3:
            raise CopyError(f"the copy test needs 3 training images at least, got {len(vectors)}")
        if not 2 <= k <= len(vectors) - 1:
            raise CopyError(f"k={k} nearest neighbours of {len(vectors)} training images: pass k between 2 and "
                            f"{len(vectors) - 1} (each training image is measured against the others), or leave it "
                            f"out for {default_k(len(vectors))}")
        if not 0 < threshold < 1:
            raise CopyError(f"the ratio threshold must be in (0, 1), got {threshold}; the default, "
                            f"{THRESHOLD:.4f}, is Carlini et al.'s")
        if reference_count < 1:
            raise CopyError(f"reference_count must be >= 1, got {reference_count}")
        if flips and len(shape) < 2:
            raise CopyError(f"flips mirror (N, C, *spatial) images, not {len(shape)}-axis features: leave flips off")
        return cls(vectors, shape, k, threshold, flips, reference_count, seed)

    def check(self, samples, *, exclude: Optional[torch.Tensor] = None) -> CopyCheck:
        """The ratio test on samples shaped as the training images: costs 2 B M D flops for B samples."""
        if tuple(np.shape(samples)[1:]) != self.shape:
            raise CopyError(f"samples of shape {tuple(np.shape(samples)[1:])} cannot be compared with training "
                            f"images of shape {self.shape}: give both after the run's resize, as (N, C, *spatial)")
        x = as_vectors(samples, "the samples")
        distances, indices = nearest_neighbours(x, self.train, self.k, exclude=exclude)
        ratio, distance, index = copy_ratio(distances), distances[:, 0], indices[:, 0]
        flipped = torch.zeros(len(x), dtype=torch.bool)
        if self.flips:
            # distances from the mirrored sample are those from the sample to the mirrored training images
            mirrored = x.reshape(len(x), *self.shape).flip(-1).reshape(len(x), -1)
            distances, indices = nearest_neighbours(mirrored, self.train, self.k, exclude=exclude)
            mirror_ratio = copy_ratio(distances)
            flipped = mirror_ratio < ratio
            ratio = torch.where(flipped, mirror_ratio, ratio)
            distance = torch.where(flipped, distances[:, 0], distance)
            index = torch.where(flipped, indices[:, 0], index)
        return CopyCheck(ratio < self.threshold, ratio, distance, index, flipped)

    @property
    def reference(self) -> CopyCheck:
        """The test on min(reference_count, M) training images, each against the other M - 1 (computed once)."""
        if self._reference is None:
            count = min(self.reference_count, len(self.train))
            rows = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.seed))[:count]
            rows = rows.sort().values
            self._reference = self.check(self.train[rows].reshape(count, *self.shape), exclude=rows)
        return self._reference


def quantiles(values: torch.Tensor) -> dict[str, float]:
    """Min and the QUANTILES of (N,) values, as a JSON-ready dict {"min": .., "1%": .., ..., "95%": ..}."""
    q = np.quantile(values.numpy(), QUANTILES)
    return {("min" if p == 0 else f"{100 * p:g}%"): round(float(v), 4) for p, v in zip(QUANTILES, q)}


def space_report(detector: CopyDetector, samples, held_out=None) -> tuple[dict, CopyCheck]:
    """The ratio test in one space (pixels or features): the share of samples that are near-copies, and
    the quantiles of ratios and nearest distances of samples, training images (each against the others)
    and held-out images, with the shares flagged among the latter two. Also the samples' CopyCheck."""
    checks = {"samples": detector.check(samples), "train": detector.reference}
    if held_out is not None:
        checks["held_out"] = detector.check(held_out)
    report = {
        "k": detector.k, "threshold": round(detector.threshold, 4), "flips": detector.flips,
        "near_copies": round(float(checks["samples"].near_copy.double().mean()), 4),
        "near_copy_count": int(checks["samples"].near_copy.sum()),
        "ratio": {name: quantiles(c.ratio) for name, c in checks.items()},
        "nearest_distance": {name: quantiles(c.distance) for name, c in checks.items()},
        "flagged": {name: round(float(c.near_copy.double().mean()), 4) for name, c in checks.items()
                    if name != "samples"},
    }
    return report, checks["samples"]


def copy_report(samples: torch.Tensor, train: torch.Tensor, held_out: Optional[torch.Tensor] = None, *,
                sample_features=None, train_features=None, held_out_features=None, k: Optional[int] = None,
                threshold: float = THRESHOLD, flips: bool = False, closest: int = 8, seed: int = 0) -> dict:
    """Are the samples copies of training images? A JSON-ready report.

    samples, train, held_out: (N, C, *spatial) in [-1, 1], after the run's resize (held_out: images of the
    same source the model never saw, optional). *_features: the same images' (N, D) features (optional).
    flips: the run trained on mirrored images too (its data.flip): mirrored copies count (pixel test only).
    The verdict ("near_copies", the share of samples below the threshold) is the pixel test's, whose
    threshold is calibrated (module docstring); the feature test is reported beside it. "closest" lists
    the `closest` samples with the smallest pixel ratios and their nearest training images.
    """
    detector = CopyDetector.fit(train, k=k, threshold=threshold, flips=flips, seed=seed)
    pixel, check = space_report(detector, samples, held_out)
    report = {"definition": "ratio = RMS distance to the nearest training image / mean distance to the k nearest; "
                            "a near-copy when ratio < threshold (Carlini et al. 2023)",
              "near_copies": pixel["near_copies"], "pixel": pixel, "features": None}
    if sample_features is not None and train_features is not None:
        detector = CopyDetector.fit(train_features, k=k, threshold=threshold, seed=seed)
        report["features"] = space_report(detector, sample_features, held_out_features)[0]
    if pixel["flagged"]["train"] > 0.01:
        report["warning"] = (f"{100 * pixel['flagged']['train']:.1f}% of the training images are near-copies of "
                             "another training image: the training set holds near-duplicates, and samples near "
                             "them count as near-copies too")
    order = check.ratio.argsort()[:closest]
    report["closest"] = [{"sample": int(i), "train": int(check.index[i]), "ratio": round(float(check.ratio[i]), 4),
                          "distance": round(float(check.distance[i]), 4), "flipped": bool(check.flipped[i])}
                         for i in order]
    return report


def save_copies_figure(path, samples: torch.Tensor, train: torch.Tensor, report: dict, count: int = 8):
    """copies.png: the `count` closest pairs of a copy_report, samples above their nearest training images,
    each column captioned with its ratio (a training image the sample copies mirrored is shown mirrored, "r=0.05
    mirrored"). samples, train: (N, C, H, W) in [-1, 1], as given to copy_report."""
    from ..viz import save_strip  # viz imports PIL fonts and matplotlib's data: only when a figure is drawn

    pairs = report["closest"][:count]
    if not pairs or samples.ndim != 4:
        raise CopyError(f"copies.png shows 2-D images of a report with pairs in it; got {samples.ndim - 2}-D data "
                        f"and {len(pairs)} pairs")
    samples, train = torch.as_tensor(samples), torch.as_tensor(train)
    nearest = [train[p["train"]].flip(-1) if p.get("flipped") else train[p["train"]] for p in pairs]
    rows = [samples[[p["sample"] for p in pairs]], torch.stack(nearest)]
    return save_strip(rows, path, labels=[f"r={p['ratio']:.2f}" + " mirrored" * bool(p.get("flipped")) for p in pairs],
                      row_labels=["sample", "nearest training"], scale=max(1, 128 // samples.shape[-1]))
