"""A small classifier trained on the reference data, as a feature extractor for data far from ImageNet.

Its features are comparable only with themselves (same data, same seed, same training), so
numbers from it compare runs against each other, never against published FIDs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class DomainClassifier(nn.Module):
    """Conv net: (B, C, S, S) in [-1, 1] -> logits; `features` gives the 128-d penultimate layer."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 128), nn.SiLU())
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_domain_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = 600,
                            batch_size: int = 64, seed: int = 0) -> DomainClassifier:
    """Fit a DomainClassifier to (images (N, C, S, S) in [-1, 1], labels (N,)). Deterministic given seed."""
    torch.manual_seed(seed)
    net = DomainClassifier(images.shape[1], num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x = images[idx]
        flip = torch.rand(batch_size, generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def classifier_features(net: DomainClassifier, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 128), softmax probabilities (N, classes)) as float64 numpy arrays."""
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = net.features(images[i:i + batch_size])
        feats.append(f)
        probs.append(net.head(f).softmax(-1))
    return torch.cat(feats).double().numpy(), torch.cat(probs).double().numpy()
