"""Linear measurement operators y = A x, with their adjoints and pseudo-inverses, for restoration.

An operator acts on a batch x (B, C, *spatial) and returns its measurement y; `A.adjoint(y)` (also
`A.T(y)`) is the adjoint for the real inner product <u, v> = Re sum(u * conj(v)), and `A.pinv(y)` the
Moore-Penrose pseudo-inverse, so A A^+ A = A. `A.project(x, y)` moves x to the nearest image with
A x = y (for y in A's range): the range-space step of DDNM (Wang et al. 2023).

    A = KSpace.random(64, acceleration=4, seed=0)   # Cartesian MRI, 4x fewer phase-encode lines
    y = A(x)                                        # complex k-space, zero where a line was not measured
    zero_filled = A.pinv(y)                         # the classic baseline

Measurements keep the image's layout where that is natural (a mask keeps its zeros, k-space its
unmeasured lines as zeros), so every y is a plain tensor; `A.measurements(x)` counts the real values
each sample really measured (a complex value counts once), for per-measurement errors.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


class MeasurementError(ValueError):
    """An operator does not fit its image or was built with a bad setting; the message says what to fix."""


def _spatial(x: torch.Tensor, dims: int | None = None) -> tuple[int, ...]:
    """The spatial shape of x (B, C, *spatial), checked to have `dims` axes when given."""
    if x.ndim < 3:
        raise MeasurementError(f"images must be a batch (B, C, *spatial), got a tensor of shape {tuple(x.shape)}")
    if dims is not None and x.ndim - 2 != dims:
        raise MeasurementError(f"this operator takes images with {dims} spatial axes (B, C, H, W), got shape "
                               f"{tuple(x.shape)}")
    return tuple(x.shape[2:])


class Operator:
    """A linear measurement. Subclasses define forward, adjoint, pinv and measurements."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def measurements(self, x: torch.Tensor) -> int:
        """How many values one sample of x yields (complex ones counted once)."""
        raise NotImplementedError

    @property
    def T(self) -> "_Adjoint":
        """The adjoint as a callable: A.T(y) == A.adjoint(y)."""
        return _Adjoint(self)

    def from_measured(self, m: torch.Tensor) -> torch.Tensor:
        """y from a measurement as a user holds it, an image (a file): here the image measured as given, A(m), which
        keeps an inpainting's known pixels. Operators whose measurements are no image of x's shape say otherwise."""
        return self.forward(m)

    def as_image(self, y: torch.Tensor) -> torch.Tensor:
        """y shown as an image of x's shape, to look at: A^+ y."""
        return self.pinv(y)

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x + A^+ (y - A x): keeps x's null-space part and takes the range-space part from y (DDNM eq. 7)."""
        return x + self.pinv(y - self.forward(x))


class _Adjoint:
    def __init__(self, operator: Operator):
        self.operator = operator

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.adjoint(y)


class Inpaint(Operator):
    """Keep the known pixels: A x = m * x with a mask m of 1 (known) and 0 (missing).

    mask: (*spatial), (C, *spatial) or (B, C, *spatial), broadcast against the images; any nonzero value is
    known. A is an orthogonal projection, so A^T = A^+ = A.
    """

    def __init__(self, mask: torch.Tensor):
        mask = torch.as_tensor(mask)
        if mask.ndim < 1 or mask.numel() == 0:
            raise MeasurementError(f"an inpainting mask must be an image of the data's size, got shape {tuple(mask.shape)}")
        self.mask = (mask != 0)

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        spatial = _spatial(x)
        if mask.ndim < len(spatial) or tuple(mask.shape[-len(spatial):]) != spatial:
            raise MeasurementError(f"the mask is {'x'.join(map(str, mask.shape[-len(spatial):]))} but the images are "
                                   f"{'x'.join(map(str, spatial))}: pass a mask of the images' size")
        mask = mask.reshape(*([1] * (x.ndim - mask.ndim)), *mask.shape)
        try:  # the mask may broadcast over the images, never the images over the mask
            fits = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise MeasurementError(f"a mask of shape {tuple(self.mask.shape)} does not fit images of shape "
                                   f"{tuple(x.shape)}: pass (H, W), (C, H, W) or (B, C, H, W)")
        return mask.to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._mask(x).to(x.dtype)

    adjoint = pinv = forward

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the same as x + A^+(y - A x), but bit-exact on the known pixels: they are y's own values
        return torch.where(self._mask(x), y, x)

    def measurements(self, x: torch.Tensor) -> int:
        return int(self._mask(x).expand_as(x)[0].sum())


