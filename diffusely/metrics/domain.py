"""Feature networks trained on the reference data itself, for data far from ImageNet or machines without
the Inception weights: a small classifier where labels exist, a contrastive encoder where they don't.

Their features are comparable only with themselves: the same network file (its `name` carries a
digest of its weights), never other networks' features or published FIDs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .._files import load_tensors, save_tensors
from ..data import to_tensor
from .features import FeatureExtractor

FEATURE_DIMS = 128
FORMAT = "diffusely-domain-features-1"


def _encoder(channels: int, width: int = 32) -> nn.Sequential:
    """(B, C, S, S) in [-1, 1] -> (B, 128): three conv stages, global average pool, a linear layer."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * width), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, FEATURE_DIMS), nn.SiLU())


class DomainClassifier(nn.Module):
    """Conv net: (B, C, S, S) in [-1, 1] -> logits; `body` gives the 128-d features."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = _encoder(channels)
        self.head = nn.Linear(FEATURE_DIMS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ContrastiveEncoder(nn.Module):
    """The same conv net with SimCLR's projection head (Chen et al. 2020): the loss sees the 64-d
    projection, the features are the 128-d layer before it (SimCLR §4.2: it keeps more information)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = _encoder(channels)
        self.head = nn.Sequential(nn.Linear(FEATURE_DIMS, FEATURE_DIMS), nn.SiLU(), nn.Linear(FEATURE_DIMS, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _fit(net: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], count: int, *,
         steps: int, batch_size: int, seed: int, progress: bool, desc: str) -> nn.Module:
    """AdamW on loss_fn(indices of a random batch, generator), `steps` times. Deterministic given seed."""
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc=desc, unit="step", disable=not progress):
        loss = loss_fn(torch.randint(0, count, (batch_size,), generator=g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


def train_domain_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = 600,
                            batch_size: int = 64, seed: int = 0, progress: bool = False) -> DomainClassifier:
    """Fit a DomainClassifier to (images (N, C, S, S) in [-1, 1], labels (N,)), with random flips."""
    torch.manual_seed(seed)
    net = DomainClassifier(images.shape[1], num_classes)

    def loss_fn(idx, g):
        x = images[idx]
        flip = torch.rand(len(idx), generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return F.cross_entropy(net(x), labels[idx])
    return _fit(net, loss_fn, len(images), steps=steps, batch_size=batch_size, seed=seed, progress=progress,
                desc="training domain classifier")


def _uniform(b: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(b, generator=g)


def _luma(y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 1, H, W) brightness (ITU-R 601 weights for RGB)."""
    if y.shape[1] == 1:
        return y
    return (y * y.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def random_resized_crop(x: torch.Tensor, g: torch.Generator, min_scale: float = 0.35) -> torch.Tensor:
    """Crop each image of (B, C, S, S) to a random box (area min_scale..1 of the image, aspect 3/4..4/3),
    flip it at random, and resize it back to S x S (bilinear)."""
    b = len(x)
    area, aspect = _uniform(b, min_scale, 1.0, g), torch.exp(_uniform(b, np.log(3 / 4), np.log(4 / 3), g))
    sx, sy = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx * flip, sy
    # centres chosen so the box stays inside the image
    theta[:, 0, 2], theta[:, 1, 2] = (1 - sx) * _uniform(b, -1, 1, g), (1 - sy) * _uniform(b, -1, 1, g)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _rotate_hue(y: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB (B, 3, H, W) by `turns` (B,) of a full circle: a rotation of the chroma
    plane of YIQ, which keeps brightness."""
    to_yiq = y.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = torch.cos(2 * torch.pi * turns).to(y), torch.sin(2 * torch.pi * turns).to(y)
    rot = torch.zeros(len(y), 3, 3).to(y)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, y)


def color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.8, hue: float = 0.2, p: float = 0.8,
                 p_gray: float = 0.2) -> torch.Tensor:
    """SimCLR's colour distortion on (B, C, H, W) in [-1, 1]: with probability p, scale brightness, contrast
    and saturation by factors in 1 +- strength and rotate the hue by up to +-hue turns; then turn the
    image gray with probability p_gray. Saturation, hue and gray apply to RGB only."""
    b = len(x)
    applied = (torch.rand(b, generator=g) < p).float()

    def factor():
        return (1 + applied * _uniform(b, -strength, strength, g)).to(x).view(-1, 1, 1, 1)
    y = (x + 1) / 2 * factor()
    mean = _luma(y).mean((2, 3), keepdim=True)
    y = (y - mean) * factor() + mean
    if x.shape[1] == 3:
        y = (y - _luma(y)) * factor() + _luma(y)
        y = _rotate_hue(y.clamp(0, 1), applied * _uniform(b, -hue, hue, g))
        gray = (torch.rand(b, generator=g) < p_gray).to(x).view(-1, 1, 1, 1)
        y = gray * _luma(y).expand_as(y) + (1 - gray) * y
    return y.clamp(0, 1) * 2 - 1


def augment(x: torch.Tensor, g: torch.Generator, *, min_scale: float = 0.35, strength: float = 0.8,
            hue: float = 0.2) -> torch.Tensor:
    """SimCLR's augmentations (Chen et al. 2020, appendix A) on (B, C, S, S) in [-1, 1]: random resized
    crop and flip, then colour distortion. The colour distortion must be strong (SimCLR §3.1, Fig. 5):
    colour alone tells small images apart, and a network that may use it learns nothing else."""
    return color_jitter(random_resized_crop(x, g, min_scale), g, strength, hue).contiguous()


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020, eq. 1): each view must pick its partner among the 2B - 1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, partner)


