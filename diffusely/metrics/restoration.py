"""How good a restoration is: PSNR and SSIM against the truth, agreement with the measurement, and
whether the uncertainty map predicts the error.

PSNR and SSIM come from torchmetrics (the `restore` extra: pip install 'diffusely[restore]'), which
computes them on tensors, batched, on any device; SSIM is Wang et al. 2004's (an 11-pixel Gaussian window
of sigma 1.5, K1 0.01, K2 0.03). Each function returns one value per sample (B,), so a benchmark can
report a mean and its spread.
"""

from __future__ import annotations

import torch


def _torchmetrics_image():
    try:
        from torchmetrics.functional import image
    except ImportError:
        raise ImportError("PSNR and SSIM need torchmetrics: pip install 'diffusely[restore]'") from None
    return image


def _check_pair(x: torch.Tensor, target: torch.Tensor) -> None:
    if x.shape != target.shape or x.ndim < 3:
        raise ValueError(f"compare batches of one shape (B, C, *spatial): got {tuple(x.shape)} and {tuple(target.shape)}")


def psnr(x: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per sample (B,): 10 log10(data_range^2 / MSE).

    data_range: the span of the values, 2 for images in [-1, 1] (diffusely's), 1 for [0, 1], 255 for uint8."""
    _check_pair(x, target)
    image = _torchmetrics_image()
    return image.peak_signal_noise_ratio(x.float(), target.float(), data_range=data_range, reduction="none",
                                         dim=tuple(range(1, x.ndim)))


def ssim(x: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Structural similarity per sample (B,), averaged over channels and pixels; images (B, C, H, W) or
    volumes (B, C, D, H, W) at least 11 pixels on a side."""
    _check_pair(x, target)
    if x.ndim not in (4, 5) or min(x.shape[2:]) < 11:
        raise ValueError(f"SSIM takes images (B, C, H, W) or volumes at least 11 pixels wide, got {tuple(x.shape)}")
    image = _torchmetrics_image()
    return image.structural_similarity_index_measure(x.float(), target.float(), data_range=data_range,
                                                     reduction="none")


def consistency_error(operator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||A x - y|| per sample (B,), as a root mean square over the values the operator measures
    (A.measurements), so it reads in the data's units whatever the operator: 1/255 is a gray level of
    uint8 data in [0, 1], 2/255 in [-1, 1]."""
    residual = operator(x) - y
    squared = residual.abs().pow(2).flatten(1).sum(1)
    return (squared / operator.measurements(x)).sqrt()


def calibration(std: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Does the uncertainty map predict the error? Pearson correlation per sample (B,) between the per-pixel
    standard deviation (of posterior samples) and the per-pixel absolute error (of their mean, or of one
    sample, against the truth). 1: the map ranks and scales the errors perfectly; 0: it says nothing.

    A sample whose std or error is constant has no correlation: NaN."""
    if std.shape != error.shape:
        raise ValueError(f"std and error must have one shape, got {tuple(std.shape)} and {tuple(error.shape)}")
    s = std.flatten(1).double()
    e = error.abs().flatten(1).double()
    s = s - s.mean(1, keepdim=True)
    e = e - e.mean(1, keepdim=True)
    return ((s * e).sum(1) / (s.norm(dim=1) * e.norm(dim=1))).to(std.dtype)
