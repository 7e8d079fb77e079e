"""Inception-v3 as FID defines it (Heusel et al. 2017; Szegedy et al. 2016), in plain torch.

This is the network of TensorFlow's original FID code, ported to PyTorch by pytorch-fid with the
weights file `pt_inception-2015-12-05-6726825d.pth`, which torch-fidelity uses too. It differs from
torchvision's Inception-v3 in its weights (1008 classes) and in three details that change the
features: the average pools in the A, C and first E blocks leave the zero padding out of the mean
(TensorFlow's behaviour), and the last E block pools with max instead of average. Parameter names
follow torchvision's, which is the layout of the weights file, so the file loads with strict=True.

Images reach the network as clean-fid recommends (Parmar et al. 2022, "On Aliased Resizing and
Surprising Subtleties in GAN Evaluation"): quantized to uint8 first, then resized to 299 x 299 with
PIL's bicubic filter on float pixels (clean-fid's "clean" mode), then scaled to [-1, 1]. The
features are the 2048-d average pool after the last block (pool3).

Nothing is downloaded: the weights file comes from the user (see `find_inception_weights`).
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .features import FeatureExtractor

WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "DIFFUSELY_INCEPTION_WEIGHTS"
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's eps 1e-3), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """Factorized 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        dbl = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            dbl = conv(dbl)
        return torch.cat([self.branch1x1(x),
                          self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          dbl,
                          self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Expanded filter bank; `pool` is "avg" (Mixed_7b) or "max" (Mixed_7c, a quirk of the FID network)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)
        self.pool = _avg_pool_tf if pool == "avg" else lambda x: F.max_pool2d(x, 3, stride=1, padding=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
                          self.branch_pool(self.pool(x))], 1)


class FIDInceptionV3(nn.Module):
    """(N, 3, 299, 299) in [-1, 1] -> (N, 2048) pool3 features. `fc` (1008 classes) is kept for the file's layout."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 299 -> 147
        x = F.max_pool2d(x, 3, stride=2)  # -> 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # -> 71
        x = F.max_pool2d(x, 3, stride=2)  # -> 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # 35 -> 17 (Mixed_6a) -> 8 (Mixed_7a)
        return x.mean((2, 3))


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The weights file from `path`, else from $DIFFUSELY_INCEPTION_WEIGHTS; a clear error where neither is there."""
    how = (f"download {WEIGHTS_URL} (pytorch-fid's FID Inception weights, 92 MB; a .safetensors conversion works too) "
           f"and pass --inception-weights FILE or set {WEIGHTS_ENV}=FILE")
    path = path or os.environ.get(WEIGHTS_ENV)
    if not path:
        raise FileNotFoundError(f"Inception features need the FID Inception weights file: {how}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no Inception weights file at {path}: {how}")
    return Path(path)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch state dict, read with torch.load(weights_only=True),
    which refuses anything but tensors and plain containers: a weights file never runs code."""
    path = Path(path)
    expected = f"expected pytorch-fid's {Path(WEIGHTS_URL).name} or a .safetensors conversion"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        with warnings.catch_warnings():  # torch's note on the pickle protocol says nothing the refusal below does not
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message goes on to suggest weights_only=False: never for a user file
        raise ValueError(f"refused {path}: it holds Python objects besides tensors, which only a full unpickle would "
                         f"build, and a full unpickle can run any code the file names, so it is not done; "
                         f"{expected}") from None
    except Exception as e:  # noqa: BLE001 - format errors come in many types; all mean a bad file
        raise ValueError(f"cannot read {path} as weights ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                         f"{expected}") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors; "
                         f"expected pytorch-fid's {Path(WEIGHTS_URL).name}")
    return state


def load_fid_inception(path: str | Path | None = None, device="cpu") -> FIDInceptionV3:
    """FIDInceptionV3 with the weights of `path` (see find_inception_weights), in eval mode, without gradients."""
    path = find_inception_weights(path)
    net = FIDInceptionV3()
    try:
        net.load_state_dict(read_state_dict(path), strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(f"{path} does not fit the FID Inception network ({detail}); "
                         f"expected pytorch-fid's {Path(WEIGHTS_URL).name}") from None
    return net.to(device).eval().requires_grad_(False)


def resize_for_inception(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, 3, 299, 299) float32 in [-1, 1]: per-channel bicubic resize of float pixels
    with PIL (clean-fid's "clean" mode; PIL widens the filter when shrinking, so it antialiases), gray -> RGB."""
    out = np.empty((len(images), INPUT_SIZE, INPUT_SIZE, images.shape[-1]), np.float32)
    for i, image in enumerate(images):
        for c in range(images.shape[-1]):
            channel = Image.fromarray(image[..., c].astype(np.float32))
            out[i, ..., c] = np.asarray(channel.resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC))
    x = torch.from_numpy(out).permute(0, 3, 1, 2)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return (x / 127.5 - 1).contiguous()


class InceptionFeatures(FeatureExtractor):
    """FID's 2048-d Inception pool3 features, images resized and quantized as clean-fid does."""

    name = "inception-v3-fid"
    dims = 2048

    def __init__(self, weights: str | Path | None = None, device="cpu", batch_size: int = 64):
        super().__init__(device, batch_size)
        self.net = load_fid_inception(weights, self.device)

    def embed(self, images: np.ndarray) -> torch.Tensor:
        return self.net(resize_for_inception(images).to(self.device))