def train_contrastive_encoder(images: torch.Tensor, *, steps: int = 400, batch_size: int = 128,
                              temperature: float = 0.5, seed: int = 0, progress: bool = False) -> ContrastiveEncoder:
    """Fit a ContrastiveEncoder to unlabelled images (N, C, S, S) in [-1, 1] with SimCLR: two augmented
    views of each image, NT-Xent loss (temperature 0.5, SimCLR's for CIFAR-10)."""
    torch.manual_seed(seed)
    net = ContrastiveEncoder(images.shape[1])

    def loss_fn(idx, g):
        x = images[idx]
        return nt_xent_loss(net(augment(x, g)), net(augment(x, g)), temperature)
    return _fit(net, loss_fn, len(images), steps=steps, batch_size=batch_size, seed=seed, progress=progress,
                desc="training domain encoder")


def _digest(net: nn.Module) -> str:
    h = hashlib.sha1()
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:8]


class DomainFeatures(FeatureExtractor):
    """The 128-d features of a domain network; `name` is domain-<kind>-<digest of its weights>.

    `info` records how it was made (kind, channels, classes, training steps, the reference it saw).
    """

    dims = FEATURE_DIMS

    def __init__(self, net: nn.Module, info: dict, device="cpu", batch_size: int = 256):
        super().__init__(device, batch_size)
        self.net, self.info = net.to(self.device).eval(), info
        self.name = f"domain-{info['kind']}-{_digest(net)}"

    def embed(self, images: np.ndarray) -> torch.Tensor:
        return self.net.body(to_tensor(images).to(self.device))


def fit_domain_features(images: np.ndarray, labels: Optional[np.ndarray] = None, num_classes: int = 0, *,
                        steps: Optional[int] = None, seed: int = 0, reference: Optional[dict] = None,
                        device="cpu", batch_size: int = 256, progress: bool = False) -> DomainFeatures:
    """Train domain features on uint8 images (N, S, S, C): a classifier when `labels` (N,) are given
    (600 steps by default), else a contrastive encoder (400 steps). `reference` (what the images
    are, e.g. their source) is kept in the extractor's info."""
    x = to_tensor(images)
    if labels is not None:
        kind, steps = "classifier", steps or 600
        net = train_domain_classifier(x, torch.as_tensor(labels), num_classes, steps=steps, seed=seed,
                                      progress=progress)
    else:
        kind, steps = "contrastive", steps or 400
        net = train_contrastive_encoder(x, steps=steps, seed=seed, progress=progress)
    info = {"kind": kind, "channels": x.shape[1], "num_classes": num_classes if labels is not None else 0,
            "steps": steps, "seed": seed, "reference": reference or {}}
    return DomainFeatures(net, info, device, batch_size)


def save_domain_features(path: str | Path, extractor: DomainFeatures) -> None:
    """Weights in a safetensors file, with `info` as JSON in its metadata; written atomically."""
    save_tensors(path, extractor.net.state_dict(), {"format": FORMAT, "info": extractor.info})


def load_domain_features(path: str | Path, device="cpu", batch_size: int = 256) -> DomainFeatures:
    """A DomainFeatures saved by save_domain_features."""
    path = Path(path)
    try:
        tensors, meta = load_tensors(path)
        info = dict(meta["info"])
        kind, channels = info["kind"], int(info["channels"])
        net = (DomainClassifier(channels, int(info["num_classes"])) if kind == "classifier"
               else ContrastiveEncoder(channels))
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a diffusely domain-features file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}); delete it to train new features") from None
    return DomainFeatures(net.requires_grad_(False), info, device, batch_size)
