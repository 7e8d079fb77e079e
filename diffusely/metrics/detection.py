"""Detection yardsticks: COCO-style mAP, layout fidelity, and a small detector to measure them with.

The layout-to-image literature scores a generated image by running a detector trained on real data and
checking that it finds the boxes that were asked for ("YOLO score", Li et al. 2021). Ultralytics YOLO needs
torchvision, which this project does not install (its PyPI wheels pull a CUDA torch), so the detector here
is a CenterNet (Zhou et al. 2019, "Objects as Points"): a conv net predicting a heatmap of box centers per
class, the box size and the sub-cell offset at each center. It needs no anchors and no NMS (peaks are
3x3 local maxima), which keeps it to one screen, and it trains in minutes on small images on a CPU.

    net = train_detector(images, boxes, num_classes=4, steps=1500)     # images (N, S, S, 3) uint8, boxes in pixels
    found = detect(net, images)                                       # per image [(class, score, x0, y0, x1, y1)]
    ap = mean_average_precision(found, boxes, num_classes=4)          # {"mAP50": ..., "mAP50-95": ..., per class}
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's 0.50:0.05:0.95
RECALL_POINTS = np.linspace(0, 1, 101)  # COCO's 101-point interpolated precision


# ---------------------------------------------------------------------------------------------- scoring

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) and (M, 4) boxes x0, y0, x1, y1 -> (N, M) intersection over union."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def _match(detections, truths, iou_threshold: float):
    """Greedy matching in score order, each detection to the unmatched truth it overlaps most (COCO's rule).
    detections: per image (D, 5) score, box; truths: per image (G, 4). Returns scores, whether each matched."""
    scores, hits = [], []
    for det, gt in zip(detections, truths):
        if len(det) == 0:
            continue
        det = det[np.argsort(-det[:, 0], kind="stable")]
        taken = np.zeros(len(gt), bool)
        iou = box_iou(det[:, 1:], gt) if len(gt) else np.zeros((len(det), 0))
        for k in range(len(det)):
            candidates = np.where(~taken & (iou[k] >= iou_threshold))[0] if len(gt) else []
            hit = len(candidates) > 0
            if hit:
                taken[candidates[np.argmax(iou[k, candidates])]] = True
            scores.append(det[k, 0])
            hits.append(hit)
    return np.array(scores), np.array(hits, bool)


def average_precision(scores: np.ndarray, hits: np.ndarray, positives: int) -> float:
    """Area under the precision-recall curve as COCO computes it: precision made monotone, read at 101 recalls."""
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, 1e-12)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def _split(found, truth, cls):
    det = [np.array([[d[1], *d[2:6]] for d in image if int(d[0]) == cls], float).reshape(-1, 5) for image in found]
    gt = [np.array([b[1:5] for b in image if int(b[0]) == cls], float).reshape(-1, 4) for image in truth]
    return det, gt


def _same_count(found, truth) -> None:
    if len(found) != len(truth):
        raise ValueError(f"got detections for {len(found)} images and boxes for {len(truth)}; give both per image, in one order")


def mean_average_precision(found: Sequence[Sequence[tuple]], truth: Sequence[Sequence[tuple]], num_classes: int) -> dict:
    """found: per image detections (class, score, x0, y0, x1, y1); truth: per image boxes (class, x0, y0, x1, y1).
    Returns mAP50 and mAP50-95 (means over the classes that have ground truth) and both per class."""
    _same_count(found, truth)
    per_class = {}
    for c in range(num_classes):
        det, gt = _split(found, truth, c)
        positives = sum(len(g) for g in gt)
        aps = [average_precision(*_match(det, gt, t), positives) for t in IOU_THRESHOLDS]
        per_class[c] = {"AP50": aps[0], "AP50-95": float(np.mean(aps)), "boxes": positives}
    present = [v for v in per_class.values() if v["boxes"]]
    return {"mAP50": float(np.mean([v["AP50"] for v in present])) if present else float("nan"),
            "mAP50-95": float(np.mean([v["AP50-95"] for v in present])) if present else float("nan"),
            "per_class": per_class}


def layout_fidelity(found, requested, num_classes: int, score_threshold: float = 0.3, iou_threshold: float = 0.5) -> dict:
    """How many requested boxes a detector finds (recall) and how many of its confident detections were
    requested (precision), a match needing the same class and IoU >= iou_threshold; overall and per class."""
    _same_count(found, requested)
    out = {}
    totals = np.zeros(3)  # matched, requested, detected
    for c in range(num_classes):
        det, gt = _split(found, requested, c)
        det = [d[d[:, 0] >= score_threshold] for d in det]
        _, hits = _match(det, gt, iou_threshold)
        counts = np.array([hits.sum(), sum(len(g) for g in gt), sum(len(d) for d in det)])
        totals += counts
        out[c] = {"recall": counts[0] / counts[1] if counts[1] else float("nan"),
                  "precision": counts[0] / counts[2] if counts[2] else float("nan"), "requested": int(counts[1])}
    return {"recall": totals[0] / max(totals[1], 1), "precision": totals[0] / max(totals[2], 1), "per_class": out}


# ---------------------------------------------------------------------------------------------- the detector

def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.SiLU())


class CenterNet(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> heatmap logits (B, K, S/2, S/2), sizes (B, 2, ..) as fractions of S,
    offsets (B, 2, ..) in cells. An encoder to stride 8 and a decoder back to stride 2 with skips."""

    stride = 2

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.stem = _block(3, width, 2)  # stride 2
        self.down1 = _block(width, 2 * width, 2)  # 4
        self.down2 = _block(2 * width, 4 * width, 2)  # 8
        self.up1 = _block(4 * width + 2 * width, 2 * width)
        self.up2 = _block(2 * width + width, width)
        self.heat = nn.Conv2d(width, num_classes, 1)
        self.size = nn.Conv2d(width, 2, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heat.bias, -2.19)  # CenterNet: start at p = 0.1, so the focal loss starts sane

    def forward(self, x):
        s1 = self.stem(x)
        s2 = self.down1(s1)
        h = self.down2(s2)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0), s2], 1))
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0), s1], 1))
        return self.heat(h), self.size(h), self.offset(h)


