"""One interface for feature extractors: images in, (N, D) features out, in batches, with a progress bar."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..data import to_uint8


def as_uint8(images) -> np.ndarray:
    """(N, H, W, C) uint8 images, from the same (numpy or tensor) or from (N, C, H, W) floats in [-1, 1].

    Floats are rounded to uint8 first, as a saved PNG would be: generated images are measured as the
    files a user would keep, and in-memory samples give the numbers their PNGs give (clean-fid's advice).
    """
    if torch.is_tensor(images) and images.dtype == torch.uint8:
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 4:
            raise ValueError(f"expected (N, H, W, C) uint8 images, got shape {images.shape}")
        return images
    return to_uint8(torch.as_tensor(images))


class FeatureExtractor:
    """Base of the extractors: a `name` (features with different names never compare), `dims`, and `embed`.

    Subclasses implement `embed((B, H, W, C) uint8 numpy) -> (B, dims) tensor`; calling the extractor
    runs it over any number of images, `batch_size` at a time, without gradients.
    """

    name: str = ""
    dims: int = 0

    def __init__(self, device="cpu", batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.device, self.batch_size = torch.device(device), batch_size

    def embed(self, images: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images, *, progress: bool = False) -> np.ndarray:
        """Features (N, dims) float64 of uint8 (N, H, W, C) images or float (N, C, H, W) ones in [-1, 1]."""
        images = as_uint8(images)
        out = np.empty((len(images), self.dims))
        with tqdm(total=len(images), desc=f"features ({self.name})", unit="img", disable=not progress) as bar, \
                torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size]
                out[start:start + len(batch)] = self.embed(batch).double().cpu().numpy()
                bar.update(len(batch))
        return out
