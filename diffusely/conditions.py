"""What reaches the network besides x and sigma: one Condition per kind, listed by the run's config.

Three kinds cover every use (DESIGN.md): a label (`ClassLabel`: class_labels), a token sequence (`Text`: text and
text_mask, read through cross-attention) and channels concatenated to the input (`Channels`: `Layout` renders a
layout's masks, `LowRes` a low-resolution image brought to full size, `Frames` a clip's first frames; an inpainting
mask with its known pixels comes next). Each kind knows

- `train(rows, generators, flip)`: the inputs for training samples `rows`, each replaced by the null value with
  probability `dropout` (so one model also samples unconditionally, for classifier-free guidance), drawn from
  the samples' own generators: a resumed or distributed run draws exactly what one uninterrupted process does;
- `given(values, device)`: the inputs for sampling, from the values asked per sample (labels, prompts, layouts);
- `null(batch, device)`: the null inputs (the unconditional model, and guidance's other half, where a class, a
  prompt or a layout is left out; what is given of the sample itself, FromSamples, stays in both halves);
- `examples(n, device)`: the inputs of n training examples, for the sample grids training writes;

and a channel kind renders training's values and sampling's through one `render`, so both see the same maps.

    conds = conditions(config, {"class": labels, "text": captions, "layout": boxes})   # training: the data
    conds = conditions(run.config, {"text": run.text})                                   # sampling

To add a kind: a subclass with those four methods, its name in `RunConfig.conditions` (read off the config field
that says the model takes it) and in KINDS. The training loop and the pipelines go through the list and need no
change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch.nn.functional import pixel_unshuffle

from ._util import append_dims
from .data.transforms import apply_flips, to_tensor, uniform
from .layout import flip_boxes, pack_boxes, render_run_layout
from .restoration.operators import Downsample

DROPOUT = 0.1  # fraction of training inputs replaced by the null value, for classifier-free guidance


class Condition:
    """A kind of conditioning; see the module's docstring for what each method gives."""

    name: str = ""
    dropout: float = DROPOUT

    def dropped(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(B,) bool: which samples train on the null value, one draw from each sample's generator."""
        return uniform(generators) < self.dropout

    def train(self, rows: torch.Tensor, generators, flip: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def given(self, values: Sequence, device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def null(self, batch: int, device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def examples(self, n: int, device) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ClassLabel(Condition):
    """A class label per sample; label num_classes is the null label. source: the training labels (N,) int64."""

    name = "class"

    def __init__(self, config, labels: Optional[torch.Tensor] = None):
        self.num_classes, self.labels = config.model.num_classes, labels

    def train(self, rows, generators, flip):
        return {"class_labels": torch.where(self.dropped(generators), self.num_classes, self.labels[rows])}

    def given(self, values, device):
        return {"class_labels": torch.tensor(list(values), device=device)}

    def null(self, batch, device):
        return {"class_labels": torch.full((batch,), self.num_classes, device=device)}

    def examples(self, n, device):  # the grid cycles through the classes
        return {"class_labels": torch.arange(n, device=device) % self.num_classes}


@dataclass
class Captions:
    """Every distinct training caption encoded once: `table` (U + 1, L[, D]) and `mask` (U + 1, L), the last
    row the null caption; `index` (N, V) holds the rows of each sample's V captions (its own, then its
    paraphrases; V = 1 without them)."""

    table: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor

    @property
    def null(self) -> int:
        return len(self.table) - 1

    def cond(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        text = self.table[rows]
        return {"text": text.float() if text.is_floating_point() else text, "text_mask": self.mask[rows]}


class Text(Condition):
    """A caption per sample, as tokens the network cross-attends to; the null caption is the empty one.
    source: the run's Captions in training (encoded once), its TextEncoder in sampling (encodes prompts)."""

    name = "text"

    def __init__(self, config, source=None):
        self.source = source

    def train(self, rows, generators, flip):
        captions = self.source
        drop = self.dropped(generators)
        picked = captions.index[rows, 0]
        if captions.index.shape[1] > 1:  # a caption or one of its paraphrases
            pick = torch.cat([torch.randint(captions.index.shape[1], (1,), generator=g, device=g.device)
                              for g in generators])
            picked = captions.index[rows, pick]
        return captions.cond(torch.where(drop, captions.null, picked))

    def given(self, values, device):  # None: the null caption
        return self.source.cond(list(values), device)

    def null(self, batch, device):
        return self.source.cond([None] * batch, device)

    def examples(self, n, device):
        return self.source.cond(self.source.index[torch.arange(n) % len(self.source.index), 0])


class Channels(Condition):
    """Channels concatenated to the network's input, (B, channels, *grid) on the grid of what it denoises; the
    null value is all zeros. A subclass says how its values render (`render`), once for training and sampling."""

    key: str = ""  # the network's keyword for these channels

    def __init__(self, config, channels: int):
        self.channels, self.grid = channels, tuple(config.sample_shape[1:])

    def render(self, values: torch.Tensor, given: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def null(self, batch, device):
        return {self.key: torch.zeros(batch, self.channels, *self.grid, device=device)}


class Layout(Channels):
    """A layout per sample: boxes (class, x0, y0, x1, y1, direction) in pixels, rendered as a mask per class, the
    "layout given" flag and (runs with directions) the line channel (see diffusely.layout). source: the training
    boxes packed (N, M, 6)."""

    name, key = "layout", "layout"

    def __init__(self, config, boxes: Optional[torch.Tensor] = None):
        super().__init__(config, config.model.layout_channels)
        self.config, self.boxes = config, boxes

    def render(self, values, given=None):
        return render_run_layout(values, self.config, self.grid, given)

    def train(self, rows, generators, flip):
        boxes = self.boxes[rows]
        if flip is not None:  # the boxes mirror with their image
            boxes = torch.where(append_dims(flip, boxes.ndim), flip_boxes(boxes, self.config.data.image_size), boxes)
        return {self.key: self.render(boxes, given=~self.dropped(generators))}

    def given(self, values, device):  # rendered on the CPU, as the run's samples always were
        return {self.key: self.render(pack_boxes(values), torch.ones(len(values), dtype=torch.bool)).to(device)}

    def examples(self, n, device):
        return {self.key: self.render(self.boxes[torch.arange(n, device=self.boxes.device) % len(self.boxes)])}


class FromSamples(Channels):
    """Channels made from the training samples themselves (`images`, uint8 (N, *spatial, C), bound by the training
    set): `measure(x0)` is what the model is given of each sample x0 (B, C, *spatial), rendered with `render`."""

    images: Optional[torch.Tensor] = None

    def measure(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _training_images(self, rows, flip=None) -> torch.Tensor:
        x0 = to_tensor(self.images[rows])
        return x0 if flip is None else apply_flips(x0, flip)

    def train(self, rows, generators, flip):
        return {self.key: self.render(self.measure(self._training_images(rows, flip)), ~self.dropped(generators))}

    def examples(self, n, device):
        rows = torch.arange(n, device=self.images.device) % len(self.images)
        return {self.key: self.render(self.measure(self._training_images(rows))).to(device)}


class LowRes(FromSamples):
    """Super-resolution (SR3, Saharia et al. 2021): the image average-pooled `data.scale` times smaller (the
    measurement y = A x of diffusely.restoration.Downsample), brought back to full size by A's pseudo-inverse,
    nearest-neighbour (each block filled with its mean), then a "given" channel of ones. Nearest rather than
    bilinear or bicubic: A^+ y adds nothing y does not hold, the network learns the interpolation itself, and it is
    the same image zero-shot restoration starts from, and the base a residual denoiser (diffusion.residual) adds its
    estimate of the detail to. A latent run (grid H / f) gets y on its grid, as LDM's SR concatenates the low-res
    image to the latents: each pixel repeated s / f times a side where the scale s >= f, else each f / s x f / s
    block of pixels stacked as channels (pixel_unshuffle); nothing of y is lost either way. Null: all zeros, the
    "given" channel 0 (a mid-grey low-res image stays distinct from none). source: the training images, uint8
    (N, *spatial, C) (bound by the training set); `given` takes low-res images (B, C, *spatial / scale) in [-1, 1]."""

    name, key = "lowres", "lowres"

    def __init__(self, config, images: Optional[torch.Tensor] = None):
        super().__init__(config, config.model.lowres_channels)
        self.operator, self.images = Downsample(config.data.scale), images

    @staticmethod
    def channels_for(config, image_channels: int) -> int:
        """The channels the network reads: y's on the run's grid (see the class), and the "given" channel."""
        factor, scale = config.latent.factor if config.latent else 1, config.data.scale
        return image_channels * max(1, factor // scale) ** 2 + 1

    def measure(self, x0):
        return self.operator(x0)

    def render(self, values, given=None):
        """(B, C, *spatial / scale) low-res images -> (B, channels, *grid): y on the grid, the "given" channel."""
        given = torch.ones(len(values), dtype=torch.bool, device=values.device) if given is None else given
        on = append_dims(given.to(values.device, values.dtype), values.ndim)
        side, grid = values.shape[-1], self.grid[-1]  # in pixels grid / side = s: A^+ y
        up = Downsample(grid // side).pinv(values) if grid >= side else pixel_unshuffle(values, side // grid)
        full = up * on
        return torch.cat([full, on.expand(-1, 1, *full.shape[2:])], dim=1)

    def given(self, values, device):
        values = torch.stack(list(values)) if not torch.is_tensor(values) else values
        return {self.key: self.render(values.to(device))}


class Frames(FromSamples):
    """Frame-conditioned prediction (Ho et al. 2022, sec. 3.1's conditional generation): the clip's first
    `data.given_frames` frames, the later ones zero, then a "given" channel (1 on the given frames). Null: all zeros.
    `given` takes the first frames (B, C, k, H, W) in [-1, 1] (k = data.given_frames)."""

    name, key = "frames", "first_frames"

    def __init__(self, config, images: Optional[torch.Tensor] = None):
        super().__init__(config, config.model.frames_channels)
        self.k, self.images = config.data.given_frames, images

    def measure(self, x0):
        return x0[:, :, :self.k]

    def render(self, values, given=None):
        """(B, C, k, H, W) first frames -> (B, C + 1, T, H, W): them, zero frames after, the "given" channel."""
        if values.shape[2] != self.k or values.shape[3:] != self.grid[1:]:
            raise ValueError(f"this model continues {self.k} given frames of {self.grid[1]}x{self.grid[2]}, got "
                             f"{values.shape[2]} of {values.shape[3]}x{values.shape[4]}")
        given = torch.ones(len(values), dtype=torch.bool, device=values.device) if given is None else given
        on = append_dims(given.to(values.device, values.dtype), values.ndim)
        frames = torch.zeros(len(values), values.shape[1] + 1, *self.grid, dtype=values.dtype, device=values.device)
        frames[:, :-1, :self.k] = values * on
        frames[:, -1:, :self.k] = on
        return frames

    def given(self, values, device):
        values = torch.stack(list(values)) if not torch.is_tensor(values) else values
        return {self.key: self.render(values.to(device))}


KINDS: dict[str, type[Condition]] = {"class": ClassLabel, "text": Text, "layout": Layout, "lowres": LowRes, "frames": Frames}


def conditions(config, sources: Optional[dict] = None) -> list[Condition]:
    """The conditions `config`'s model reads (config.conditions, in the order training draws them), each built on
    its source in `sources` (by name: training's data, or sampling's text encoder)."""
    sources = sources or {}
    return [KINDS[name](config, sources.get(name)) for name in config.conditions]