def _check_images(images: np.ndarray) -> None:
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[1] % 8 or images.dtype != np.uint8:
        raise ValueError(f"the detector takes square RGB images (N, S, S, 3) uint8 with S a multiple of 8, got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {shape}")


def _targets(boxes: Sequence[Sequence[tuple]], num_classes: int, size: int, stride: int):
    """Heatmaps with an elliptic Gaussian per box (sigma a sixth of its size, as TTFNet), and the size and
    offset targets at each box's center cell with a mask of those cells."""
    cells = size // stride
    b = len(boxes)
    heat = torch.zeros(b, num_classes, cells, cells)
    wh = torch.zeros(b, 2, cells, cells)
    off = torch.zeros(b, 2, cells, cells)
    mask = torch.zeros(b, cells, cells)
    grid = torch.arange(cells, dtype=torch.float32)
    for i, image in enumerate(boxes):
        for cls, x0, y0, x1, y1, *_ in image:
            cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
            ix, iy = min(int(cx), cells - 1), min(int(cy), cells - 1)
            sx, sy = max((x1 - x0) / stride / 6, 0.5), max((y1 - y0) / stride / 6, 0.5)
            g = torch.exp(-((grid[None, :] - ix) ** 2) / (2 * sx ** 2) - ((grid[:, None] - iy) ** 2) / (2 * sy ** 2))
            heat[i, int(cls)] = torch.maximum(heat[i, int(cls)], g)
            wh[i, :, iy, ix] = torch.tensor([(x1 - x0) / size, (y1 - y0) / size])
            off[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
            mask[i, iy, ix] = 1
    return heat, wh, off, mask


def _focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (eq. 1, alpha 2, beta 4), per positive."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    loss = -(pos * (1 - p) ** 2 * p.log() + (1 - pos) * (1 - target) ** 4 * p ** 2 * (1 - p).log())
    return loss.sum() / pos.sum().clamp(min=1)


def train_detector(images: np.ndarray, boxes: Sequence[Sequence[tuple]], num_classes: int, *, steps: int = 1500,
                   batch_size: int = 32, lr: float = 2e-3, seed: int = 0, progress: bool = False) -> CenterNet:
    """Fit a CenterNet to images (N, S, S, 3) uint8 and their boxes (class, x0, y0, x1, y1) in pixels, with
    random horizontal and vertical flips. Deterministic given seed (and the thread count)."""
    from ..data import to_tensor

    _check_images(images)
    if len(boxes) != len(images):
        raise ValueError(f"got {len(images)} images and boxes for {len(boxes)}")
    torch.manual_seed(seed)
    size = images.shape[1]
    net = CenterNet(num_classes)
    x_all = to_tensor(images)
    targets = _targets(boxes, num_classes, size, net.stride)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for step in tqdm(range(steps), desc="training detector", unit="step", disable=not progress):
        for group in opt.param_groups:  # cosine decay: the last steps settle the box sizes
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(x_all), (batch_size,), generator=g)
        x, heat, wh, off, mask = x_all[idx], *(t[idx] for t in targets)
        for dim, flip in ((-1, torch.rand(batch_size, generator=g) < 0.5), (-2, torch.rand(batch_size, generator=g) < 0.5)):
            f = flip.view(-1, 1, 1, 1)
            x, heat, wh = (torch.where(f, t.flip(dim), t) for t in (x, heat, wh))
            # a flipped center cell keeps its offset mirrored within the cell
            off_f = off.flip(dim).clone()
            axis = 0 if dim == -1 else 1
            off_f[:, axis] = torch.where(mask.flip(dim) > 0, 1 - off_f[:, axis], off_f[:, axis])
            off = torch.where(f, off_f, off)
            mask = torch.where(flip.view(-1, 1, 1), mask.flip(dim), mask)
        heat_logits, size_pred, off_pred = net(x)
        m = mask[:, None]
        loss = _focal(heat_logits, heat) + (
            5.0 * (size_pred - wh).abs().mul(m).sum() + (off_pred - off).abs().mul(m).sum()) / m.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def detect(net: CenterNet, images: np.ndarray, *, top_k: int = 20, score_threshold: float = 0.05,
           batch_size: int = 128) -> list[list[tuple]]:
    """Per image, up to top_k detections (class, score, x0, y0, x1, y1) in pixels: the heatmap's 3x3 local
    maxima above score_threshold, with the predicted size and offset at each."""
    from ..data import to_tensor

    _check_images(images)
    size = images.shape[1]
    out = []
    for start in range(0, len(images), batch_size):
        heat, wh, off = net(to_tensor(images[start:start + batch_size]))
        heat = heat.sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
        b, k, h, w = peaks.shape
        scores, flat = peaks.view(b, -1).topk(min(top_k, k * h * w))
        for i in range(b):
            found = []
            for score, f in zip(scores[i].tolist(), flat[i].tolist()):
                if score < score_threshold:
                    break
                cls, cell = divmod(f, h * w)
                cy, cx = divmod(cell, w)
                bw, bh = (wh[i, :, cy, cx].clamp(min=0) * size).tolist()
                ox, oy = off[i, :, cy, cx].tolist()
                x, y = (cx + ox) * net.stride, (cy + oy) * net.stride
                found.append((cls, score, x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2))
            out.append(found)
    return out