class Downsample(Operator):
    """Average-pool every spatial axis by an integer `factor`: (B, C, *S) -> (B, C, *S / factor).

    A A^T = I / factor^dims, so A^+ = factor^dims A^T: nearest-neighbour upsampling, each block filled
    with its mean.
    """

    def __init__(self, factor: int):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise MeasurementError(f"the downsampling factor must be a whole number >= 1 (e.g. 4), got {factor!r}")
        self.factor = factor

    def _blocks(self, x: torch.Tensor) -> list[int]:
        """x's shape with each spatial axis split into (size / factor, factor)."""
        spatial, f = _spatial(x), self.factor
        if any(s % f for s in spatial):
            raise MeasurementError(f"images of size {'x'.join(map(str, spatial))} do not split into {f}x{f} blocks: "
                                   f"crop or resize them to a multiple of {f}, or pick a factor that divides the size")
        return [n for s in spatial for n in (s // f, f)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = self._blocks(x)
        # (B, C, S1 / f, f, S2 / f, f, ...): average the f axes
        return x.reshape(*x.shape[:2], *blocks).mean(dim=tuple(range(3, 2 + len(blocks), 2)))

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        out = y
        for axis in range(2, y.ndim):
            out = out.repeat_interleave(self.factor, dim=axis)
        return out

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.pinv(y) / self.factor ** (y.ndim - 2)

    def measurements(self, x: torch.Tensor) -> int:
        return x[0].numel() // self.factor ** (x.ndim - 2)

    def from_measured(self, m: torch.Tensor) -> torch.Tensor:
        """A low-resolution image is y itself."""
        return m


class KSpace(Operator):
    """Cartesian undersampled MRI: A = M F, F the orthonormal 2-D FFT over the last two axes (k-space
    centred by fftshift), M keeping the measured phase-encode lines (rows). Real images in, complex y out,
    zero on the lines not measured.

    mask: (H,) bool over the centred rows, or (H, W) for any Cartesian pattern. For real x, A^T A acts in
    k-space as the mean of the mask and its mirror image (k -> -k, the Hermitian symmetry of a real image's
    spectrum), so A^+ divides by that mean where it is nonzero: exact for any mask, symmetric or not.
    """

    def __init__(self, mask: torch.Tensor):
        mask = torch.as_tensor(mask)
        if mask.ndim == 1:
            mask = mask[:, None]
        if mask.ndim != 2 or mask.numel() == 0:
            raise MeasurementError(f"a k-space mask is (H,) over phase-encode lines or (H, W), got {tuple(mask.shape)}")
        self.mask = mask != 0

    @classmethod
    def random(cls, height: int, acceleration: float = 4.0, center_fraction: float | None = None,
               seed: int = 0) -> "KSpace":
        """Random phase-encode lines at `acceleration`, around a fully sampled centre (see cartesian_mask)."""
        return cls(cartesian_mask(height, acceleration, center_fraction, seed))

    def _m(self, x: torch.Tensor) -> torch.Tensor:
        spatial = _spatial(x, dims=2)
        mask = self.mask
        if mask.shape[0] != spatial[0] or mask.shape[1] not in (1, spatial[1]):
            raise MeasurementError(f"the k-space mask is for {mask.shape[0]} lines but the images are "
                                   f"{spatial[0]}x{spatial[1]}: build the mask for height {spatial[0]}")
        return mask.to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
        return k * self._m(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        k = y * self._m(y)
        return torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho").real

    def _symmetric_weight(self, y: torch.Tensor) -> torch.Tensor:
        """(M(k) + M(-k)) / 2 on the centred grid: what A^T A multiplies each frequency of a real image by."""
        height, width = y.shape[-2:]
        m = self._m(y).expand(height, width).to(y.real.dtype)
        # index j of a centred axis of even length n is frequency j - n/2; -k is at (n - j) mod n
        mirrored = torch.roll(torch.flip(m, dims=(0, 1)), shifts=(1 - height % 2, 1 - width % 2), dims=(0, 1))
        return (m + mirrored) / 2

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        w = self._symmetric_weight(y)
        inverse = torch.where(w > 0, 1 / w.clamp_min(0.5), torch.zeros_like(w))
        k = torch.fft.fftshift(torch.fft.fft2(self.adjoint(y), norm="ortho"), dim=(-2, -1)) * inverse
        return torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho").real

    def measurements(self, x: torch.Tensor) -> int:
        return int(self._m(x).expand(x.shape[-2:]).sum()) * x.shape[1]

    def from_measured(self, z: torch.Tensor) -> torch.Tensor:
        """y of a zero-filled image z, the real part of the inverse FFT of k-space with the lines not measured set
        to zero (A^T y: what a scanner's zero-filled reconstruction shows). For a real image, F z is k times (M(k)
        + M(-k)) / 2, so a line measured without its mirror comes back at half its value: y = M F z divided by
        that, at least 1/2 wherever M is 1. (A^+ y, which fills the mirror lines too, is not read this way, nor is
        a magnitude image.)"""
        k = torch.fft.fftshift(torch.fft.fft2(z, norm="ortho"), dim=(-2, -1))
        return k * self._m(z) / self._symmetric_weight(z).clamp_min(0.5)

    from_zero_filled = from_measured  # its name until stop 37, kept for callers

    def as_image(self, y: torch.Tensor) -> torch.Tensor:
        """The zero-filled image A^T y: what a scanner's reconstruction shows, and what from_measured reads back."""
        return self.adjoint(y)


def cartesian_mask(height: int, acceleration: float = 4.0, center_fraction: float | None = None,
                   seed: int = 0) -> torch.Tensor:
    """(height,) bool: which phase-encode lines of a centred k-space are measured.

    round(height / acceleration) lines in all: the round(height * center_fraction) lines (at least 1) nearest the
    centre (the low frequencies that hold most of the image's energy), the rest drawn uniformly at random from
    the others with `seed`. center_fraction defaults to 0.32 / acceleration, fastMRI's 8% at 4x and 4%
    at 8x (Zbontar et al. 2018). acceleration 1 measures every line.
    """
    if not math.isfinite(acceleration) or acceleration < 1:
        raise MeasurementError(f"acceleration must be >= 1 (1 measures every line, 4 a quarter of them), "
                               f"got {acceleration}")
    if height < 2:
        raise MeasurementError(f"k-space needs at least 2 lines, got a height of {height}")
    if center_fraction is None:
        center_fraction = 0.32 / acceleration
    if not 0 <= center_fraction <= 1 / acceleration:
        raise MeasurementError(f"center_fraction must be in [0, 1 / acceleration] = [0, {1 / acceleration:.3g}], "
                               f"got {center_fraction}")
    lines = max(1, round(height / acceleration))
    centre = min(lines, max(1, round(height * center_fraction)))  # frequency 0 always
    # lines ordered by distance from the centre row (height // 2 is frequency 0 after fftshift)
    order = sorted(range(height), key=lambda j: (abs(j - height // 2), j))
    mask = torch.zeros(height, dtype=torch.bool)
    mask[order[:centre]] = True
    rest = torch.tensor(order[centre:])
    pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[: lines - centre]
    mask[rest[pick]] = True
    return mask


class Blur(Operator):
    """Gaussian blur of standard deviation `sigma` pixels, as a circular convolution over every spatial
    axis: A = F^H K F with K = exp(-2 pi^2 sigma^2 f^2) on the FFT grid (real and even, so A = A^T).

    Frequencies the blur damps below `cutoff` are treated as lost (A sets them to zero), so the
    operator has an exact pseudo-inverse, 1 / K on the kept frequencies, which amplifies noise by at
    most 1 / cutoff; the truncation changes the blur by less than `cutoff` on any frequency. For an image
    measured in 8 bits, use MEASURED_BLUR_CUTOFF.
    """

    def __init__(self, sigma: float = 1.5, cutoff: float = 1e-3):
        if not math.isfinite(sigma) or sigma <= 0:
            raise MeasurementError(f"the blur's sigma must be a positive number of pixels, got {sigma}")
        if not 0 < cutoff < 1:
            raise MeasurementError(f"the blur's cutoff must be in (0, 1), got {cutoff}")
        self.sigma, self.cutoff = float(sigma), float(cutoff)

    def spectrum(self, spatial: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
        """K over the FFT grid of `spatial`, zero where the blur keeps less than `cutoff`."""
        k = torch.ones((), dtype=torch.float64)
        for axis, n in enumerate(spatial):
            freq = torch.fft.fftfreq(n, dtype=torch.float64)
            # the spectrum of a Gaussian wrapped around the circle: exp(-2 pi^2 sigma^2 f^2), periodic in f
            shape = [1] * len(spatial)
            shape[axis] = n
            k = k * torch.exp(-2 * math.pi**2 * self.sigma**2 * freq**2).reshape(shape)
        k = torch.where(k >= self.cutoff, k, torch.zeros_like(k))
        return k.to(device=device, dtype=dtype)

    def _filter(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        return torch.fft.ifftn(torch.fft.fftn(x, dim=dims) * gain, dim=dims).real

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._filter(x, self.spectrum(_spatial(x), x.device, x.dtype))

    adjoint = forward  # K is real, so A is symmetric

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        k = self.spectrum(_spatial(y), y.device, y.dtype)
        return self._filter(y, torch.where(k > 0, 1 / k.clamp_min(self.cutoff), torch.zeros_like(k)))

    def measurements(self, x: torch.Tensor) -> int:
        return int((self.spectrum(_spatial(x)) > 0).sum()) * x.shape[1]

    def from_measured(self, m: torch.Tensor) -> torch.Tensor:
        """A blurred image taken into A's range, A A^+ m: the frequencies the blur keeps less than `cutoff` of are
        dropped, as A drops them (an 8-bit file's rounding, divided by a small K, would swamp them)."""
        return self.forward(self.pinv(m))


def _inpaint(height: int, *, mask=None) -> Inpaint:
    if mask is None:
        raise MeasurementError("inpainting needs a mask: an image of the data's size, white where pixels are known")
    return Inpaint(mask)


def _mri(height: int, *, acceleration: float = 4.0, center_fraction: float | None = None, seed: int = 0) -> KSpace:
    return KSpace.random(height, acceleration, center_fraction, seed)


# restoration tasks by name: each builds its operator from the images' height and the task's own options
TASKS = {
    "inpaint": _inpaint,
    "upscale": lambda height, *, scale=4: Downsample(scale),
    "mri": _mri,
    "deblur": lambda height, *, blur_sigma=1.5, cutoff=1e-3: Blur(blur_sigma, cutoff),
}
TASK_OPTIONS = {"inpaint": ["mask"], "upscale": ["scale"], "mri": ["acceleration", "center_fraction", "seed"],
                "deblur": ["blur_sigma", "cutoff"]}
# The blur's cutoff for a measured 8-bit image. Rounding to 8 bits adds noise of std (2 / 255) / sqrt(12) in
# [-1, 1] to every frequency, and inverting the blur multiplies a frequency's noise by 1 / K: at the exact
# operator's 1e-3 that is 25-46 grey levels RMS in A^+ y (shapes at 32 px, phantoms at 64 px, sigma 1-2.5), at 0.05
# it is 0.5-1.3 (tests/test_restoration.py); the prior draws the frequencies the blur keeps less of.
MEASURED_BLUR_CUTOFF = 0.05


def make_operator(task: str, height: int, **options) -> Operator:
    """The operator of a restoration task (see TASKS) for images `height` pixels tall; options that are
    None are left at their defaults, others must belong to the task (TASK_OPTIONS)."""
    if task not in TASKS:
        raise MeasurementError(f"unknown restoration task {task!r}; choose one of: {', '.join(TASKS)}")
    options = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(options) - set(TASK_OPTIONS[task]))
    if foreign:
        takes = ", ".join(TASK_OPTIONS[task])
        raise MeasurementError(f"the {task} task takes only {takes}; drop {', '.join(foreign)}")
    return TASKS[task](height, **options)
